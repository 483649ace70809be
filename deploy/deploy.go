// Package deploy holds what operators deploy (manifests, unit, rules,
// dashboard) and what the tests need to check it: the PromQL expressions
// of the dashboard and the alert rules, and the metric names they use.
package deploy

//go:generate go test -run ^TestPrometheusRuleComponent$ -update .

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

// RulesFile is the alert rule file under the deploy directory.
const RulesFile = "prometheus/icapwatch-rules.yml"

// DashboardFile is the Grafana dashboard under the deploy directory.
const DashboardFile = "grafana/icapwatch.json"

// Expr is one PromQL expression and where it is.
type Expr struct {
	Where  string // "rule ICAPRequestStalled", "panel Gap heatmap"
	PromQL string
}

// RuleGroups is a Prometheus rule file, as far as the tests read it.
type RuleGroups struct {
	Groups []RuleGroup `yaml:"groups" json:"groups"`
}

// RuleGroup is one group of a rule file.
type RuleGroup struct {
	Name     string `yaml:"name" json:"name"`
	Interval string `yaml:"interval,omitempty" json:"interval,omitempty"`
	Rules    []Rule `yaml:"rules" json:"rules"`
}

// Rule is an alerting or a recording rule.
type Rule struct {
	Alert       string            `yaml:"alert,omitempty" json:"alert,omitempty"`
	Record      string            `yaml:"record,omitempty" json:"record,omitempty"`
	Expr        string            `yaml:"expr" json:"expr"`
	For         string            `yaml:"for,omitempty" json:"for,omitempty"`
	Labels      map[string]string `yaml:"labels,omitempty" json:"labels,omitempty"`
	Annotations map[string]string `yaml:"annotations,omitempty" json:"annotations,omitempty"`
}

// Rules reads the alert rules under dir (the deploy directory). Fields a
// rule file does not have fail.
func Rules(dir string) (RuleGroups, error) {
	var rules RuleGroups
	f, err := os.Open(filepath.Join(dir, RulesFile))
	if err != nil {
		return rules, err
	}
	defer f.Close()
	dec := yaml.NewDecoder(f)
	dec.KnownFields(true)
	if err := dec.Decode(&rules); err != nil {
		return rules, fmt.Errorf("%s: %w", RulesFile, err)
	}
	return rules, nil
}

// Panel is a dashboard panel, as far as the tests read it. A collapsed
// row holds its panels.
type Panel struct {
	ID          int    `json:"id"`
	Type        string `json:"type"`
	Title       string `json:"title"`
	Description string `json:"description"`
	Targets     []struct {
		RefID string `json:"refId"`
		Expr  string `json:"expr"`
	} `json:"targets"`
	FieldConfig struct {
		Defaults struct {
			Unit string `json:"unit"`
		} `json:"defaults"`
		Overrides []struct {
			Matcher    json.RawMessage `json:"matcher"`
			Properties []struct {
				ID    string `json:"id"`
				Value any    `json:"value"`
			} `json:"properties"`
		} `json:"overrides"`
	} `json:"fieldConfig"`
	Panels []Panel `json:"panels"`
}

// Variable is a dashboard template variable.
type Variable struct {
	Name       string `json:"name"`
	Type       string `json:"type"`
	Label      string `json:"label"`
	Multi      bool   `json:"multi"`
	IncludeAll bool   `json:"includeAll"`
	AllValue   string `json:"allValue"`
	Definition string `json:"definition"`
	Datasource struct {
		Type string `json:"type"`
		UID  string `json:"uid"`
	} `json:"datasource"`
}

// Dashboard is the Grafana dashboard, as far as the tests read it.
type Dashboard struct {
	Title      string `json:"title"`
	Templating struct {
		List []Variable `json:"list"`
	} `json:"templating"`
	Panels []Panel `json:"panels"`
}

// ReadDashboard reads the dashboard under dir (the deploy directory).
func ReadDashboard(dir string) (Dashboard, error) {
	var dash Dashboard
	b, err := os.ReadFile(filepath.Join(dir, DashboardFile))
	if err != nil {
		return dash, err
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		return dash, fmt.Errorf("%s: %w", DashboardFile, err)
	}
	return dash, nil
}

// AllPanels lists the dashboard's panels, those inside collapsed rows
// too, in order.
func (d Dashboard) AllPanels() []Panel {
	var out []Panel
	var walk func([]Panel)
	walk = func(ps []Panel) {
		for _, p := range ps {
			out = append(out, p)
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	return out
}

// grafanaVars replaces Grafana's variables by values Prometheus accepts.
var grafanaVars = strings.NewReplacer("$__rate_interval", "5m", "$__interval", "1m",
	"$job", ".+", "$instance", ".+", "$server", ".+", "$target", ".+")

// Expressions reads the rules and the dashboard under dir (the deploy
// directory). Grafana's variables are replaced by values Prometheus
// accepts, so that each expression parses as it would run.
func Expressions(dir string) ([]Expr, error) {
	var out []Expr
	rules, err := Rules(dir)
	if err != nil {
		return nil, err
	}
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			out = append(out, Expr{"rule " + r.Alert + r.Record, r.Expr})
		}
	}
	dash, err := ReadDashboard(dir)
	if err != nil {
		return nil, err
	}
	for _, p := range dash.AllPanels() {
		for _, t := range p.Targets {
			out = append(out, Expr{"panel " + p.Title, grafanaVars.Replace(t.Expr)})
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
