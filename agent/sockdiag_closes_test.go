package agent

import (
	"net/netip"
	"testing"

	"github.com/icapwatch/icapwatch/agent/observe"
)

// After a restart sock_diag's first poll finds the connections that
// closed before it in TIME_WAIT and the other closing states: they are
// followed, and no close is counted or told for them. A connection seen
// established that closes later counts once: beside the kernel probes,
// as the kernel tells it; as the source, as sock_diag's states tell it.
func TestDiagSeedingClosingSocketsCountsNoClose(t *testing.T) {
	for _, source := range []bool{false, true} { // beside the kernel probes, and as the source
		h := newHarness(t)
		d := newDiagTracker(source)
		var socks []Socket
		for i, st := range []observe.TCPState{observe.TCPTimeWait, observe.TCPFinWait1, observe.TCPFinWait2,
			observe.TCPCloseWait, observe.TCPLastAck, observe.TCPClosing} {
			client := netip.AddrPortFrom(flowA.Client.Addr(), uint16(41000+i))
			socks = append(socks, Socket{Flow: observe.Flow{Client: client, Server: srvA}, ClientEnd: true, State: st,
				PID: 77, Comm: "scanapp"})
		}
		socks = append(socks, Socket{Flow: flowA, ClientEnd: true, State: observe.TCPEstablished, PID: 77, Comm: "scanapp"})
		poll := func(s float64) {
			h.now = at(s)
			d.update(h.now, socks, h.c.Observe)
			h.c.Sweep(h.now)
		}
		poll(1)
		poll(4)
		h.wantKinds("")
		h.wantSeries("icapwatch_connection_closes_total", 0, nil)
		h.wantMetric("icapwatch_connections", 1, map[string]string{"server": srvA.String(), "state": "time_wait"})
		h.wantMetric("icapwatch_connections", 1, map[string]string{"server": srvA.String(), "state": "established"})

		socks[len(socks)-1].State = observe.TCPTimeWait
		if !source {
			// Beside the kernel probes, the kernel tells the close.
			for i, dir := range []observe.Direction{observe.ToServer, observe.ToClient} {
				h.observe(observe.Observation{Kind: observe.FIN, Source: observe.SourceKernel, Time: at(6 + 0.001*float64(i)),
					Flow: flowA, Dir: dir})
			}
		}
		poll(7)
		poll(10)
		h.wantKinds("close")
		h.wantMetric("icapwatch_connection_closes_total", 1, map[string]string{"server": srvA.String()})
		// The eviction counters are there from the start, at zero.
		h.wantSeries("icapwatch_flow_evictions_open_exchange_total", 1, nil)
		h.wantMetric("icapwatch_flow_evictions_open_exchange_total", 0, nil)
	}
}

// Beside the kernel probes, a connection whose close the kernel's buffer
// lost would keep its stall open for ever. sock_diag ends it when a
// second poll in a row misses its socket (the first may come before the
// kernel's events of a close that did arrive): the stall ends as
// evicted, the agent having lost how, and no close is counted. A socket
// that one dump missed and the next finds again is not taken for gone.
func TestDiagEndsFlowsWhoseKernelCloseWasLost(t *testing.T) {
	h := newHarness(t)
	d := newDiagTracker(false)
	sock := []Socket{{Flow: flowA, ClientEnd: true, State: observe.TCPEstablished, PID: 77, Comm: "scanapp"}}
	poll := func(s float64, socks []Socket) {
		h.now = at(s)
		d.update(h.now, socks, h.c.Observe)
		h.c.Sweep(h.now)
	}
	h.observe(observe.Observation{Kind: observe.State, Source: observe.SourceKernel, Time: at(0), Flow: flowA,
		Dir: observe.ToServer, OldState: observe.TCPSynSent, NewState: observe.TCPEstablished, PID: 77, Comm: "scanapp"})
	h.obs(observe.ExchangeStart, flowA, 1).obs(observe.Acked, flowA, 1.01)
	poll(3, sock)
	poll(6, nil) // a dump that missed it
	poll(9, sock)
	poll(12, sock)
	h.wantKinds("stall:acked_silent")

	// The kernel's events of its close are lost.
	poll(15, nil)
	h.wantKinds("stall:acked_silent")
	h.wantMetric("icapwatch_connections", 1, map[string]string{"server": srvA.String(), "state": "established"})
	poll(18, nil)
	h.wantKinds("stall:acked_silent stall_end:acked_silent:evicted")
	h.wantMetric("icapwatch_connections", 0, map[string]string{"server": srvA.String(), "state": "established"})
	h.wantSeries("icapwatch_connection_closes_total", 0, nil)
}
