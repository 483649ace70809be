// Package exporter defines icapwatch's metrics (the contract that
// dashboards and alert rules use) and serves them.
package exporter

import (
	"runtime"

	"github.com/icapwatch/icapwatch/internal/version"
	"github.com/prometheus/client_golang/prometheus"
)

const namespace = "icapwatch"

// GapBuckets reach 10 minutes: the stalls this tool exists for last
// minutes (a server's 5 minute idle timeout).
var GapBuckets = []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600}

// IdleAgeBuckets are dense below SPE's 300 s idle timeout, where reuse
// turns into a race.
var IdleAgeBuckets = []float64{1, 5, 10, 30, 60, 120, 180, 240, 270, 285, 295, 300, 310, 600}

// Metrics are the agent's metrics that count or measure as things happen,
// by the names of the contract. The gauges of the correlator's state are
// computed at each scrape: see StateDescs.
type Metrics struct {
	ExchangeDuration *prometheus.HistogramVec // server, client, phase
	Stalls           *prometheus.CounterVec   // server, client, state
	StallOutcomes    *prometheus.CounterVec   // server, client, outcome
	StallReleases    *prometheus.CounterVec   // server, cause
	IdleCloseRaces   *prometheus.CounterVec   // server, client, kind
	ReuseIdleAge     *prometheus.HistogramVec // server, client
	TLSAlerts        *prometheus.CounterVec   // server, direction
	ConnectionCloses *prometheus.CounterVec   // server, client, initiator, how
	Retransmits      *prometheus.CounterVec   // server
	MeasurementSkew  *prometheus.HistogramVec // target
	ProbeSuccess     *prometheus.GaugeVec     // target
	ProbePhase       *prometheus.HistogramVec // target, conn, phase
	ProbeFailures    *prometheus.CounterVec   // target, reason
	PoolConnections  *prometheus.GaugeVec     // target, state
	PoolExhausted    *prometheus.CounterVec   // target
	Events           *prometheus.CounterVec   // source
	EventsLost       *prometheus.CounterVec   // source
	EventsLate       *prometheus.CounterVec   // source
	Source           *prometheus.GaugeVec     // source: 1 for the one in use
	FlowEvictions    prometheus.Counter
	// of FlowEvictions, flows with an exchange open or an answer unread
	FlowEvictionsOpenExchange prometheus.Counter
	ClientOverflows           prometheus.Counter   // connections labelled client="other"
	KernelFlowEvictions       prometheus.Counter   // estimated from the kernel's counters
	KernelOtherNetns          prometheus.Counter   // socket events of flows of other network namespaces, left out
	HookAttached              *prometheus.GaugeVec // hook
	BuildInfo                 *prometheus.GaugeVec // version, goversion
}

func name(n string) string { return prometheus.BuildFQName(namespace, "", n) }

// StateDescs describe the gauges of the correlator's state. A collector
// computes them from that state when /metrics is scraped, so they cannot
// drift from it, and the series of connections that are gone are gone.
type StateDescs struct {
	Stalled            *prometheus.Desc // server, client, state
	OldestOpenExchange *prometheus.Desc // server
	Connections        *prometheus.Desc // server, client, state
	PoolAboveLimit     *prometheus.Desc // server
	ServerMaxConns     *prometheus.Desc // target
	ServerIdleTimeout  *prometheus.Desc // target
	FlowsTracked       *prometheus.Desc
}

// All lists the descriptions.
func (d StateDescs) All() []*prometheus.Desc {
	return []*prometheus.Desc{d.Stalled, d.OldestOpenExchange, d.Connections, d.PoolAboveLimit,
		d.ServerMaxConns, d.ServerIdleTimeout, d.FlowsTracked}
}

// NewStateDescs returns the descriptions of the state gauges.
func NewStateDescs() StateDescs {
	return StateDescs{
		Stalled: prometheus.NewDesc(name("stalled_exchanges"), "Exchanges stalled now.",
			[]string{"server", "client", "state"}, nil),
		OldestOpenExchange: prometheus.NewDesc(name("oldest_open_exchange_seconds"),
			"Age of the oldest open exchange to the server (0 when none is open).", []string{"server"}, nil),
		Connections: prometheus.NewDesc(name("connections"), "Tracked connections by TCP state.",
			[]string{"server", "client", "state"}, nil),
		PoolAboveLimit: prometheus.NewDesc(name("pool_above_server_limit"),
			"Connections this host holds to the server beyond its advertised Max-Connections (0 when within).",
			[]string{"server"}, nil),
		ServerMaxConns: prometheus.NewDesc(name("server_max_connections"),
			"Max-Connections the server advertises in OPTIONS.", []string{"target"}, nil),
		ServerIdleTimeout: prometheus.NewDesc(name("server_idle_timeout_seconds"),
			"The server's idle timeout, as the canary observed it.", []string{"target"}, nil),
		FlowsTracked: prometheus.NewDesc(name("flows_tracked"), "Flows the correlator tracks.", nil, nil),
	}
}

// NewMetrics creates the metrics and registers them with reg (nil: none).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		ExchangeDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: name("exchange_duration_seconds"),
			Help: "Gap from a request's first byte on the wire to the answer's first byte.", Buckets: GapBuckets},
			[]string{"server", "client", "phase"}),
		Stalls: prometheus.NewCounterVec(prometheus.CounterOpts{Name: name("stalls_total"),
			Help: "Exchanges that stayed open longer than the stall threshold, counted once, by where they were stuck."},
			[]string{"server", "client", "state"}),
		StallOutcomes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: name("stall_outcomes_total"),
			Help: "How stalled exchanges ended."}, []string{"server", "client", "outcome"}),
		StallReleases: prometheus.NewCounterVec(prometheus.CounterOpts{Name: name("stall_releases_total"),
			Help: "Stalled exchanges answered right after the server closed another connection: workers held by idle connections."},
			[]string{"server", "cause"}),
		IdleCloseRaces: prometheus.NewCounterVec(prometheus.CounterOpts{Name: name("idle_close_races_total"),
			Help: "Requests that raced the server's close of their connection, by kind."}, []string{"server", "client", "kind"}),
		ReuseIdleAge: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: name("reuse_idle_age_seconds"),
			Help: "How long a connection was quiet before a request was written on it.", Buckets: IdleAgeBuckets},
			[]string{"server", "client"}),
		TLSAlerts: prometheus.NewCounterVec(prometheus.CounterOpts{Name: name("tls_alerts_total"),
			Help: "TLS alerts (and probable TLS 1.3 close_notify) by sender: client or server."}, []string{"server", "direction"}),
		ConnectionCloses: prometheus.NewCounterVec(prometheus.CounterOpts{Name: name("connection_closes_total"),
			Help: "Connection closes by the side that closed first and how (fin or rst)."},
			[]string{"server", "client", "initiator", "how"}),
		Retransmits: prometheus.NewCounterVec(prometheus.CounterOpts{Name: name("retransmits_total"),
			Help: "Segments seen again on the wire."}, []string{"server"}),
		MeasurementSkew: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: name("measurement_skew_seconds"),
			Help:    "The canary's own gap minus the kernel's gap for the same exchange.",
			Buckets: []float64{-.01, -.001, -.0001, 0, .0001, .0005, .001, .0025, .005, .01, .1}}, []string{"target"}),
		ProbeSuccess: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: name("probe_success"),
			Help: "1 when the canary's last OPTIONS to the target was answered."}, []string{"target"}),
		ProbePhase: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: name("probe_phase_seconds"),
			Help:    "The canary's phases: connect, tls, write, first_byte, total; on a fresh or reused connection.",
			Buckets: GapBuckets}, []string{"target", "conn", "phase"}),
		ProbeFailures: prometheus.NewCounterVec(prometheus.CounterOpts{Name: name("probe_failures_total"),
			Help: "Canary probes that failed, by the phase or reason."}, []string{"target", "reason"}),
		PoolConnections: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: name("pool_connections"),
			Help: "The canary pool's connections by state (idle, busy)."}, []string{"target", "state"}),
		PoolExhausted: prometheus.NewCounterVec(prometheus.CounterOpts{Name: name("pool_exhausted_total"),
			Help: "Canary requests refused because every pooled connection was busy."}, []string{"target"}),
		Events: prometheus.NewCounterVec(prometheus.CounterOpts{Name: name("events_total"),
			Help: "Observations received, by source."}, []string{"source"}),
		EventsLost: prometheus.NewCounterVec(prometheus.CounterOpts{Name: name("events_lost_total"),
			Help: "Observations lost (buffer full, undecodable), by source."}, []string{"source"}),
		EventsLate: prometheus.NewCounterVec(prometheus.CounterOpts{Name: name("events_late_total"),
			Help: "Observations delivered after a later one, out of time order (still delivered), by source."},
			[]string{"source"}),
		Source: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: name("source"),
			Help: "1 for the source of wire observations in use: bpf, or sockdiag where BPF is not allowed."},
			[]string{"source"}),
		FlowEvictions: prometheus.NewCounter(prometheus.CounterOpts{Name: name("flow_evictions_total"),
			Help: "Flows dropped to stay within max-flows."}),
		FlowEvictionsOpenExchange: prometheus.NewCounter(prometheus.CounterOpts{
			Name: name("flow_evictions_open_exchange_total"),
			Help: "Flows dropped to stay within max-flows that had an exchange open or an answer waiting unread, as no flow was idle."}),
		ClientOverflows: prometheus.NewCounter(prometheus.CounterOpts{Name: name("client_label_overflows_total"),
			Help: "Connections labelled client=\"other\": max-clients process names had labels of their own."}),
		KernelFlowEvictions: prometheus.NewCounter(prometheus.CounterOpts{Name: name("kernel_flow_evictions_total"),
			Help: "Flows the kernel's flow table (max-flows entries) dropped to make room, estimated from its counters."}),
		KernelOtherNetns: prometheus.NewCounter(prometheus.CounterOpts{Name: name("kernel_other_netns_events_total"),
			Help: "Socket events (TCP states, retransmits, reads and writes) left out as another network namespace's: of a flow the TC programs do not see (loopback there, or traffic on no watched interface), or of a flow whose traffic did not come from that namespace through a watched interface."}),
		HookAttached: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: name("kernel_hook_attached"),
			Help: "1 when the kernel hook is attached."}, []string{"hook"}),
		BuildInfo: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: name("build_info"),
			Help: "Build information; always 1."}, []string{"version", "goversion"}),
	}
	m.BuildInfo.WithLabelValues(version.Version, runtime.Version()).Set(1)
	if reg != nil {
		reg.MustRegister(m.ExchangeDuration, m.Stalls, m.StallOutcomes,
			m.StallReleases, m.IdleCloseRaces, m.ReuseIdleAge, m.TLSAlerts,
			m.ConnectionCloses, m.Retransmits, m.MeasurementSkew,
			m.ProbeSuccess, m.ProbePhase, m.ProbeFailures, m.PoolConnections,
			m.PoolExhausted, m.Events, m.EventsLost, m.EventsLate, m.Source, m.FlowEvictions,
			m.FlowEvictionsOpenExchange, m.ClientOverflows,
			m.KernelFlowEvictions, m.KernelOtherNetns, m.HookAttached, m.BuildInfo)
	}
	return m
}
