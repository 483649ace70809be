// Package deploy holds what operators deploy (manifests, unit, rules,
// dashboard) and what the tests need to check it: the PromQL expressions
// of the dashboard and the alert rules, and the metric names they use.
package deploy

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	"gopkg.in/yaml.v3"
)

// Expr is one PromQL expression and where it is.
type Expr struct {
	Where  string // "rule ICAPRequestStalled", "panel Gap heatmap"
	PromQL string
}

// Expressions reads the rules and the dashboard under dir (the deploy
// directory). Grafana's variables are replaced by values Prometheus
// accepts, so that each expression parses as it would run.
func Expressions(dir string) ([]Expr, error) {
	var out []Expr
	b, err := os.ReadFile(filepath.Join(dir, "prometheus", "icapwatch-rules.yml"))
	if err != nil {
		return nil, err
	}
	var rules struct {
		Groups []struct {
			Rules []struct {
				Alert, Record, Expr string
			}
		}
	}
	if err := yaml.Unmarshal(b, &rules); err != nil {
		return nil, fmt.Errorf("rules: %w", err)
	}
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			out = append(out, Expr{"rule " + r.Alert + r.Record, r.Expr})
		}
	}
	b, err = os.ReadFile(filepath.Join(dir, "grafana", "icapwatch.json"))
	if err != nil {
		return nil, err
	}
	var dash struct {
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		return nil, fmt.Errorf("dashboard: %w", err)
	}
	vars := strings.NewReplacer("$__rate_interval", "5m", "$__interval", "1m", "$server", ".*")
	for _, p := range dash.Panels {
		for _, t := range p.Targets {
			out = append(out, Expr{"panel " + p.Title, vars.Replace(t.Expr)})
		}
	}
	return out, nil
}

var metricName = regexp.MustCompile(`\bicapwatch_[a-z0-9_]+\b`)

// MetricNames lists the icapwatch metric families the expressions use:
// a histogram's _bucket, _sum and _count series count as the family.
func MetricNames(exprs []Expr) []string {
	seen := map[string]bool{}
	for _, e := range exprs {
		for _, n := range metricName.FindAllString(e.PromQL, -1) {
			for _, suffix := range []string{"_bucket", "_sum", "_count"} {
				if base, ok := strings.CutSuffix(n, suffix); ok && strings.HasSuffix(base, "_seconds") {
					n = base
				}
			}
			seen[n] = true
		}
	}
	names := make([]string, 0, len(seen))
	for n := range seen {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}
