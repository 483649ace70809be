package bpf

import (
	"encoding/binary"
	"reflect"
	"slices"
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

// TestVariantsNameAlike: the loader holds either object in the baseline's
// types (objects), which works because both name their maps and programs
// alike.
func TestVariantsNameAlike(t *testing.T) {
	tags := func(v any) []string {
		var out []string
		typ := reflect.TypeOf(v)
		for i := range typ.NumField() {
			out = append(out, typ.Field(i).Name+" "+typ.Field(i).Tag.Get("ebpf"))
		}
		return out
	}
	for _, pair := range [][2]any{
		{icapwatchPrograms{}, icapwatchRingbufPrograms{}},
		{icapwatchMaps{}, icapwatchRingbufMaps{}},
	} {
		if base, ring := tags(pair[0]), tags(pair[1]); !slices.Equal(base, ring) {
			t.Errorf("%T and %T differ:\n%v\n%v", pair[0], pair[1], base, ring)
		}
	}
	if _, _, err := loadSpec(OutputRing); err != nil {
		t.Error(err)
	}
}
