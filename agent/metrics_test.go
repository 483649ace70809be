package agent

import (
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

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

// A process names itself as it likes: past --max-clients names, the
// client label is other, each such connection counted, while the events
// keep the real name; a name whose connections are gone gives its label
// and series up after the linger, and a new name takes the room.
func TestClientLabelsAreBounded(t *testing.T) {
	h := newHarnessClients(t, 2, time.Minute)
	flows := make([]observe.Flow, 5)
	for i := range flows {
		flows[i] = observe.Flow{Client: netip.AddrPortFrom(flowA.Client.Addr(), uint16(40100+i)), Server: srvA}
		h.observe(observe.Observation{Kind: observe.State, Source: observe.SourceKernel, Time: at(float64(i)),
			Flow: flows[i], OldState: observe.TCPSynSent, NewState: observe.TCPEstablished, PID: uint32(100 + i),
			Comm: fmt.Sprintf("app%d", i)})
		h.obs(observe.ExchangeStart, flows[i], 5)
	}
	h.sweep(16)
	client := func(c string) map[string]string { return map[string]string{"client": c} }
	h.wantMetric("icapwatch_connections", 1, client("app0"))
	h.wantMetric("icapwatch_connections", 1, client("app1"))
	h.wantMetric("icapwatch_connections", 3, client(ClientOther))
	h.wantSeries("icapwatch_connections", 3, nil)
	h.wantMetric("icapwatch_stalls_total", 3, client(ClientOther))
	h.wantMetric("icapwatch_client_label_overflows_total", 3, nil)
	var names []string
	for _, e := range h.events {
		names = append(names, e.Client)
	}
	if !slices.Contains(names, "app4") || slices.Contains(names, ClientOther) {
		t.Errorf("events' clients %v: want the process names, app4 among them", names)
	}

	for _, f := range flows {
		h.obs(observe.FIN, f, 20)
		h.observe(observe.Observation{Kind: observe.State, Source: observe.SourceKernel, Time: at(20), Flow: f,
			OldState: observe.TCPFinWait1, NewState: observe.TCPClose})
	}
	h.sweep(30)
	h.wantMetric("icapwatch_connection_closes_total", 1, client("app0"))
	retire := func() {
		inUse := map[string]bool{}
		for l := range h.c.State(h.now).Connections {
			inUse[l.Client] = true
		}
		h.meter.retire(inUse)
	}
	retire() // within the linger: kept
	h.wantSeries("icapwatch_stalls_total", 1, client("app0"))
	h.now = at(30 + 60)
	retire()
	for _, name := range []string{"icapwatch_stalls_total", "icapwatch_connection_closes_total", "icapwatch_stall_outcomes_total"} {
		h.wantSeries(name, 0, client("app0"))
		h.wantSeries(name, 0, client("app1"))
		h.wantSeries(name, 1, client(ClientOther))
	}

	next := observe.Flow{Client: netip.AddrPortFrom(flowA.Client.Addr(), 40200), Server: srvA}
	h.observe(observe.Observation{Kind: observe.State, Source: observe.SourceKernel, Time: at(91), Flow: next,
		OldState: observe.TCPSynSent, NewState: observe.TCPEstablished, PID: 200, Comm: "app5"})
	h.wantMetric("icapwatch_connections", 1, client("app5"))
	h.wantMetric("icapwatch_client_label_overflows_total", 3, nil)
}
