package agent

import (
	"github.com/icapwatch/icapwatch/agent/observe"
	"github.com/icapwatch/icapwatch/bpf"
)

var kernelKinds = [...]observe.Kind{
	bpf.EventExchangeStart: observe.ExchangeStart, bpf.EventAcked: observe.Acked,
	bpf.EventAnswer: observe.Answer, bpf.EventTLSAlert: observe.TLSAlert, bpf.EventFIN: observe.FIN,
	bpf.EventRST: observe.RST, bpf.EventRetransmit: observe.Retransmit, bpf.EventState: observe.State,
	bpf.EventTCPRetransmit: observe.TCPRetransmit, bpf.EventAppWrite: observe.AppWrite,
	bpf.EventAppRead: observe.AppRead,
}

// kernelObservation turns a kernel event into the model. It lives on the
// agent's side so that bpf stays free of the agent's packages. The flag
// bits are the same in both (a test holds them together).
func kernelObservation(e bpf.Event) observe.Observation {
	var kind observe.Kind
	if int(e.Type) < len(kernelKinds) {
		kind = kernelKinds[e.Type]
	}
	o := observe.Observation{
		Kind: kind, Source: observe.SourceKernel, Time: e.Time,
		Flow: observe.Flow{Client: e.Client, Server: e.Server},
		Dir:  observe.Direction(e.Dir), Phase: observe.Phase(e.Phase), Flags: observe.Flags(e.Flags),
		Seq: e.Seq, Ack: e.Ack, Len: e.Len, Bytes: e.Bytes,
		OldState: observe.TCPState(e.OldState), NewState: observe.TCPState(e.NewState), PID: e.PID, Comm: e.Comm, Sock: e.Sock,
	}
	if e.RefMono != 0 {
		o.Ref = e.Time.Add(e.RefMono - e.Mono)
	}
	return o
}
