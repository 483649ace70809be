package agent

import (
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/icapwatch/icapwatch/agent/correlate"
	"github.com/icapwatch/icapwatch/agent/observe"
	"github.com/icapwatch/icapwatch/exporter"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

var (
	t0    = time.Date(2026, 11, 23, 7, 20, 46, 426e6, time.UTC)
	srvA  = netip.MustParseAddrPort("192.0.2.1:11344")
	flowA = observe.Flow{Client: netip.MustParseAddrPort("192.0.2.10:40001"), Server: srvA}
)

// at is t0 plus a duration given in seconds.
func at(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }

// harness runs a correlator with the agent's own metrics: its meter, its
// event counters and its state collector, read back from a registry.
type harness struct {
	t      *testing.T
	c      *correlate.Correlator
	meter  *meter
	reg    *prometheus.Registry
	events []correlate.Event
	now    time.Time
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	return newHarnessClients(t, DefaultDaemonConfig().MaxClients, clientLinger)
}

// newHarnessClients is newHarness with maxClients client labels, each
// kept for linger after its last connection.
func newHarnessClients(t *testing.T, maxClients int, linger time.Duration) *harness {
	t.Helper()
	h := &harness{t: t, reg: prometheus.NewRegistry()}
	m := exporter.NewMetrics(h.reg)
	h.meter = newMeter(m, maxClients, linger, func() time.Time { return h.now })
	c, err := correlate.New(correlate.DefaultConfig(), h.meter, func(e correlate.Event) {
		h.meter.count(e)
		h.events = append(h.events, e)
	})
	if err != nil {
		t.Fatal(err)
	}
	h.c = c
	h.reg.MustRegister(&stateCollector{descs: exporter.NewStateDescs(), mu: new(sync.Mutex), corr: c,
		clients: h.meter.clients, now: func() time.Time { return h.now }})
	return h
}

// observe takes o, as a source would give it.
func (h *harness) observe(o observe.Observation) {
	h.now = o.Time
	h.c.Observe(o)
}

func (h *harness) obs(kind observe.Kind, f observe.Flow, s float64) *harness {
	o := observe.Observation{Kind: kind, Source: observe.SourceKernel, Time: at(s), Flow: f, Phase: observe.PhaseRequest}
	if kind == observe.Answer || kind == observe.Acked {
		o.Dir = observe.ToClient
	}
	h.observe(o)
	return h
}

func (h *harness) sweep(s float64) *harness {
	h.now = at(s)
	h.c.Sweep(h.now)
	return h
}

// wantKinds compares the events' kinds and states: "stall:unacked ...".
func (h *harness) wantKinds(want string) {
	h.t.Helper()
	var parts []string
	for _, e := range h.events {
		k := string(e.Kind())
		for _, f := range []string{"state", "outcome"} {
			if v, ok := e.Field(f).(string); ok {
				k += ":" + v
			}
		}
		parts = append(parts, k)
	}
	if got := strings.Join(parts, " "); got != want {
		h.t.Errorf("events:\n got  %s\n want %s", got, want)
	}
}

func (h *harness) field(kind correlate.Kind, name string) any {
	h.t.Helper()
	for _, e := range h.events {
		if e.Kind() == kind {
			return e.Field(name)
		}
	}
	h.t.Fatalf("no %s event", kind)
	return nil
}

// series gathers the registry, as a scrape would, and keeps the series
// of a metric that have these labels (and maybe others).
func (h *harness) series(name string, labels map[string]string) []*dto.Metric {
	h.t.Helper()
	mfs, err := h.reg.Gather()
	if err != nil {
		h.t.Fatal(err)
	}
	var out []*dto.Metric
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if matches(m, labels) {
				out = append(out, m)
			}
		}
	}
	return out
}

// wantMetric sums the matching series; none reads 0.
func (h *harness) wantMetric(name string, want float64, labels map[string]string) {
	h.t.Helper()
	got := 0.0
	for _, m := range h.series(name, labels) {
		got += m.GetGauge().GetValue() + m.GetCounter().GetValue()
	}
	if got != want {
		h.t.Errorf("%s%v = %v, want %v", name, labels, got, want)
	}
}

// wantSeries counts the matching series.
func (h *harness) wantSeries(name string, want int, labels map[string]string) {
	h.t.Helper()
	if n := len(h.series(name, labels)); n != want {
		h.t.Errorf("%s%v: %d series, want %d", name, labels, n, want)
	}
}

// matches: the series has these label values (and maybe others).
func matches(m *dto.Metric, labels map[string]string) bool {
	have := map[string]string{}
	for _, l := range m.GetLabel() {
		have[l.GetName()] = l.GetValue()
	}
	for k, v := range labels {
		if have[k] != v {
			return false
		}
	}
	return true
}
