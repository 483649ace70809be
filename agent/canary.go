package agent

import (
	"net/netip"
	"sync"
	"time"

	"github.com/icapwatch/icapwatch/agent/observe"
	"github.com/icapwatch/icapwatch/icap"
)

// CanaryObserver reports what the canary's own client knows as
// observations: its connections (so their flows are labeled
// client="icapwatch"), its own gap for each answer (checked against the
// kernel's), and idle closes by the server (the server's real idle
// timeout). feed is called from the client's goroutines: it must hand the
// observation over to the correlator's goroutine.
func CanaryObserver(feed func(observe.Observation)) *icap.Observer {
	var mu sync.Mutex
	written := map[uint64]time.Time{} // connection ID: the request's first byte
	flow := func(ci icap.ConnInfo) observe.Flow { return observe.Flow{Client: ci.Local, Server: ci.Remote} }
	return &icap.Observer{
		ConnOpened: func(ci icap.ConnInfo) {
			feed(observe.Observation{Kind: observe.CanaryConn, Source: observe.SourceCanary, Time: ci.Opened, Flow: flow(ci)})
		},
		RequestWritten: func(ci icap.ConnInfo, ri icap.RequestInfo) {
			mu.Lock()
			written[ci.ID] = ri.Start
			mu.Unlock()
		},
		FirstByte: func(ci icap.ConnInfo, at time.Time) {
			mu.Lock()
			start, ok := written[ci.ID]
			delete(written, ci.ID)
			mu.Unlock()
			if ok {
				feed(observe.Observation{Kind: observe.CanaryAnswer, Source: observe.SourceCanary, Time: at,
					Flow: flow(ci), Gap: at.Sub(start)})
			}
		},
		ConnClosed: func(ci icap.ConnInfo, cl icap.CloseInfo) {
			mu.Lock()
			delete(written, ci.ID)
			mu.Unlock()
			if cl.Initiator == "server" && cl.Idle && cl.IdleAge > 0 {
				feed(observe.Observation{Kind: observe.ServerIdle, Source: observe.SourceCanary, Time: time.Now(),
					Flow: flow(ci), IdleTimeout: cl.IdleAge})
			}
		},
	}
}

// CanaryOptions is the observation of a server's OPTIONS answer.
func CanaryOptions(server netip.AddrPort, opts icap.Options, at time.Time) observe.Observation {
	return observe.Observation{Kind: observe.ServerOptions, Source: observe.SourceCanary, Time: at,
		Flow: observe.Flow{Server: server}, MaxConnections: opts.MaxConnections}
}
