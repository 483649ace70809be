package bpf

import (
	"testing"
	"time"

	"github.com/icapwatch/icapwatch/agent/observe"
)

func TestObservation(t *testing.T) {
	for _, c := range []struct {
		k EventFlag
		o observe.Flags
	}{{FlagProbable, observe.Probable}, {FlagOpenExchange, observe.OpenExchange},
		{FlagMaybeTicket, observe.MaybeTicket}, {FlagAfterTicket, observe.AfterTicket},
		{FlagMidstream, observe.Midstream}, {FlagSYN, observe.SYN}, {FlagTLS13, observe.TLS13},
		{FlagPlain, observe.Plain}} {
		if uint32(c.k) != uint32(c.o) {
			t.Errorf("flag %s: kernel %#x, model %#x", c.k, uint32(c.k), uint32(c.o))
		}
	}
	for typ := EventType(1); typ < eventTypeLimit; typ++ {
		if got := (Event{Type: typ}).Observation().Kind.String(); got != typ.String() {
			t.Errorf("event %s becomes %s", typ, got)
		}
	}
	now := time.Date(2026, 11, 23, 7, 25, 39, 750e6, time.UTC)
	o := Event{Type: EventAnswer, Time: now, Mono: 400 * time.Second, RefMono: 400*time.Second - 293324*time.Millisecond}.Observation()
	if want := now.Add(-293324 * time.Millisecond); !o.Ref.Equal(want) {
		t.Errorf("Ref %v, want %v", o.Ref, want)
	}
}
