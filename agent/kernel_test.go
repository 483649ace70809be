package agent

import (
	"testing"
	"time"

	"github.com/icapwatch/icapwatch/agent/observe"
	"github.com/icapwatch/icapwatch/bpf"
)

func TestKernelObservation(t *testing.T) {
	for _, c := range []struct {
		k bpf.EventFlag
		o observe.Flags
	}{{bpf.FlagProbable, observe.Probable}, {bpf.FlagOpenExchange, observe.OpenExchange},
		{bpf.FlagMaybeTicket, observe.MaybeTicket}, {bpf.FlagAfterTicket, observe.AfterTicket},
		{bpf.FlagMidstream, observe.Midstream}, {bpf.FlagSYN, observe.SYN}, {bpf.FlagTLS13, observe.TLS13},
		{bpf.FlagPlain, observe.Plain}} {
		if uint32(c.k) != uint32(c.o) {
			t.Errorf("flag %s: kernel %#x, model %#x", c.k, uint32(c.k), uint32(c.o))
		}
	}
	for typ := bpf.EventType(1); int(typ) < len(kernelKinds); typ++ {
		if got := kernelObservation(bpf.Event{Type: typ}).Kind.String(); got != typ.String() {
			t.Errorf("event %s becomes %s", typ, got)
		}
	}
	now := time.Date(2026, 11, 23, 7, 25, 39, 750e6, time.UTC)
	o := kernelObservation(bpf.Event{Type: bpf.EventAnswer, Time: now, Mono: 400 * time.Second, RefMono: 400*time.Second - 293324*time.Millisecond})
	if want := now.Add(-293324 * time.Millisecond); !o.Ref.Equal(want) {
		t.Errorf("Ref %v, want %v", o.Ref, want)
	}
}
