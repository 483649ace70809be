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
	State     int
	RQueue    uint32
	Unacked   uint32
	Retrans   uint32
	// Times since the last data sent and received, and the last ACK
	// received (tcp_info, millisecond resolution).
	SinceSent, SinceRecv, SinceAckRecv time.Duration
	Inode                              uint32
	PID                                uint32
	Comm                               string
}

// diagTracker turns successive sock_diag snapshots into observations.
// With the kernel source it only seeds flows and reports queues; as the
// fallback source it also finds exchanges, with the resolution of the
// polling interval: a request is open while this host sent data more
// recently than it received any.
type diagTracker struct {
	exchanges bool // the fallback source: derive exchanges too
	known     map[observe.Flow]*diagState
}

type diagState struct {
	open, acked bool
	seen        bool // in the current snapshot
	dir         observe.Direction
}

func newDiagTracker(exchanges bool) *diagTracker {
	return &diagTracker{exchanges: exchanges, known: map[observe.Flow]*diagState{}}
}

// update compares a snapshot taken at now with the previous ones and
// hands out what changed.
func (d *diagTracker) update(now time.Time, sockets []Socket, out func(observe.Observation)) {
	for _, st := range d.known {
		st.seen = false
	}
	for _, s := range sockets {
		dir := observe.ToClient // this host holds the server end
		if s.ClientEnd {
			dir = observe.ToServer
		}
		base := observe.Observation{Source: observe.SourceSockDiag, Time: now, Flow: s.Flow, Dir: dir}
		st, ok := d.known[s.Flow]
		if !ok {
			st = &diagState{dir: dir}
			d.known[s.Flow] = st
			o := base
			o.Kind, o.OldState, o.NewState, o.PID, o.Comm = observe.State, 0, s.State, s.PID, s.Comm
			o.Ref = now.Add(-min(s.SinceSent, s.SinceRecv))
			out(o)
		}
		st.seen = true
		info := base
		info.Kind, info.RQueue, info.Unacked, info.Retrans = observe.SocketInfo, s.RQueue, s.Unacked, s.Retrans
		out(info)
		if !d.exchanges || !s.ClientEnd {
			continue
		}
		open := s.SinceSent < s.SinceRecv
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
	for flow, st := range d.known {
		if !st.seen {
			delete(d.known, flow)
			out(observe.Observation{Kind: observe.State, Source: observe.SourceSockDiag, Time: now,
				Flow: flow, Dir: st.dir, NewState: observe.TCPClose})
		}
	}
}
