package agent

import (
	"sync"
	"time"

	"github.com/icapwatch/icapwatch/agent/correlate"
	"github.com/icapwatch/icapwatch/agent/observe"
	"github.com/icapwatch/icapwatch/exporter"
	"github.com/prometheus/client_golang/prometheus"
)

// meter puts the correlator's measurements into the Prometheus metrics.
// It keeps the children it hands out, so that the correlator's hot path
// makes no label lookup, and one flow meter per label pair, shared by the
// flows that have them. The correlator's goroutine is its only user.
type meter struct {
	m       *exporter.Metrics
	events  [8]prometheus.Counter // by observe.Source
	flows   map[[2]string]*flowMeter
	clients *clientLabels
	now     func() time.Time
}

// clientLinger is how long a process name keeps its client label after
// its last connection has closed.
const clientLinger = 10 * time.Minute

func newMeter(m *exporter.Metrics, maxClients int, linger time.Duration, now func() time.Time) *meter {
	mt := &meter{m: m, flows: map[[2]string]*flowMeter{}, now: now,
		clients: newClientLabels(maxClients, linger, m.ClientOverflows)}
	for src := range mt.events {
		mt.events[src] = m.Events.WithLabelValues(observe.Source(src).String())
	}
	return mt
}

// flowMeter holds the histogram children of one label pair, made when
// first used.
type flowMeter struct {
	m              *exporter.Metrics
	server, client string
	gaps           [3]prometheus.Observer // by phase
	idle           prometheus.Observer
}

// Flow is the meter of a connection that has just taken the label pair:
// the client's label is bounded (clientLabels).
func (mt *meter) Flow(server, client string) correlate.FlowMeter {
	client = mt.clients.assign(client, mt.now())
	k := [2]string{server, client}
	f := mt.flows[k]
	if f == nil {
		f = &flowMeter{m: mt.m, server: server, client: client}
		mt.flows[k] = f
	}
	return f
}

func (mt *meter) Observed(src observe.Source) {
	if int(src) < len(mt.events) {
		mt.events[src].Inc()
	}
}

func (mt *meter) Retransmits(server string, n uint32) {
	mt.m.Retransmits.WithLabelValues(server).Add(float64(n))
}

func (mt *meter) Skew(server string, d time.Duration) {
	mt.m.MeasurementSkew.WithLabelValues(server).Observe(d.Seconds())
}

func (mt *meter) FlowEvicted() { mt.m.FlowEvictions.Inc() }

func (mt *meter) FlowEvictedOpen() { mt.m.FlowEvictionsOpenExchange.Inc() }

func (f *flowMeter) Gap(p observe.Phase, d time.Duration) {
	if int(p) >= len(f.gaps) {
		return
	}
	if f.gaps[p] == nil {
		f.gaps[p] = f.m.ExchangeDuration.WithLabelValues(f.server, f.client, p.String())
	}
	f.gaps[p].Observe(d.Seconds())
}

func (f *flowMeter) IdleAge(d time.Duration) {
	if f.idle == nil {
		f.idle = f.m.ReuseIdleAge.WithLabelValues(f.server, f.client)
	}
	f.idle.Observe(d.Seconds())
}

// retire lets the client labels go that no open connection has had for
// the linger (inUse: the process names of the open connections), and
// their series with them.
func (mt *meter) retire(inUse map[string]bool) {
	for _, name := range mt.clients.retire(mt.now(), inUse) {
		l := prometheus.Labels{"client": name}
		mt.m.ExchangeDuration.DeletePartialMatch(l)
		mt.m.ReuseIdleAge.DeletePartialMatch(l)
		mt.m.Stalls.DeletePartialMatch(l)
		mt.m.StallOutcomes.DeletePartialMatch(l)
		mt.m.IdleCloseRaces.DeletePartialMatch(l)
		mt.m.ConnectionCloses.DeletePartialMatch(l)
		for k := range mt.flows {
			if k[1] == name {
				delete(mt.flows, k)
			}
		}
	}
}

// count counts an event in the counters that follow events, under the
// label its connection was given; the event itself keeps the process
// name.
func (mt *meter) count(e correlate.Event) {
	m, client := mt.m, mt.clients.of(e.Client)
	switch d := e.Detail.(type) {
	case *correlate.Stall:
		m.Stalls.WithLabelValues(e.Server, client, d.State).Inc()
	case *correlate.StallEnd:
		m.StallOutcomes.WithLabelValues(e.Server, client, d.Outcome).Inc()
	case *correlate.Release:
		m.StallReleases.WithLabelValues(e.Server, correlate.ReleaseCause).Inc()
	case *correlate.Race:
		m.IdleCloseRaces.WithLabelValues(e.Server, client, d.RaceKind).Inc()
	case *correlate.TLSAlert:
		m.TLSAlerts.WithLabelValues(e.Server, d.Direction).Inc()
	case *correlate.Close:
		m.ConnectionCloses.WithLabelValues(e.Server, client, d.Initiator, d.How).Inc()
	}
}

// stateCollector computes the state gauges from the correlator when
// /metrics is scraped (node_exporter's collector pattern): they cannot
// drift from what the correlator holds, and series of label sets that are
// gone disappear with them.
type stateCollector struct {
	descs   exporter.StateDescs
	mu      *sync.Mutex // guards the correlator
	corr    *correlate.Correlator
	clients *clientLabels
	now     func() time.Time
}

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.descs.All() {
		ch <- d
	}
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	st := c.corr.State(c.now())
	c.mu.Unlock()
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	// Stalled now: a zero matters to a dashboard while connections are
	// open, so each server and client with connections has every state.
	// Process names without a label of their own add up under other.
	stalled, conns := c.byLabel(st.Stalled), c.byLabel(st.Connections)
	for l := range conns {
		for _, state := range []string{correlate.StateUnacked, correlate.StateAckedSilent, correlate.StateUnread} {
			stalled[correlate.Labels{Server: l.Server, Client: l.Client, State: state}] += 0
		}
	}
	for l, n := range stalled {
		gauge(c.descs.Stalled, float64(n), l.Server, l.Client, l.State)
	}
	for l, n := range conns {
		gauge(c.descs.Connections, float64(n), l.Server, l.Client, l.State)
	}
	for _, s := range st.Servers {
		gauge(c.descs.OldestOpenExchange, s.Oldest.Seconds(), s.Server)
		if s.MaxConnections > 0 {
			gauge(c.descs.ServerMaxConns, float64(s.MaxConnections), s.Server)
			gauge(c.descs.PoolAboveLimit, float64(s.AboveLimit), s.Server)
		}
		if s.IdleTimeout > 0 {
			gauge(c.descs.ServerIdleTimeout, s.IdleTimeout.Seconds(), s.Server)
		}
	}
	gauge(c.descs.FlowsTracked, float64(st.Flows))
}

// byLabel sums counts by the labels they are shown under.
func (c *stateCollector) byLabel(counts map[correlate.Labels]int) map[correlate.Labels]int {
	out := make(map[correlate.Labels]int, len(counts))
	for l, n := range counts {
		l.Client = c.clients.of(l.Client)
		out[l] += n
	}
	return out
}
