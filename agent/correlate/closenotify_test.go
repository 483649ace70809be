package correlate

import (
	"testing"

	"github.com/icapwatch/icapwatch/agent/observe"
)

// heldRecord is a probable TLS 1.3 close_notify proved by the FIN or
// reset behind it: it comes then, with its record's time in Ref.
func heldRecord(s float64) func(*observe.Observation) {
	return func(o *observe.Observation) {
		o.Flags |= observe.Probable
		o.Ref = at(s)
	}
}

// An idle close as c-icap and Go's crypto/tls servers make it: the
// server's close_notify; the client, which keeps a read posted, answers
// at once with its own close_notify and FIN; the server, closing with that
// unread, resets. Its close_notify is known only at the reset, after the
// client's close, but it came first: the server closed, and a stalled
// handshake answered 4.6 ms after that close_notify was released by it.
func TestServerCloseNotifyProvedByReset(t *testing.T) {
	h := newHarness(t, nil)
	h.obs(observe.ExchangeStart, flowB, 0).obs(observe.Answer, flowB, 0.01) // B goes idle
	h.obs(observe.ExchangeStart, flowA, 1, func(o *observe.Observation) { o.Phase = observe.PhaseHandshake }).
		obs(observe.Acked, flowA, 1.04).sweep(11)
	// The server's record at 40; the client's at 40.0001 with its FIN.
	h.obs(observe.TLSAlert, flowB, 40.0002, fromClient, heldRecord(40.0001)).obs(observe.FIN, flowB, 40.0002, fromClient)
	h.obs(observe.Answer, flowA, 40.0046)
	h.sweep(40.003)
	h.obs(observe.TLSAlert, flowB, 40.005, fromServer, heldRecord(40)).obs(observe.RST, flowB, 40.005, fromServer)
	h.wantKinds("stall:acked_silent tls_alert:client stall_end:acked_silent:answered release tls_alert:server close:server")
	for _, e := range h.events {
		switch {
		case e.Kind() == KindTLSAlert && e.Field("direction") == "server" && !e.Time.Equal(at(40)):
			t.Errorf("the server's alert at %v, want its record's time %v", e.Time, at(40))
		case e.Kind() == KindTLSAlert && e.Field("tls_version") != "1.3?":
			t.Errorf("alert %v: tls_version %v", e.Field("direction"), e.Field("tls_version"))
		case e.Kind() == KindClose && !e.Time.Equal(at(40)):
			t.Errorf("close at %v, want the server's close_notify, %v", e.Time, at(40))
		}
	}
	if got := h.field(KindRelease, "after_close_seconds"); got != 0.0046 {
		t.Errorf("after_close_seconds %v, want 0.0046", got)
	}
	if got := h.field(KindRelease, "sibling_client_addr"); got != cliB.String() {
		t.Errorf("sibling %v", got)
	}
	h.wantMetric("stall_releases", 1, srvA.String(), ReleaseCause)
}

// A close_notify with its FIN in the same segment comes at once, without
// Ref, and keeps its observation's time; one proved later by its own FIN
// takes its record's.
func TestCloseNotifyWithoutRefKeepsItsTime(t *testing.T) {
	h := newHarness(t, nil)
	h.obs(observe.State, flowA, 0, fromClient, state(observe.TCPSynSent, observe.TCPEstablished)) // seen from its connect
	h.obs(observe.TLSAlert, flowA, 5, fromServer, flags(observe.Probable)).obs(observe.FIN, flowA, 5, fromServer)
	h.obs(observe.TLSAlert, flowA, 5.001, fromClient, heldRecord(5.0005)).obs(observe.FIN, flowA, 5.001, fromClient)
	h.wantKinds("tls_alert:server tls_alert:client close:server")
	if e := h.events[1]; !e.Time.Equal(at(5.0005)) {
		t.Errorf("the client's alert at %v, want its record's time", e.Time)
	}
}
