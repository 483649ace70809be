package bpf

import (
	"encoding/binary"
	"testing"
)

// The hand-written decoder and constants follow the C definitions that
// bpf2go turned into Go.
func TestLayoutMatchesC(t *testing.T) {
	if n := binary.Size(icapwatchEvent{}); n != EventSize {
		t.Errorf("struct event is %d bytes, EventSize %d", n, EventSize)
	}
	for _, c := range []struct {
		got, want uint32
		name      string
	}{
		{uint32(EventTCPRetransmit), uint32(icapwatchEventTypeEV_TCP_RETRANSMIT), "EV_TCP_RETRANSMIT"},
		{uint32(EventAppRead), uint32(icapwatchEventTypeEV_APP_READ), "EV_APP_READ"},
		{uint32(FlagPlain), uint32(icapwatchEventFlagEVF_PLAIN), "EVF_PLAIN"},
		{uint32(FlagAfterTicket), uint32(icapwatchEventFlagEVF_AFTER_TICKET), "EVF_AFTER_TICKET"},
		{uint32(HookKprobe), uint32(icapwatchHookHOOK_KPROBE), "HOOK_KPROBE"},
		{uint32(PhaseRequest), uint32(icapwatchPhasePHASE_REQUEST), "PHASE_REQUEST"},
		{uint32(ToClient), uint32(icapwatchDirectionDIR_TO_CLIENT), "DIR_TO_CLIENT"},
		{uint32(len((&Stats{}).counters())), uint32(icapwatchCounterCNT_MAX), "CNT_MAX (Stats fields)"},
	} {
		if c.got != c.want {
			t.Errorf("%s: Go %d, C %d", c.name, c.got, c.want)
		}
	}
}
