package bpf

import (
	"encoding/binary"
	"reflect"
	"slices"
	"testing"

	"github.com/cilium/ebpf/btf"
)

// TestEventLayout: DecodeEvent reads every member of struct event where
// the compiled baseline object has it, at the member's size, and nothing
// else.
func TestEventLayout(t *testing.T) {
	// What the decoder reads: the offset constant it reads through, and
	// how many bytes it reads there.
	decoder := map[string]struct{ off, size int }{
		"ts_ns":       {offTsNs, 8},
		"ref_ns":      {offRefNs, 8},
		"skaddr":      {offSkaddr, 8},
		"client":      {offClient, addrLen},
		"server":      {offServer, addrLen},
		"client_port": {offClientPort, 2},
		"server_port": {offServerPort, 2},
		"family":      {offFamily, 1},
		"type":        {offType, 1},
		"dir":         {offDir, 1},
		"hook":        {offHook, 1},
		"flags":       {offFlags, 4},
		"ifindex":     {offIfindex, 4},
		"seq":         {offSeq, 4},
		"ack":         {offAck, 4},
		"len":         {offLen, 4},
		"bytes":       {offBytes, 4},
		"record_type": {offRecordType, 1},
		"phase":       {offPhase, 1},
		"record_len":  {offRecordLen, 2},
		"old_state":   {offOldState, 4},
		"new_state":   {offNewState, 4},
		"pid":         {offPid, 4},
		"comm":        {offComm, commLen},
	}
	spec, err := loadIcapwatch()
	if err != nil {
		t.Fatal(err)
	}
	var event *btf.Struct
	if err := spec.Types.TypeByName("event", &event); err != nil {
		t.Fatal(err)
	}
	if event.Size != EventSize {
		t.Errorf("struct event is %d bytes, EventSize %d", event.Size, EventSize)
	}
	if n := binary.Size(icapwatchEvent{}); n != EventSize {
		t.Errorf("bpf2go's icapwatchEvent is %d bytes, EventSize %d", n, EventSize)
	}
	seen := map[string]bool{}
	for _, m := range event.Members {
		seen[m.Name] = true
		d, ok := decoder[m.Name]
		if !ok {
			t.Errorf("struct event.%s: the decoder does not read it", m.Name)
			continue
		}
		size, err := btf.Sizeof(m.Type)
		if err != nil {
			t.Fatalf("struct event.%s: %v", m.Name, err)
		}
		if m.BitfieldSize != 0 || m.Offset%8 != 0 {
			t.Errorf("struct event.%s: a bit field, which the decoder cannot read", m.Name)
		}
		if off := int(m.Offset / 8); off != d.off || size != d.size {
			t.Errorf("struct event.%s: %d bytes at offset %d in the object, the decoder reads %d at %d",
				m.Name, size, off, d.size, d.off)
		}
	}
	for name := range decoder {
		if !seen[name] {
			t.Errorf("the decoder reads %s, which struct event does not have", name)
		}
	}
}

// TestCountersMatchC: Stats has a field of its own for every kernel
// counter (there are CNT_MAX).
func TestCountersMatchC(t *testing.T) {
	seen := map[*uint64]bool{}
	for i, f := range (&Stats{}).counters() {
		if f == nil || seen[f] {
			t.Errorf("counter %d of enum counter has no Stats field of its own", i)
		}
		seen[f] = true
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
