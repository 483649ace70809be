package exporter

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// The metrics follow Prometheus' naming rules (promlint, as promtool
// check metrics applies them) and all carry the contract's names.
func TestMetricsLint(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg)
	// Vectors appear in the output once they have a child.
	m.ExchangeDuration.WithLabelValues("192.0.2.1:11344", "scanapp", "request").Observe(0.1)
	m.Stalls.WithLabelValues("192.0.2.1:11344", "scanapp", "acked_silent").Inc()
	m.ReuseIdleAge.WithLabelValues("192.0.2.1:11344", "scanapp").Observe(299)
	m.Source.WithLabelValues("bpf").Set(1)
	problems, err := testutil.GatherAndLint(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("%s: %s", p.Metric, p.Text)
	}
	n, err := testutil.GatherAndCount(reg, "icapwatch_exchange_duration_seconds", "icapwatch_stalls_total",
		"icapwatch_build_info", "icapwatch_flow_evictions_total", "icapwatch_kernel_flow_evictions_total")
	if err != nil || n != 5 {
		t.Errorf("contract metrics and the kernel's evictions: %d of 5 (%v)", n, err)
	}
}

// collecting is a Registerer that keeps what is registered.
type collecting struct{ cs []prometheus.Collector }

func (c *collecting) Register(x prometheus.Collector) error   { c.cs = append(c.cs, x); return nil }
func (c *collecting) MustRegister(xs ...prometheus.Collector) { c.cs = append(c.cs, xs...) }
func (c *collecting) Unregister(prometheus.Collector) bool    { return false }

// The README's metrics table lists every metric the agent defines.
func TestREADMEListsEveryMetric(t *testing.T) {
	readme, err := os.ReadFile(filepath.Join("..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	var reg collecting
	NewMetrics(&reg)
	fqName := regexp.MustCompile(`fqName: "([a-z_]+)"`)
	n := 0
	check := func(d *prometheus.Desc) {
		m := fqName.FindStringSubmatch(d.String())
		if m == nil {
			t.Fatalf("no name in %s", d)
		}
		n++
		if !strings.Contains(string(readme), "| `"+m[1]+"` |") {
			t.Errorf("README.md's metrics table lacks %s", m[1])
		}
	}
	for _, c := range reg.cs {
		descs := make(chan *prometheus.Desc, 8)
		go func() { c.Describe(descs); close(descs) }()
		for d := range descs {
			check(d)
		}
	}
	for _, d := range NewStateDescs().All() { // computed at scrape
		check(d)
	}
	if n < 25 {
		t.Errorf("only %d metrics described", n)
	}
}
