package correlate

import (
	"net/netip"
	"testing"

	"github.com/icapwatch/icapwatch/agent/observe"
)

var flowD = observe.Flow{Client: netip.MustParseAddrPort("192.0.2.10:40004"), Server: srvA}

// idleThenServerClose: an exchange answered at 0, then the server closes
// the idle connection at 300 with its close_notify and a reset (c-icap)
// or a FIN; the client's socket reaches CLOSE with the reset.
func idleThenServerClose(h *harness, f observe.Flow, how observe.Kind) *harness {
	h.obs(observe.State, f, 0, fromClient, state(observe.TCPSynSent, observe.TCPEstablished), owner(4121, "scanapp"))
	h.obs(observe.ExchangeStart, f, 0.1).obs(observe.Answer, f, 0.11).
		obs(observe.TLSAlert, f, 300, fromServer, flags(observe.Probable)).obs(how, f, 300.0001, fromServer)
	if how == observe.RST {
		h.obs(observe.State, f, 300.0002, fromClient, state(observe.TCPEstablished, observe.TCPClose))
	} else {
		h.obs(observe.State, f, 300.0002, fromClient, state(observe.TCPEstablished, observe.TCPCloseWait))
	}
	return h
}

func writeFailed(h *harness, f observe.Flow, s float64) *harness {
	return h.obs(observe.AppWriteFailed, f, s, fromClient, state(observe.TCPEstablished, observe.TCPClose),
		func(o *observe.Observation) { o.Len = 104 }) // ECONNRESET
}

// A write on a pooled connection the server reset sends nothing: the
// failed write is the race, with server_close rst, once per flow, also
// when it comes long after the flow left the table.
func TestReuseAfterServerReset(t *testing.T) {
	for _, tc := range []struct {
		name  string
		write float64
	}{{"flow still tracked", 301}, {"flow gone from the table", 420}} {
		t.Run(tc.name, func(t *testing.T) {
			h := idleThenServerClose(newHarness(t, nil), flowA, observe.RST)
			h.sweep(tc.write - 0.5)
			writeFailed(h, flowA, tc.write)
			writeFailed(h, flowA, tc.write+0.01) // EPIPE on the next try
			h.wantKinds("tls_alert:server close:server race:reuse_after_server_close")
			h.wantMetric("idle_close_races", 1, srvA.String(), "scanapp", RaceReuseAfterClose)
			for field, want := range map[string]any{"server_close": "rst", "race_kind": RaceReuseAfterClose,
				"idle_age_seconds": tc.write - 0.11, "request_to_close_seconds": 300 - tc.write} {
				if got, ok := h.field(KindRace, field).(float64); ok {
					if w := want.(float64); got-w > 1e-6 || w-got > 1e-6 {
						t.Errorf("%s %v, want %v", field, got, w)
					}
				} else if got := h.field(KindRace, field); got != want {
					t.Errorf("%s %v, want %v", field, got, want)
				}
			}
			if e := h.events[len(h.events)-1]; e.PID != 4121 || e.Client != "scanapp" || e.ClientAddr != cliA {
				t.Errorf("race of %s %s (pid %d), want scanapp %s (pid 4121)", e.Client, e.ClientAddr, e.PID, cliA)
			}
			if n := h.m.idleAges[[2]string{srvA.String(), "scanapp"}]; n != 1 {
				t.Errorf("reuse idle age: %d observations, want the failed write's", n)
			}
		})
	}
}

// After a FIN, the request reaches the wire and is the race; the
// server's reset and the next write's failure are the same race.
// Without a request on the wire, the failed write after FIN and reset is.
func TestReuseAfterServerFINThenReset(t *testing.T) {
	h := idleThenServerClose(newHarness(t, nil), flowA, observe.FIN)
	h.obs(observe.ExchangeStart, flowA, 301).obs(observe.RST, flowA, 301.001, fromServer).
		obs(observe.State, flowA, 301.002, fromClient, state(observe.TCPCloseWait, observe.TCPClose))
	writeFailed(h, flowA, 302)
	h.wantMetric("idle_close_races", 1, srvA.String(), "scanapp", RaceReuseAfterClose)
	if got := h.field(KindRace, "server_close"); got != "fin" {
		t.Errorf("server_close %v, want fin", got)
	}

	h = idleThenServerClose(newHarness(t, nil), flowA, observe.FIN)
	h.obs(observe.RST, flowA, 300.5, fromServer).
		obs(observe.State, flowA, 300.6, fromClient, state(observe.TCPCloseWait, observe.TCPClose)).sweep(400)
	writeFailed(h, flowA, 400.5)
	h.wantMetric("idle_close_races", 1, srvA.String(), "scanapp", RaceReuseAfterClose)
	if got := h.field(KindRace, "server_close"); got != "fin" {
		t.Errorf("server_close %v, want fin", got)
	}
}

// No race: a write failure on a connection the client closed first, on one
// reset while an exchange was open (that race is the crossed close), on
// the server's end, or on a connection never seen, which makes no flow.
func TestWriteFailureNoRace(t *testing.T) {
	h := newHarness(t, nil)
	h.obs(observe.State, flowA, 0, fromClient, state(observe.TCPSynSent, observe.TCPEstablished))
	h.obs(observe.ExchangeStart, flowA, 0.1).obs(observe.Answer, flowA, 0.11).
		obs(observe.FIN, flowA, 200, fromClient).obs(observe.RST, flowA, 200.01, fromServer).
		obs(observe.State, flowA, 200.02, fromClient, state(observe.TCPFinWait1, observe.TCPClose))
	writeFailed(h, flowA, 200.5)

	h.obs(observe.ExchangeStart, flowB, 0.1).obs(observe.Answer, flowB, 0.11).
		obs(observe.ExchangeStart, flowB, 299.9).obs(observe.RST, flowB, 300, fromServer)
	writeFailed(h, flowB, 300.5)

	idleThenServerClose(h, flowC, observe.RST)
	h.obs(observe.AppWriteFailed, flowC, 301, fromServer)

	writeFailed(h, flowD, 302)
	if got := h.count(KindRace, map[string]string{"race_kind": RaceReuseAfterClose}); got != 0 {
		t.Errorf("%v reuse races: %s", got, h.kinds())
	}
	if _, ok := h.c.flows[flowD]; ok {
		t.Error("a failed write made a flow")
	}
}

// A new connection on the addresses of a dead one is not it.
func TestWriteFailureAfterNewConnection(t *testing.T) {
	h := idleThenServerClose(newHarness(t, nil), flowA, observe.RST).sweep(400)
	h.obs(observe.State, flowA, 401, fromClient, state(observe.TCPClose, observe.TCPSynSent))
	writeFailed(h, flowA, 402)
	if got := h.count(KindRace, nil); got != 0 {
		t.Errorf("%v races: %s", got, h.kinds())
	}
}
