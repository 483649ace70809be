package deploy

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/icapwatch/icapwatch/internal/testutil"
)

func promtool(t *testing.T, args ...string) string {
	t.Helper()
	path, err := exec.LookPath("promtool")
	if err != nil {
		testutil.SkipOrFail(t, "promtool not found (make deps installs Debian's prometheus package): %v", err)
	}
	out, err := exec.Command(path, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func TestAlertRules(t *testing.T) {
	promtool(t, "check", "rules", "prometheus/icapwatch-rules.yml")
	// Each rule fires on its input series, and stays quiet on the others.
	out := promtool(t, "test", "rules", "prometheus/icapwatch-rules.test.yml")
	if !strings.Contains(out, "SUCCESS") {
		t.Errorf("promtool test rules:\n%s", out)
	}
	tests, err := os.ReadFile("prometheus/icapwatch-rules.test.yml")
	if err != nil {
		t.Fatal(err)
	}
	rules, err := Rules(".")
	if err != nil {
		t.Fatal(err)
	}
	alerts := map[string]bool{}
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			alerts[r.Alert] = r.Alert != ""
			if r.Alert != "" && !strings.Contains(string(tests), "alertname: "+r.Alert) {
				t.Errorf("no unit test for %s", r.Alert)
			}
		}
	}
	// Alert names are a contract: silences, routes and runbooks use them.
	for _, alert := range contractAlerts {
		if !alerts[alert] {
			t.Errorf("alert %s is gone from the rules", alert)
		}
	}
}

var contractAlerts = []string{"ICAPRequestStalled", "ICAPIdleCloseRaces", "ICAPServerWorkersHeldByIdleConnections",
	"ICAPCanaryFailing", "ICAPPoolAboveServerLimit", "ICAPWatchDown", "ICAPWatchDegradedSource", "ICAPWatchEventsLost"}

// TestExpressionsParse: every expression of the dashboard and the rules
// parses, by Prometheus' own parser (promtool, as recording rules).
func TestExpressionsParse(t *testing.T) {
	exprs, err := Expressions(".")
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	b.WriteString("groups:\n  - name: parse\n    rules:\n")
	for i, e := range exprs {
		fmt.Fprintf(&b, "      - record: check:expr_%d\n        expr: %q\n", i, e.PromQL)
	}
	file := filepath.Join(t.TempDir(), "exprs.yml")
	if err := os.WriteFile(file, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	out := promtool(t, "check", "rules", file)
	if !strings.Contains(out, fmt.Sprintf("SUCCESS: %d rules found", len(exprs))) {
		t.Errorf("promtool check rules:\n%s", out)
	}
	if len(MetricNames(exprs)) < 15 {
		t.Errorf("only %d metric names used: %v", len(MetricNames(exprs)), MetricNames(exprs))
	}
}
