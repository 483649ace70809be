package bpf

import "github.com/icapwatch/icapwatch/agent/observe"

var observeKinds = [eventTypeLimit]observe.Kind{
	EventExchangeStart: observe.ExchangeStart, EventAcked: observe.Acked,
	EventAnswer: observe.Answer, EventTLSAlert: observe.TLSAlert, EventFIN: observe.FIN,
	EventRST: observe.RST, EventRetransmit: observe.Retransmit, EventState: observe.State,
	EventTCPRetransmit: observe.TCPRetransmit, EventAppWrite: observe.AppWrite,
	EventAppRead: observe.AppRead,
}

// Observation turns a kernel event into the correlator's model. The flag
// bits are the same in both (a test holds them together).
func (e Event) Observation() observe.Observation {
	var kind observe.Kind
	if int(e.Type) < len(observeKinds) {
		kind = observeKinds[e.Type]
	}
	o := observe.Observation{
		Kind: kind, Source: observe.SourceKernel, Time: e.Time,
		Flow: observe.Flow{Client: e.Client, Server: e.Server},
		Dir:  observe.Direction(e.Dir), Phase: observe.Phase(e.Phase), Flags: observe.Flags(e.Flags),
		Seq: e.Seq, Ack: e.Ack, Len: e.Len, Bytes: e.Bytes,
		OldState: int(e.OldState), NewState: int(e.NewState), PID: e.PID, Comm: e.Comm, Sock: e.Sock,
	}
	if e.RefMono != 0 {
		o.Ref = e.Time.Add(e.RefMono - e.Mono)
	}
	return o
}
