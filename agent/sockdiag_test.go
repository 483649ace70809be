package agent

import (
	"testing"
	"time"

	"github.com/icapwatch/icapwatch/agent/correlate"
	"github.com/icapwatch/icapwatch/agent/observe"
)

// The fallback source: exchanges from the sockets' timers, fed to the
// same correlator.
func TestDiagTrackerFallback(t *testing.T) {
	h := newHarness(t)
	d := newDiagTracker(true)
	sock := func(sent, recv float64, unacked, rqueue uint32) []Socket {
		return []Socket{{Flow: flowA, ClientEnd: true, State: observe.TCPEstablished, Unacked: unacked, RQueue: rqueue,
			SinceSent: time.Duration(sent * float64(time.Second)), SinceRecv: time.Duration(recv * float64(time.Second)),
			SinceAckRecv: time.Duration(sent * float64(time.Second)), PID: 77, Comm: "scanapp"}}
	}
	poll := func(s float64, sockets []Socket) {
		d.update(at(s), sockets, h.c.Observe)
		h.c.Sweep(at(s))
	}
	poll(0, sock(30, 30, 0, 0))    // idle since 30 s
	poll(1, sock(0.2, 31, 100, 0)) // a request went out 0.2 s ago, not ACKed yet
	poll(2, sock(1.2, 32, 0, 0))   // ACKed
	for s := 3.0; s <= 12; s++ {
		poll(s, sock(s-0.8, s+30, 0, 0))
	}
	poll(13, sock(12.2, 0.5, 0, 0)) // answered 0.5 s ago
	poll(14, nil)                   // gone
	h.wantKinds("stall:acked_silent stall_end:acked_silent:answered")
	if got := h.field(correlate.KindStall, "idle_age_seconds"); got != 30.8 {
		t.Errorf("idle age %v, want 30.8", got)
	}
	if got := h.field(correlate.KindStallEnd, "duration_seconds"); got != 11.7 {
		t.Errorf("duration %v, want 11.7", got)
	}
	if e := h.events[0]; e.PID != 77 || e.Client != "scanapp" {
		t.Errorf("owner: %+v", e)
	}
	h.wantMetric("icapwatch_connections", 0, map[string]string{"server": srvA.String(), "client": "scanapp", "state": "established"})
}

// With the kernel source, sock_diag confirms the ACK state and finds
// answers the application does not read.
func TestDiagTrackerConfirmsAndFindsUnread(t *testing.T) {
	h := newHarness(t)
	d := newDiagTracker(false)
	// The kernel saw an ACK, but sock_diag sees unacked bytes: unacked.
	h.obs(observe.ExchangeStart, flowA, 0).obs(observe.Acked, flowA, 0.05)
	d.update(at(9.5), []Socket{{Flow: flowA, ClientEnd: true, State: observe.TCPEstablished, Unacked: 300}}, h.c.Observe)
	h.sweep(10)
	h.obs(observe.Answer, flowA, 11)
	// The answer sits in the receive queue.
	d.update(at(12), []Socket{{Flow: flowA, ClientEnd: true, State: observe.TCPEstablished, RQueue: 4000}}, h.c.Observe)
	h.sweep(20).sweep(21)
	d.update(at(22), []Socket{{Flow: flowA, ClientEnd: true, State: observe.TCPEstablished}}, h.c.Observe)
	h.wantKinds("stall:unacked stall_end:unacked:answered stall:unread stall_end:unread:answered")
}

// On loopback sock_diag shows both ends: the server end's queue (a
// request the server has not read yet) is no unread answer.
func TestServerEndQueueIsNotUnread(t *testing.T) {
	h := newHarness(t)
	d := newDiagTracker(false)
	h.obs(observe.ExchangeStart, flowA, 0).obs(observe.Answer, flowA, 0.1)
	d.update(at(1), []Socket{{Flow: flowA, ClientEnd: false, State: observe.TCPEstablished, RQueue: 300}}, h.c.Observe)
	h.sweep(12)
	h.wantKinds("")
}

// An idle socket's empty queues are told once, then again only after a
// keepalive; busy or changing queues are told at every poll.
func TestDiagTrackerTellsIdleQueuesSeldom(t *testing.T) {
	d := newDiagTracker(false)
	infos := 0
	count := func(o observe.Observation) {
		if o.Kind == observe.SocketInfo {
			infos++
		}
	}
	idle := []Socket{{Flow: flowA, ClientEnd: true, State: observe.TCPEstablished}}
	busy := []Socket{{Flow: flowA, ClientEnd: true, State: observe.TCPEstablished, RQueue: 10}}
	for _, step := range []struct {
		at      float64
		sockets []Socket
		want    int
	}{
		{0, idle, 1},  // first seen
		{3, idle, 1},  // unchanged and empty
		{6, busy, 2},  // changed
		{9, busy, 3},  // a queue that holds bytes, every poll
		{12, idle, 4}, // emptied
		{15, idle, 4}, // unchanged
		{72, idle, 5}, // a keepalive
		{75, idle, 5}, // and quiet again
	} {
		d.update(at(step.at), step.sockets, count)
		if infos != step.want {
			t.Fatalf("at %v s: %d socket infos told, want %d", step.at, infos, step.want)
		}
	}
}

// As the source, sock_diag tells retransmits from the sockets' counters:
// what grew between polls, not what happened before the first one.
func TestDiagTrackerRetransmits(t *testing.T) {
	for _, source := range []bool{true, false} {
		h := newHarness(t)
		d := newDiagTracker(source)
		for i, n := range []uint32{2, 2, 5} {
			d.update(at(float64(i)), []Socket{{Flow: flowA, ClientEnd: true, State: observe.TCPEstablished, Retrans: n}},
				h.c.Observe)
		}
		want := 0.0
		if source {
			want = 3 // beside the kernel probes, the wire tells them
		}
		h.wantMetric("icapwatch_retransmits_total", want, map[string]string{"server": srvA.String()})
	}
}
