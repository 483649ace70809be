package agent

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/icapwatch/icapwatch/agent/observe"
	"github.com/icapwatch/icapwatch/bpf"
)

// TestKernelEnumsMatchObserve: the kernel writes the values of the C enums
// of icapwatch.h, and kernelObservation converts them as they are, so
// every observe constant that mirrors a C enumerator must have its value,
// and every C enumerator must have its observe constant.
func TestKernelEnumsMatchObserve(t *testing.T) {
	enums, err := bpf.KernelEnums()
	if errors.Is(err, bpf.ErrNotSupported) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	mirrors := map[string]map[string]uint64{
		"event_type": {
			"EV_EXCHANGE_START": uint64(observe.ExchangeStart), "EV_ACKED": uint64(observe.Acked),
			"EV_ANSWER": uint64(observe.Answer), "EV_TLS_ALERT": uint64(observe.TLSAlert),
			"EV_FIN": uint64(observe.FIN), "EV_RST": uint64(observe.RST),
			"EV_RETRANSMIT": uint64(observe.Retransmit), "EV_STATE": uint64(observe.State),
			"EV_TCP_RETRANSMIT": uint64(observe.TCPRetransmit), "EV_APP_WRITE": uint64(observe.AppWrite),
			"EV_APP_READ": uint64(observe.AppRead), "EV_APP_WRITE_FAILED": uint64(observe.AppWriteFailed),
		},
		"event_flag": {
			"EVF_PROBABLE": uint64(observe.Probable), "EVF_OPEN_EXCHANGE": uint64(observe.OpenExchange),
			"EVF_MAYBE_TICKET": uint64(observe.MaybeTicket), "EVF_AFTER_TICKET": uint64(observe.AfterTicket),
			"EVF_MIDSTREAM": uint64(observe.Midstream), "EVF_SYN": uint64(observe.SYN),
			"EVF_TLS13": uint64(observe.TLS13), "EVF_PLAIN": uint64(observe.Plain),
		},
		"direction": {"DIR_TO_SERVER": uint64(observe.ToServer), "DIR_TO_CLIENT": uint64(observe.ToClient)},
		"phase": {"PHASE_NONE": uint64(observe.PhaseNone), "PHASE_HANDSHAKE": uint64(observe.PhaseHandshake),
			"PHASE_REQUEST": uint64(observe.PhaseRequest)},
	}
	for enum, want := range mirrors {
		c, ok := enums[enum]
		if !ok {
			t.Errorf("the kernel object has no enum %s", enum)
			continue
		}
		for name, v := range want {
			if cv, ok := c[name]; !ok {
				t.Errorf("enum %s has no %s", enum, name)
			} else if cv != v {
				t.Errorf("%s: kernel %#x, observe %#x", name, cv, v)
			}
		}
		for name := range c {
			if _, ok := want[name]; !ok {
				t.Errorf("%s (enum %s) has no observe constant", name, enum)
			}
		}
	}

	// Every kernel event type is the observe kind of the same name, and
	// every flag fits observe.Flags.
	for name, v := range enums["event_type"] {
		kind := kernelObservation(bpf.Event{Type: uint8(v)}).Kind
		if want := strings.ToLower(strings.TrimPrefix(name, "EV_")); kind.String() != want {
			t.Errorf("event %s (%d) becomes kind %s, want %s", name, v, kind, want)
		}
	}
	for name, v := range enums["event_flag"] {
		if got := kernelObservation(bpf.Event{Flags: uint32(v)}).Flags; uint64(got) != v {
			t.Errorf("flag %s (%#x) becomes %#x", name, v, uint64(got))
		}
	}
}

func TestKernelObservation(t *testing.T) {
	now := time.Date(2026, 11, 23, 7, 25, 39, 750e6, time.UTC)
	o := kernelObservation(bpf.Event{Type: uint8(observe.Answer), Time: now, Mono: 400 * time.Second, RefMono: 400*time.Second - 293324*time.Millisecond})
	if want := now.Add(-293324 * time.Millisecond); !o.Ref.Equal(want) {
		t.Errorf("Ref %v, want %v", o.Ref, want)
	}
}
