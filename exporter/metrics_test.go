package exporter

import (
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
		"icapwatch_build_info", "icapwatch_flows_tracked", "icapwatch_flow_evictions_total")
	if err != nil || n != 5 {
		t.Errorf("contract metrics: %d of 5 (%v)", n, err)
	}
}
