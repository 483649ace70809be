package correlate

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/icapwatch/icapwatch/agent/observe"
)

func fromDiag(o *observe.Observation) { o.Source = observe.SourceSockDiag }

// seen is sock_diag's first sight of one end of a flow in a state, as
// its tracker tells it: the state from 0, then the FINs the state says
// were sent.
func (h *harness) seen(f observe.Flow, s float64, end observe.Direction, st observe.TCPState) *harness {
	h.obs(observe.State, f, s, fromDiag, state(0, st), func(o *observe.Observation) { o.Dir = end })
	fins := finsOf(end, st)
	for _, side := range []observe.Direction{observe.ToServer, observe.ToClient} {
		if fins&(flagFinClient<<side) != 0 {
			h.obs(observe.FIN, f, s, fromDiag, func(o *observe.Observation) { o.Dir = side })
		}
	}
	return h
}

var closingStates = []observe.TCPState{observe.TCPTimeWait, observe.TCPFinWait1, observe.TCPFinWait2,
	observe.TCPCloseWait, observe.TCPLastAck, observe.TCPClosing}

// Sockets that were closing when sock_diag first saw them (at the start,
// the TIME_WAIT of the connections before it) are followed, not closed:
// no close event, no close counted, not in the pool.
func TestSeededClosingSocketsAreNotCloses(t *testing.T) {
	for _, st := range closingStates {
		for _, end := range []observe.Direction{observe.ToServer, observe.ToClient} {
			t.Run(st.String()+"/"+[]string{"client end", "server end"}[end], func(t *testing.T) {
				h := newHarness(t, nil)
				h.seen(flowA, 1, end, st).sweep(2).sweep(3)
				h.wantKinds("")
				h.wantMetric("connections", 1, srvA.String(), ClientUnknown, st.String())
				if s := h.c.State(h.now).Servers[0]; s.Open != 0 {
					t.Errorf("%d connections open to the server, want 0", s.Open)
				}
				// What sock_diag tells later: the state moves on, the socket goes.
				h.obs(observe.State, flowA, 4, fromDiag, state(st, observe.TCPTimeWait)).
					obs(observe.FIN, flowA, 4, fromDiag, fromServer).obs(observe.FIN, flowA, 4, fromDiag, fromClient).
					obs(observe.State, flowA, 60, fromDiag, state(observe.TCPTimeWait, observe.TCPClose)).sweep(70)
				h.wantKinds("")
				h.wantMetric("flows_tracked", 0)
			})
		}
	}
}

// On loopback sock_diag sees both ends; a socket seen established at the
// start closes later, and that close counts, once.
func TestSeededThenClosedCountsOnce(t *testing.T) {
	h := newHarness(t, nil)
	h.seen(flowA, 1, observe.ToServer, observe.TCPFinWait2).seen(flowA, 1, observe.ToClient, observe.TCPCloseWait)
	h.seen(flowB, 1, observe.ToServer, observe.TCPEstablished).seen(flowB, 1, observe.ToClient, observe.TCPEstablished)
	h.sweep(2)
	// Later polls: A's server end closes too; B closes, its server first.
	h.obs(observe.State, flowA, 4, fromDiag, fromServer, state(observe.TCPCloseWait, observe.TCPLastAck)).
		obs(observe.FIN, flowA, 4, fromDiag, fromServer)
	h.obs(observe.State, flowB, 4, fromDiag, fromServer, state(observe.TCPEstablished, observe.TCPFinWait1)).
		obs(observe.FIN, flowB, 4, fromDiag, fromServer).
		obs(observe.State, flowB, 4, fromDiag, fromClient, state(observe.TCPEstablished, observe.TCPCloseWait))
	h.sweep(6)
	h.wantKinds("close:server")
	if e := h.events[0]; e.ClientAddr != cliB {
		t.Errorf("close of %v, want B's", e.ClientAddr)
	}
}

// A flow whose first signal from a live source is its close was closing
// before it was seen: its close is not counted. A server's close is
// still a close at its time: it releases a stalled sibling.
func TestFirstSignalACloseIsNotCounted(t *testing.T) {
	for _, tc := range []struct {
		name  string
		first func(h *harness)
	}{
		{"fin", func(h *harness) { h.obs(observe.FIN, flowB, 40, fromServer) }},
		{"rst", func(h *harness) { h.obs(observe.RST, flowB, 40, fromServer) }},
		{"alert", func(h *harness) {
			h.obs(observe.TLSAlert, flowB, 40, fromServer).obs(observe.FIN, flowB, 40, fromServer)
		}},
		{"tracepoint", func(h *harness) {
			h.obs(observe.State, flowB, 39.9, fromServer, state(observe.TCPEstablished, observe.TCPFinWait1)).
				obs(observe.FIN, flowB, 40, fromServer)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, nil)
			h.obs(observe.ExchangeStart, flowA, 1).obs(observe.Acked, flowA, 1.04).sweep(11)
			tc.first(h)
			h.obs(observe.FIN, flowB, 40.001, fromClient)
			h.obs(observe.Answer, flowA, 40.008).sweep(45)
			h.wantMetric("connection_closes", 0, srvA.String(), ClientUnknown, "server", "fin")
			h.wantMetric("connection_closes", 0, srvA.String(), ClientUnknown, "server", "rst")
			h.wantMetric("connection_closes", 0, srvA.String(), ClientUnknown, "client", "fin")
			h.wantMetric("stall_releases", 1, srvA.String(), ReleaseCause)
		})
	}
	// A socket gone that was never followed makes no flow.
	h := newHarness(t, nil)
	h.obs(observe.State, flowA, 1, fromDiag, state(observe.TCPTimeWait, observe.TCPClose))
	h.wantMetric("flows_tracked", 0)
}

// A capture has no seeding: it sees what happens from its start, and a
// connection idle then shows first with its close, which counts.
func TestCaptureCountsClosesOfIdleConnections(t *testing.T) {
	h := newHarness(t, nil)
	capture := func(o *observe.Observation) { o.Source = observe.SourceCapture }
	h.obs(observe.FIN, flowA, 1, capture, fromServer).obs(observe.FIN, flowA, 1.01, capture, fromClient)
	h.wantKinds("close:server")
}

// The defect of --max-flows 100: a closed flow evicted, then made anew by
// its connection's late signals (the server's FIN, the state tracepoint,
// sock_diag's next poll) and closed again as client="unknown". The close
// counts once, with its process and its open exchange.
func TestEvictedClosedFlowIsNotClosedAgain(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.MaxFlows = 2 })
	h.obs(observe.State, flowA, 0, fromClient, state(observe.TCPSynSent, observe.TCPEstablished), owner(4121, "scanapp"))
	h.obs(observe.ExchangeStart, flowA, 1).obs(observe.FIN, flowA, 2, fromClient)
	h.obs(observe.ExchangeStart, flowB, 2.1).obs(observe.ExchangeStart, flowC, 2.2) // A is evicted
	// A's late signals.
	h.obs(observe.State, flowA, 2.25, fromClient, state(observe.TCPEstablished, observe.TCPFinWait1)).
		obs(observe.TLSAlert, flowA, 2.3, fromServer).obs(observe.FIN, flowA, 2.3, fromServer).
		obs(observe.State, flowA, 2.3, fromClient, state(observe.TCPFinWait2, observe.TCPClose)).sweep(3)
	h.obs(observe.State, flowA, 4, fromDiag, fromClient, state(observe.TCPEstablished, observe.TCPTimeWait)).
		obs(observe.FIN, flowA, 4, fromDiag, fromServer).obs(observe.FIN, flowA, 4, fromDiag, fromClient).
		obs(observe.SocketInfo, flowA, 4, fromDiag, fromClient).sweep(10)
	if n := h.count(KindClose, nil); n != 1 {
		t.Fatalf("%v close events, want 1: %s", n, h.kinds())
	}
	e := h.events[slices.IndexFunc(h.events, func(e Event) bool { return e.Kind() == KindClose })]
	if e.ClientAddr != cliA || e.Client != "scanapp" || e.Field("initiator") != "client" || e.Field("open_exchange") != true {
		t.Errorf("close: %s %s %v open_exchange=%v", e.ClientAddr, e.Client, e.Field("initiator"), e.Field("open_exchange"))
	}
	for _, ex := range h.c.OpenExchanges(h.now) {
		if ex.ClientAddr == cliA.String() {
			t.Errorf("A made anew: %+v", ex)
		}
	}
}

// A flow dropped a while after its close (the linger after CLOSE) is not
// made anew by sock_diag telling its TIME_WAIT socket's queues, once a
// minute, or by the socket leaving.
func TestDroppedClosedFlowStaysGone(t *testing.T) {
	h := newHarness(t, nil)
	h.obs(observe.State, flowA, 0, fromClient, state(observe.TCPSynSent, observe.TCPEstablished), owner(4121, "scanapp"))
	h.obs(observe.ExchangeStart, flowA, 1).obs(observe.Answer, flowA, 1.1)
	h.obs(observe.FIN, flowA, 2, fromClient).obs(observe.FIN, flowA, 2.001, fromServer).
		obs(observe.State, flowA, 2.001, fromClient, state(observe.TCPFinWait2, observe.TCPClose)).sweep(10)
	h.wantMetric("flows_tracked", 0)
	h.obs(observe.SocketInfo, flowA, 50, fromDiag, fromClient).sweep(51)
	h.wantMetric("flows_tracked", 0)
	h.obs(observe.State, flowA, 62, fromDiag, fromClient, state(observe.TCPTimeWait, observe.TCPClose)).sweep(63)
	h.wantMetric("flows_tracked", 0)
	h.wantKinds("close:client")
}

// A new connection on the addresses of a closed flow that left the table
// is a flow of its own, and its close counts.
func TestNewConnectionOnBuriedAddresses(t *testing.T) {
	h := newHarness(t, nil)
	life := func(s float64) {
		h.obs(observe.State, flowA, s, fromClient, state(observe.TCPClose, observe.TCPSynSent), owner(4121, "scanapp")).
			obs(observe.State, flowA, s, fromClient, state(observe.TCPSynSent, observe.TCPEstablished)).
			obs(observe.ExchangeStart, flowA, s+0.1).obs(observe.Answer, flowA, s+0.2).
			obs(observe.FIN, flowA, s+1, fromClient).obs(observe.FIN, flowA, s+1.001, fromServer).
			obs(observe.State, flowA, s+1.001, fromClient, state(observe.TCPFinWait2, observe.TCPClose)).sweep(s + 8)
	}
	life(0)
	life(10)
	// A capture shows no states: a new TLS connection's handshake.
	capture := func(o *observe.Observation) { o.Source = observe.SourceCapture }
	h.obs(observe.ExchangeStart, flowA, 20, capture, func(o *observe.Observation) { o.Phase = observe.PhaseHandshake }).
		obs(observe.Answer, flowA, 20.1, capture).obs(observe.RST, flowA, 21, capture, fromClient)
	h.wantKinds("close:client close:client close:client")
}

// Closed flows are remembered in a bounded ring, for a while.
func TestBuriedFlowsAreBounded(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.MaxFlows = 1 })
	n := 3 * minBuried
	flow := func(i int) observe.Flow {
		return observe.Flow{Client: netip.AddrPortFrom(cliA.Addr(), uint16(10000+i)), Server: srvA}
	}
	for i := range n {
		h.obs(observe.State, flow(i), 1, fromClient, state(observe.TCPSynSent, observe.TCPEstablished)).
			obs(observe.RST, flow(i), 1, fromClient)
	}
	if len(h.c.buried) != minBuried || len(h.c.graves) != minBuried {
		t.Errorf("%d buried in %d graves, want %d", len(h.c.buried), len(h.c.graves), minBuried)
	}
	if !h.c.isBuried(flow(n-2), instantOf(at(2))) || h.c.isBuried(flow(0), instantOf(at(2))) {
		t.Error("the latest are not remembered, or the oldest are")
	}
	if h.c.isBuried(flow(n-2), instantOf(at(1).Add(buriedLinger))) {
		t.Error("remembered past the linger")
	}
}

// The defect of --max-flows with requests held open: eviction took the
// least recently observed flows, which are the stalled ones, so no stall
// was told. Idle flows go first; a flow with an open exchange only when
// none is idle, and that is counted apart.
func TestStalledFlowsAreEvictedLast(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.MaxFlows = 3 })
	flow := func(i int) observe.Flow {
		return observe.Flow{Client: netip.AddrPortFrom(cliA.Addr(), uint16(20000+i)), Server: srvA}
	}
	// A request held open, then pooled connections answered.
	h.obs(observe.ExchangeStart, flowA, 0).obs(observe.Acked, flowA, 0.05)
	for i := range 20 {
		s := 0.1 + float64(i)*0.3
		h.obs(observe.ExchangeStart, flow(i), s).obs(observe.Answer, flow(i), s+0.01)
	}
	h.sweep(10)
	h.wantKinds("stall:acked_silent")
	h.wantMetric("flow_evictions", 18)
	h.wantMetric("flow_evictions_open_exchange", 0)
	// Every flow busy: the quietest busy one goes, and it is told.
	h.obs(observe.ExchangeStart, flowB, 11).obs(observe.ExchangeStart, flowC, 11.1).obs(observe.ExchangeStart, flowA2, 11.2)
	h.wantKinds("stall:acked_silent stall_end:acked_silent:evicted")
	h.wantMetric("flow_evictions", 21)
	h.wantMetric("flow_evictions_open_exchange", 1)
}

// A flow whose exchange a sweep settles (an answer held as a possible
// TLS 1.3 ticket) is idle from then on: evicted before a busy one that
// was observed less recently.
func TestSettledFlowIsIdle(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.MaxFlows = 2 })
	h.obs(observe.ExchangeStart, flowB, 0)
	h.obs(observe.ExchangeStart, flowA, 0.5).obs(observe.Answer, flowA, 0.6, flags(observe.MaybeTicket)).sweep(2)
	h.obs(observe.ExchangeStart, flowC, 3)
	var open []string
	for _, ex := range h.c.OpenExchanges(at(3)) {
		open = append(open, ex.ClientAddr)
	}
	slices.Sort(open)
	if got, want := strings.Join(open, " "), cliB.String()+" "+cliC.String(); got != want {
		t.Errorf("open: %s, want %s (A evicted)", got, want)
	}
	h.wantMetric("flow_evictions_open_exchange", 0)
}

// A connection the server closed that its application holds in
// CLOSE_WAIT for minutes: its flow leaves the table after a minute's
// quiet, sock_diag tells its queues once a minute, and the application's
// close at last is no second close.
func TestHeldCloseWaitClosesOnce(t *testing.T) {
	h := newHarness(t, nil)
	h.obs(observe.State, flowA, 0, fromClient, state(observe.TCPSynSent, observe.TCPEstablished), owner(4121, "scanapp"))
	h.obs(observe.ExchangeStart, flowA, 1).obs(observe.Answer, flowA, 1.1)
	h.obs(observe.FIN, flowA, 2, fromServer).
		obs(observe.State, flowA, 2, fromClient, state(observe.TCPEstablished, observe.TCPCloseWait))
	for s := 3.0; s < 400; s++ {
		if int(s)%61 == 0 {
			h.obs(observe.SocketInfo, flowA, s, fromDiag, fromClient)
		}
		h.sweep(s)
	}
	h.obs(observe.State, flowA, 400, fromClient, state(observe.TCPCloseWait, observe.TCPLastAck)).
		obs(observe.FIN, flowA, 400, fromClient).
		obs(observe.State, flowA, 401, fromDiag, fromClient, state(observe.TCPCloseWait, observe.TCPLastAck)).
		obs(observe.FIN, flowA, 401, fromDiag, fromClient).sweep(405)
	h.wantKinds("close:server")
}

// A socket closed with data unread reaches CLOSE before the reset it
// sends leaves; a sweep between the two, or a source that tells a socket
// gone before the kernel's events of its close arrive, must not take the
// close for one whose signals were never seen: the reset, when it comes,
// is the close.
func TestCloseSignalAfterTheSocketsClose(t *testing.T) {
	for _, src := range []struct {
		name string
		opt  func(*observe.Observation)
	}{{"kernel", func(*observe.Observation) {}}, {"sock_diag", fromDiag}} {
		t.Run(src.name, func(t *testing.T) {
			h := newHarness(t, nil)
			h.obs(observe.State, flowA, 0, fromClient, state(observe.TCPSynSent, observe.TCPEstablished)).
				obs(observe.ExchangeStart, flowA, 1).obs(observe.Answer, flowA, 1.1, fromServer).
				obs(observe.State, flowA, 5, fromClient, src.opt, state(observe.TCPEstablished, observe.TCPClose)).
				sweep(5.5).sweep(7).
				obs(observe.RST, flowA, 5.0001, fromClient).sweep(8)
			h.wantKinds("close:client")
			if got := h.field(KindClose, "how"); got != "rst" {
				t.Errorf("how %v, want rst", got)
			}
		})
	}
}
