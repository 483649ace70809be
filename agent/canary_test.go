package agent

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/icapwatch/icapwatch/agent/observe"
	"github.com/icapwatch/icapwatch/exporter"
	"github.com/icapwatch/icapwatch/icap"
)

// The canary's client, against the lab server, reports its connection,
// its own gap and the server's idle close.
func TestCanaryObserver(t *testing.T) {
	cfg := icap.LabDefaults()
	cfg.Listen, cfg.PlainListen = "127.0.0.1:0", ""
	cfg.IdleTimeout = 300 * time.Millisecond
	lab, err := icap.StartLab(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer lab.Shutdown(context.Background())

	var mu sync.Mutex
	var got []observe.Observation
	client, err := icap.NewClient(icap.Config{Target: "icaps://" + lab.TLSAddr().String() + "/" + cfg.Service,
		Insecure: true, Observer: CanaryObserver(func(o observe.Observation) {
			mu.Lock()
			got = append(got, o)
			mu.Unlock()
		})})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, opts, tr, err := client.Options(ctx)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		mu.Lock()
		n := len(got)
		mu.Unlock()
		if n >= 3 || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	kinds := map[observe.Kind]observe.Observation{}
	for _, o := range got {
		kinds[o.Kind] = o
		if o.Flow.Client != tr.Conn.Local || o.Source != observe.SourceCanary {
			t.Errorf("%s: flow %+v, want client %s", o.Kind, o.Flow, tr.Conn.Local)
		}
	}
	if _, ok := kinds[observe.CanaryConn]; !ok {
		t.Error("no canary_conn")
	}
	if a, ok := kinds[observe.CanaryAnswer]; !ok || a.Gap != tr.FirstByteAt.Sub(tr.WriteStart) {
		t.Errorf("canary_answer %+v, trace gap %v", a, tr.FirstByteAt.Sub(tr.WriteStart))
	}
	if i, ok := kinds[observe.ServerIdle]; !ok || i.IdleTimeout < 250*time.Millisecond || i.IdleTimeout > 2*time.Second {
		t.Errorf("server_idle %+v, want about 300ms", i)
	}
	if o := CanaryOptions(tr.Conn.Remote, opts, time.Now()); o.MaxConnections != cfg.Workers {
		t.Errorf("options: Max-Connections %d, want %d", o.MaxConnections, cfg.Workers)
	}
}

// The canary's probe metrics: success, the phases that happened by fresh
// or reused connection, and failures by the phase that failed or "error"
// (a non-200 answer: the server is serving). Dashboards depend on these
// label values.
func TestCanaryProbeMetrics(t *testing.T) {
	cfg := icap.LabDefaults()
	cfg.Listen, cfg.PlainListen = "", "127.0.0.1:0"
	lab, err := icap.StartLab(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer lab.Shutdown(context.Background())

	reg := prometheus.NewRegistry()
	d := &Daemon{m: exporter.NewMetrics(reg)}
	var sent []observe.Observation
	send := func(o observe.Observation) { sent = append(sent, o) }
	probe := func(client *icap.Client) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		d.recordProbe(client.Target().URL, client.Probe(ctx), hclog.NewNullLogger(), send)
	}
	newClient := func(target string) *icap.Client {
		t.Helper()
		c, err := icap.NewClient(icap.Config{Target: target})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	series := func(name string, labels map[string]string) (value float64, samples uint64, found bool) {
		t.Helper()
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if mf.GetName() != name {
				continue
			}
			for _, m := range mf.GetMetric() {
				if matches(m, labels) {
					return m.GetGauge().GetValue() + m.GetCounter().GetValue(), m.GetHistogram().GetSampleCount(), true
				}
			}
		}
		return 0, 0, false
	}

	good := "icap://" + lab.PlainAddr().String() + "/" + cfg.Service
	c := newClient(good)
	probe(c)
	probe(c)
	if v, _, _ := series("icapwatch_probe_success", map[string]string{"target": good}); v != 1 {
		t.Errorf("probe_success = %v, want 1", v)
	}
	for _, tc := range []struct {
		conn, phase string
		want        uint64 // 0: no series
	}{
		{"fresh", "connect", 1}, {"fresh", "tls", 0}, {"fresh", "write", 1}, {"fresh", "first_byte", 1}, {"fresh", "total", 1},
		{"reused", "connect", 0}, {"reused", "tls", 0}, {"reused", "write", 1}, {"reused", "first_byte", 1}, {"reused", "total", 1},
	} {
		_, n, found := series("icapwatch_probe_phase_seconds", map[string]string{"target": good, "conn": tc.conn, "phase": tc.phase})
		if n != tc.want || found != (tc.want > 0) {
			t.Errorf("probe_phase_seconds{conn=%s,phase=%s}: %d samples (series present %v), want %d", tc.conn, tc.phase, n, found, tc.want)
		}
	}
	if len(sent) != 2 || sent[0].Kind != observe.ServerOptions || sent[0].MaxConnections != cfg.Workers ||
		sent[0].Flow.Server.String() != lab.PlainAddr().String() {
		t.Errorf("observations %+v, want the server's OPTIONS twice", sent)
	}

	sent = nil
	for _, tc := range []struct{ target, reason string }{
		{"icap://" + lab.PlainAddr().String() + "/nope", "error"},
		{"icap://127.0.0.1:1/x", "connect"},
	} {
		probe(newClient(tc.target))
		if v, _, _ := series("icapwatch_probe_success", map[string]string{"target": tc.target}); v != 0 {
			t.Errorf("%s: probe_success = %v, want 0", tc.target, v)
		}
		if v, _, _ := series("icapwatch_probe_failures_total", map[string]string{"target": tc.target, "reason": tc.reason}); v != 1 {
			t.Errorf("%s: probe_failures_total{reason=%q} = %v, want 1", tc.target, tc.reason, v)
		}
		if _, n, found := series("icapwatch_probe_phase_seconds", map[string]string{"target": tc.target}); found {
			t.Errorf("%s: a failed probe observed %d phase samples", tc.target, n)
		}
	}
	if len(sent) != 0 {
		t.Errorf("failed probes sent %+v", sent)
	}
}
