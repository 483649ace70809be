package deploy

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

var update = flag.Bool("update", false, "rewrite the generated PrometheusRule (go generate ./deploy)")

// The PrometheusRule component holds the rule file's groups: generated
// from it, never edited by hand.
const prometheusRuleFile = "kubernetes/components/prometheusrule/prometheusrule.yaml"

const prometheusRuleHead = `# Generated from deploy/prometheus/icapwatch-rules.yml by go generate ./deploy:
# edit that file, not this one (go test ./deploy fails while they differ).
# Prometheus Operator loads these rules when your Prometheus selects this
# object (ruleSelector, ruleNamespaceSelector): add the labels it selects
# on, often release: <your Prometheus release>. The rules expect the
# agents as job="icapwatch", as components/servicemonitor scrapes them.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: icapwatch
  namespace: icapwatch
  labels:
    app.kubernetes.io/name: icapwatch
spec:
`

// generatePrometheusRule wraps the rule file's groups, from its groups:
// line on, with their comments, into a PrometheusRule's spec.
func generatePrometheusRule(rules []byte) ([]byte, error) {
	i := bytes.Index(rules, []byte("\ngroups:\n"))
	if i < 0 {
		return nil, fmt.Errorf("%s: no top-level groups: line", RulesFile)
	}
	var b bytes.Buffer
	b.WriteString(prometheusRuleHead)
	for _, line := range strings.SplitAfter(string(rules[i+1:]), "\n") {
		if strings.TrimSpace(line) != "" {
			b.WriteString("  ")
		}
		b.WriteString(line)
	}
	return b.Bytes(), nil
}

// TestPrometheusRuleComponent: the component's PrometheusRule is what
// the generator makes of the rule file today (-update, or go generate
// ./deploy, rewrites it), and its groups decode to the rule file's.
func TestPrometheusRuleComponent(t *testing.T) {
	rules, err := os.ReadFile(RulesFile)
	if err != nil {
		t.Fatal(err)
	}
	want, err := generatePrometheusRule(rules)
	if err != nil {
		t.Fatal(err)
	}
	if *update {
		if err := os.WriteFile(prometheusRuleFile, want, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile(prometheusRuleFile)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from %s: run go generate ./deploy", prometheusRuleFile, RulesFile)
	}
	var pr prometheusRule
	if err := yaml.UnmarshalStrict(got, &pr); err != nil {
		t.Fatalf("%s: %v", prometheusRuleFile, err)
	}
	checkPrometheusRule(t, pr, corev1.Namespace{})

	// The check sees a difference: one rule less is not the rule file.
	pr.Spec.Groups[0].Rules = pr.Spec.Groups[0].Rules[1:]
	if equalRuleGroups(t, pr.Spec.Groups) {
		t.Error("a PrometheusRule without the first rule compares equal to the rule file")
	}
}

// checkPrometheusRule: a monitoring.coreos.com/v1 PrometheusRule in the
// agents' namespace (when ns has a name) with the rule file's groups.
func checkPrometheusRule(t *testing.T, pr prometheusRule, ns corev1.Namespace) {
	t.Helper()
	if pr.APIVersion != "monitoring.coreos.com/v1" || pr.Kind != "PrometheusRule" {
		t.Errorf("PrometheusRule: %s %s, want monitoring.coreos.com/v1 PrometheusRule", pr.APIVersion, pr.Kind)
	}
	if ns.Name != "" && pr.Metadata.Namespace != ns.Name {
		t.Errorf("PrometheusRule in %q, want %q", pr.Metadata.Namespace, ns.Name)
	}
	if !equalRuleGroups(t, pr.Spec.Groups) {
		t.Errorf("PrometheusRule: its groups are not those of %s: run go generate ./deploy", RulesFile)
	}
}

// equalRuleGroups compares groups with the rule file's, field by field.
func equalRuleGroups(t *testing.T, groups []RuleGroup) bool {
	t.Helper()
	dir, err := filepath.Abs(".")
	if err != nil {
		t.Fatal(err)
	}
	want, err := Rules(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(want.Groups) == 0 {
		t.Fatalf("%s: no groups", RulesFile)
	}
	return reflect.DeepEqual(groups, want.Groups)
}

// prometheusRule is Prometheus Operator's PrometheusRule
// (monitoring.coreos.com/v1) as far as the component uses it, for a
// strict decoding; the groups are a rule file's.
type prometheusRule struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name      string            `json:"name"`
		Namespace string            `json:"namespace"`
		Labels    map[string]string `json:"labels"`
	} `json:"metadata"`
	Spec struct {
		Groups []RuleGroup `json:"groups"`
	} `json:"spec"`
}
