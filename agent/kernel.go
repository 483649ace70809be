package agent

import (
	"github.com/icapwatch/icapwatch/agent/observe"
	"github.com/icapwatch/icapwatch/bpf"
)

// kernelObservation turns a kernel event into the model. It lives on the
// agent's side so that bpf stays free of the agent's packages. The kernel
// writes the values of its C enums, which are observe's own values for
// kinds, flags, directions and phases (TestKernelEnumsMatchObserve holds
// them together), and the kernel's TCP state numbers: plain conversions.
func kernelObservation(e bpf.Event) observe.Observation {
	o := observe.Observation{
		Kind: observe.Kind(e.Type), Source: observe.SourceKernel, Time: e.Time,
		Flow: observe.Flow{Client: e.Client, Server: e.Server},
		Dir:  observe.Direction(e.Dir), Phase: observe.Phase(e.Phase), Flags: observe.Flags(e.Flags),
		Seq: e.Seq, Ack: e.Ack, Len: e.Len, Bytes: e.Bytes,
		OldState: observe.TCPState(e.OldState), NewState: observe.TCPState(e.NewState),
		PID: e.PID, Comm: observe.Printable(e.Comm), Sock: e.Sock,
	}
	if e.RefMono != 0 {
		o.Ref = e.Time.Add(e.RefMono - e.Mono)
	}
	return o
}
