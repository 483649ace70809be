package agent

import (
	"time"

	"github.com/icapwatch/icapwatch/agent/observe"
)

// Socket is one TCP socket on a watched port as sock_diag reports it.
type Socket struct {
	Flow observe.Flow
	// ClientEnd: this host holds the client end (the watched port is the
	// remote one).
	ClientEnd bool
	State     observe.TCPState
	RQueue    uint32
	Unacked   uint32
	Retrans   uint32
	// Times since the last data sent and received, and the last ACK
	// received (tcp_info, millisecond resolution).
	SinceSent, SinceRecv, SinceAckRecv time.Duration
	// BytesAcked (the SYN counts one) and BytesReceived tell a fresh
	// connection whose first flight is unanswered.
	BytesAcked, BytesReceived uint64
	Inode                     uint32
	PID                       uint32
	Comm                      string
}

// diagTracker turns successive sock_diag snapshots into observations.
// With the kernel source it seeds flows (a socket's first sight) and
// reports queues: the kernel tells every state change and FIN as it
// happens, and a poll's view of a close, stamped when the poll ran,
// reaches the correlator before the kernel's events of that close, which
// come up to the reader's lag later; taken first, it lost or misdated
// closes. It tells a socket gone only when the next poll still misses
// it, long after the kernel's events of the close arrived: that ends
// flows whose close the kernel's buffer lost, which would otherwise keep
// a stall open. As the fallback source it tells state changes, FINs and
// sockets gone at once, and finds exchanges, with the resolution of the
// polling interval: a request is open while this host sent data more
// recently than it received any.
type diagTracker struct {
	source bool // the fallback source, no kernel probes beside it
	// known holds each socket's state by value: a hundred thousand
	// sockets (twice that on loopback, where both ends are local) made
	// this map a third of the agent's heap with a pointer and an
	// allocation each.
	known map[diagKey]diagState
	poll  uint32 // numbers the snapshots, for diagState.seen
}

// diagKey: on loopback, or between local namespaces, both ends of a flow
// are in the snapshot.
type diagKey struct {
	flow      observe.Flow
	clientEnd bool
}

type diagState struct {
	// The queues last handed out, and when (Unix nanoseconds): an idle
	// socket's unchanged empty queues are told again only once a
	// keepalive.
	infoAt                   int64
	rqueue, unacked, retrans uint32
	seen                     uint32 // the snapshot it was last in
	open, acked              bool
	dir                      observe.Direction
	state                    observe.TCPState
	fin                      [2]bool // FIN inferred from the states: client, server
}

// diagKeepalive: an idle socket's queues are told at least this often,
// which keeps its flow from being taken for gone (well within the
// correlator's idle limit). Telling a hundred thousand idle sockets'
// empty queues at every poll cost most of the agent's time.
const diagKeepalive = time.Minute

// finFrom says which sides have sent a FIN, from one end's state: this
// end's own FIN (FIN_WAIT, TIME_WAIT, CLOSING, LAST_ACK) and the peer's
// (CLOSE_WAIT, LAST_ACK, TIME_WAIT, CLOSING).
func finFrom(state observe.TCPState) (own, peer bool) {
	switch state {
	case observe.TCPFinWait1, observe.TCPFinWait2:
		return true, false
	case observe.TCPTimeWait, observe.TCPClosing, observe.TCPLastAck:
		return true, true
	case observe.TCPCloseWait:
		return false, true
	}
	return false, false
}

func newDiagTracker(source bool) *diagTracker {
	return &diagTracker{source: source, known: map[diagKey]diagState{}}
}

// update compares a snapshot taken at now with the previous ones and
// hands out what changed.
func (d *diagTracker) update(now time.Time, sockets []Socket, out func(observe.Observation)) {
	d.poll++
	for i := range sockets {
		key := diagKey{sockets[i].Flow, sockets[i].ClientEnd}
		st, ok := d.known[key]
		d.socket(now, &sockets[i], &st, ok, out)
		st.seen = d.poll
		d.known[key] = st
	}
	for key, st := range d.known {
		if st.seen == d.poll || !d.source && st.seen == d.poll-1 {
			continue
		}
		delete(d.known, key)
		o := observe.Observation{Kind: observe.State, Source: observe.SourceSockDiag, Time: now,
			Flow: key.flow, Dir: st.dir, OldState: st.state, NewState: observe.TCPClose}
		if !d.source {
			o.Flags = observe.Lost
		}
		out(o)
	}
}

// socket hands out what changed of one socket since its state st, which
// it updates; ok says whether the socket was in an earlier snapshot.
func (d *diagTracker) socket(now time.Time, s *Socket, st *diagState, ok bool, out func(observe.Observation)) {
	dir := observe.ToClient // this host holds the server end
	if s.ClientEnd {
		dir = observe.ToServer
	}
	base := observe.Observation{Source: observe.SourceSockDiag, Time: now, Flow: s.Flow, Dir: dir}
	if !ok {
		st.dir = dir
		o := base
		o.Kind, o.OldState, o.NewState, o.PID, o.Comm = observe.State, 0, s.State, s.PID, s.Comm
		o.Ref = now.Add(-min(s.SinceSent, s.SinceRecv))
		out(o)
	}
	if st.state != s.State && !d.source {
		st.state = s.State // the kernel tells the change
	}
	if st.state != s.State {
		if st.state != 0 {
			o := base
			o.Kind, o.OldState, o.NewState = observe.State, st.state, s.State
			out(o)
		}
		st.state = s.State
		// A FIN seen through the states, with the polling resolution.
		own, peer := finFrom(s.State)
		ownSide, peerSide := observe.ToServer, observe.ToClient // this end is the client
		if !s.ClientEnd {
			ownSide, peerSide = observe.ToClient, observe.ToServer
		}
		for _, f := range []struct {
			sent bool
			dir  observe.Direction
		}{{peer, peerSide}, {own, ownSide}} {
			if f.sent && !st.fin[f.dir] {
				st.fin[f.dir] = true
				o := base
				o.Kind, o.Dir = observe.FIN, f.dir
				out(o)
			}
		}
	}
	if d.source && ok && s.Retrans > st.retrans {
		// As the wire would show them: this end sent segments again.
		// The count at first sight happened before we looked.
		o := base
		o.Kind, o.Retrans = observe.Retransmit, s.Retrans-st.retrans
		out(o)
	}
	if s.RQueue != 0 || s.Unacked != 0 || s.RQueue != st.rqueue || s.Unacked != st.unacked ||
		s.Retrans != st.retrans || time.Duration(now.UnixNano()-st.infoAt) >= diagKeepalive {
		st.rqueue, st.unacked, st.retrans, st.infoAt = s.RQueue, s.Unacked, s.Retrans, now.UnixNano()
		info := base
		info.Kind, info.RQueue, info.Unacked, info.Retrans = observe.SocketInfo, s.RQueue, s.Unacked, s.Retrans
		out(info)
	}
	if !d.source || !s.ClientEnd {
		return
	}
	// Sent more recently than received; or, on a fresh connection, sent
	// and nothing received yet (both timers start at the handshake).
	open := s.SinceSent < s.SinceRecv ||
		s.BytesReceived == 0 && s.BytesAcked+uint64(s.Unacked) > 1 && s.SinceSent <= s.SinceRecv
	switch {
	case open && !st.open:
		st.open, st.acked = true, false
		o := base
		o.Kind, o.Phase, o.Ref = observe.ExchangeStart, observe.PhaseRequest, now.Add(-s.SinceRecv)
		o.Time = now.Add(-s.SinceSent)
		out(o)
	case !open && st.open:
		st.open = false
		o := base
		o.Kind, o.Dir, o.Phase = observe.Answer, observe.ToClient, observe.PhaseRequest
		o.Time = now.Add(-s.SinceRecv)
		out(o)
	}
	if st.open && !st.acked && s.Unacked == 0 {
		st.acked = true
		o := base
		o.Kind, o.Dir, o.Phase = observe.Acked, observe.ToClient, observe.PhaseRequest
		o.Time = now.Add(-s.SinceAckRecv)
		out(o)
	}
}
