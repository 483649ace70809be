package agent

import (
	"net/netip"
	"testing"

	"github.com/icapwatch/icapwatch/agent/observe"
)

// The state gauges are what the correlator holds at the scrape: series of
// connections that are gone go with them, a stalled-now zero is there
// while connections are open, and a server that stops advertising a
// limit has no pool gauge left behind.
func TestStateGaugesFollowTheCorrelator(t *testing.T) {
	h := newHarness(t)
	flowB := observe.Flow{Client: netip.MustParseAddrPort("192.0.2.10:40002"), Server: srvA}
	scanapp := map[string]string{"server": srvA.String(), "client": "scanapp"}
	with := func(k, v string) map[string]string {
		m := map[string]string{k: v}
		for k, v := range scanapp {
			m[k] = v
		}
		return m
	}
	limit := func(s float64, n int) {
		h.observe(observe.Observation{Kind: observe.ServerOptions, Source: observe.SourceCanary, Time: at(s),
			Flow: observe.Flow{Server: srvA}, MaxConnections: n})
	}
	limit(0, 1)
	for i, f := range []observe.Flow{flowA, flowB} {
		h.observe(observe.Observation{Kind: observe.State, Source: observe.SourceKernel, Time: at(float64(i)),
			Flow: f, OldState: observe.TCPSynSent, NewState: observe.TCPEstablished, PID: 7, Comm: "scanapp"})
	}
	h.obs(observe.ExchangeStart, flowA, 2).sweep(12.5)
	h.wantMetric("icapwatch_connections", 2, with("state", "established"))
	h.wantMetric("icapwatch_stalled_exchanges", 1, with("state", "unacked"))
	h.wantMetric("icapwatch_oldest_open_exchange_seconds", 10.5, map[string]string{"server": srvA.String()})
	h.wantMetric("icapwatch_pool_above_server_limit", 1, map[string]string{"server": srvA.String()})
	h.wantMetric("icapwatch_stalls_total", 1, with("state", "unacked"))
	h.wantSeries("icapwatch_stalled_exchanges", 3, scanapp) // unacked 1, acked_silent 0, unread 0

	limit(13, 0) // the server no longer says
	h.wantSeries("icapwatch_pool_above_server_limit", 0, nil)
	h.wantSeries("icapwatch_server_max_connections", 0, nil)

	for _, f := range []observe.Flow{flowA, flowB} {
		h.observe(observe.Observation{Kind: observe.State, Source: observe.SourceKernel, Time: at(14), Flow: f,
			OldState: observe.TCPEstablished, NewState: observe.TCPClose})
	}
	h.sweep(30)
	for _, name := range []string{"icapwatch_connections", "icapwatch_stalled_exchanges"} {
		h.wantSeries(name, 0, scanapp)
	}
	h.wantMetric("icapwatch_flows_tracked", 0, nil)
	h.wantMetric("icapwatch_stall_outcomes_total", 1, with("outcome", "client_closed"))
}
