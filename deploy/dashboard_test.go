package deploy

import (
	"fmt"
	"regexp"
	"strings"
	"testing"
)

// TestDashboard checks the dashboard as Grafana's dashboard linter
// would, and more: job and instance variables, so that 50 hosts can be
// looked at one by one; every query filtered by them; every panel with a
// unit and a description; no panel mixing units.
func TestDashboard(t *testing.T) {
	dash, err := ReadDashboard(".")
	if err != nil {
		t.Fatal(err)
	}
	vars := map[string]Variable{}
	for _, v := range dash.Templating.List {
		vars[v.Name] = v
	}
	if ds := vars["datasource"]; ds.Type != "datasource" {
		t.Errorf("no datasource variable of type datasource: %+v", ds)
	}
	// Each variable narrows by those before it: instance by job, server
	// and target by both.
	for name, follows := range map[string][]string{"job": nil, "instance": {"job"},
		"server": {"job", "instance"}, "target": {"job", "instance"}} {
		v, ok := vars[name]
		if !ok {
			t.Errorf("no %s variable", name)
			continue
		}
		if v.Type != "query" || (v.Datasource.UID != "${datasource}" && v.Datasource.UID != "$datasource") {
			t.Errorf("variable %s: a %s on %q, want a query on the datasource variable", name, v.Type, v.Datasource.UID)
		}
		if !v.Multi || !v.IncludeAll || v.AllValue != ".+" {
			t.Errorf("variable %s: multi %v, includeAll %v, allValue %q; want several values, All, and .+ for All",
				name, v.Multi, v.IncludeAll, v.AllValue)
		}
		if !strings.HasPrefix(v.Definition, "label_values(") || !strings.HasSuffix(v.Definition, ", "+name+")") {
			t.Errorf("variable %s: %q, want label_values(…, %s)", name, v.Definition, name)
		}
		for _, f := range follows {
			if !hasMatcher(v.Definition, f) {
				t.Errorf("variable %s: %q does not follow $%s", name, v.Definition, f)
			}
		}
	}

	ids := map[int]bool{}
	for _, p := range dash.AllPanels() {
		where := fmt.Sprintf("panel %d %q", p.ID, p.Title)
		if ids[p.ID] {
			t.Errorf("%s: the id is not unique", where)
		}
		ids[p.ID] = true
		if p.Type == "row" || p.Type == "text" {
			continue
		}
		unit := p.FieldConfig.Defaults.Unit
		if unit == "" {
			t.Errorf("%s: no unit (fieldConfig.defaults.unit)", where)
		}
		if strings.TrimSpace(p.Title) == "" || strings.TrimSpace(p.Description) == "" {
			t.Errorf("%s: no title or no description", where)
		}
		if len(p.Targets) == 0 {
			t.Errorf("%s: no query", where)
		}
		for _, o := range p.FieldConfig.Overrides {
			for _, prop := range o.Properties {
				if prop.ID == "unit" && prop.Value != unit {
					t.Errorf("%s: an override sets unit %v on some series, the panel's is %q: split the panel", where, prop.Value, unit)
				}
			}
		}
		seconds := 0
		for _, tg := range p.Targets {
			for _, problem := range selectorProblems(tg.Expr) {
				t.Errorf("%s, query %s: %s", where, tg.RefID, problem)
			}
			if secondsValued(tg.Expr) {
				seconds++
			}
		}
		if (unit == "s") != (seconds == len(p.Targets)) || (unit != "s" && seconds > 0) {
			t.Errorf("%s: unit %q, and %d of %d queries are in seconds: one unit per panel", where, unit, seconds, len(p.Targets))
		}
	}
}

var (
	braceVar   = regexp.MustCompile(`\$\{(\w+)\}`)
	braced     = regexp.MustCompile(`([a-zA-Z_:][a-zA-Z0-9_:]*)?\s*\{([^{}]*)\}`)
	stringLit  = regexp.MustCompile(`"(?:[^"\\]|\\.)*"`)
	ranges     = regexp.MustCompile(`\[[^\]]*\]`)
	labelLists = regexp.MustCompile(`\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)`)
	identifier = regexp.MustCompile(`\b[a-zA-Z_:][a-zA-Z0-9_:]*\b\s*(\()?`)
	keywords   = map[string]bool{"and": true, "or": true, "unless": true, "by": true, "without": true, "on": true,
		"ignoring": true, "group_left": true, "group_right": true, "offset": true, "bool": true, "inf": true, "nan": true}
	secondsFamily = regexp.MustCompile(`\bicapwatch_[a-z0-9_]*_seconds\b`)
)

// hasMatcher says whether a selector's matchers (or a query) hold
// label=~"$label", written ${label} too.
func hasMatcher(text, label string) bool {
	text = braceVar.ReplaceAllString(strings.Join(strings.Fields(text), ""), "$$$1")
	return regexp.MustCompile(`(^|[{,])` + label + `=~"\$` + label + `"`).MatchString(text)
}

// selectorProblems lists the vector selectors of a query that do not
// filter by $job and $instance, the bare ones (no braces) among them.
func selectorProblems(expr string) []string {
	var out []string
	expr = braceVar.ReplaceAllString(expr, "$$$1")
	for _, m := range braced.FindAllStringSubmatch(expr, -1) {
		for _, label := range []string{"job", "instance"} {
			if !hasMatcher("{"+m[2]+"}", label) {
				out = append(out, fmt.Sprintf("%s has no %s=~\"$%s\" matcher", strings.TrimSpace(m[0]), label, label))
			}
		}
	}
	rest := braced.ReplaceAllString(stringLit.ReplaceAllString(expr, `""`), "{}")
	rest = labelLists.ReplaceAllString(ranges.ReplaceAllString(rest, ""), "")
	for _, m := range identifier.FindAllStringSubmatch(rest, -1) {
		name := strings.TrimSpace(strings.TrimSuffix(m[0], "("))
		if m[1] == "" && !keywords[strings.ToLower(name)] && !strings.HasSuffix(strings.TrimSpace(m[0]), "{}") {
			out = append(out, fmt.Sprintf("%s has no matchers at all", name))
		}
	}
	return out
}

// secondsValued says whether a query's values are seconds: a quantile of
// a _seconds histogram, or a _seconds gauge.
func secondsValued(expr string) bool {
	if strings.Contains(expr, "histogram_quantile(") && strings.Contains(expr, "_seconds_bucket") {
		return true
	}
	return secondsFamily.MatchString(expr)
}

// The checks must fail where they should: a broken checker would let
// any dashboard pass.
func TestDashboardChecks(t *testing.T) {
	const ok = `job=~"$job", instance=~"$instance"`
	for expr, want := range map[string]int{
		`sum by (le) (rate(icapwatch_x_bucket{` + ok + `, server=~"$server"}[$__rate_interval]))`: 0,
		`count(icapwatch_source{` + ok + `, source="sockdiag"} == 1) or vector(0)`:                0,
		`max(icapwatch_y{job=~"${job}",instance=~"${instance}"} offset 5m)`:                       0,
		`sum(icapwatch_x)`:                                 1,
		`sum(icapwatch_x{job=~"$job"})`:                    1,
		`icapwatch_x{server=~"$server"}`:                   2,
		`up == 0 or icapwatch_x{` + ok + `}`:               1,
		`icapwatch_x{` + ok + `} / on (instance) up{}`:     2,
		`sum without (job) (icapwatch_x{instance="h1"})`:   2,
		`rate(icapwatch_x{` + ok + `}[5m]) > bool 0 and x`: 1,
	} {
		if got := selectorProblems(expr); len(got) != want {
			t.Errorf("%s: %d problems %q, want %d", expr, len(got), got, want)
		}
	}
	for expr, want := range map[string]bool{
		`histogram_quantile(0.5, sum by (le) (rate(icapwatch_a_seconds_bucket[5m])))`: true,
		`max(icapwatch_oldest_open_exchange_seconds)`:                                 true,
		`sum(increase(icapwatch_a_seconds_bucket[5m]))`:                               false,
		`min(icapwatch_probe_success)`:                                                false,
	} {
		if got := secondsValued(expr); got != want {
			t.Errorf("secondsValued(%s) = %v, want %v", expr, got, want)
		}
	}
}
