package bpf

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"testing"
	"time"
)

func TestDecodeEvent(t *testing.T) {
	b := make([]byte, EventSize)
	le := binary.LittleEndian
	le.PutUint64(b[0:], 5e9)
	le.PutUint64(b[8:], 4e9)
	le.PutUint64(b[16:], 0xffff888012345678)
	copy(b[24:], []byte{192, 0, 2, 1})
	copy(b[40:], []byte{192, 0, 2, 2})
	le.PutUint16(b[56:], 40000)
	le.PutUint16(b[58:], 11344)
	b[60], b[61], b[62], b[63] = afInet, byte(EventAnswer), byte(ToClient), byte(HookIngress)
	le.PutUint32(b[64:], uint32(FlagTLS13|FlagMaybeTicket))
	le.PutUint32(b[68:], 3)
	le.PutUint32(b[72:], 1000)
	le.PutUint32(b[76:], 2000)
	le.PutUint32(b[80:], 305)
	le.PutUint32(b[84:], 185)
	b[88], b[89] = 0x17, byte(PhaseRequest)
	le.PutUint16(b[90:], 300)
	le.PutUint32(b[92:], uint32(TCPSynSent))
	le.PutUint32(b[96:], uint32(TCPEstablished))
	le.PutUint32(b[100:], 4121)
	copy(b[104:], "scanapp")

	e, err := DecodeEvent(b)
	if err != nil {
		t.Fatal(err)
	}
	want := Event{
		Type: EventAnswer, Mono: 5 * time.Second, RefMono: 4 * time.Second,
		Client: netip.MustParseAddrPort("192.0.2.1:40000"), Server: netip.MustParseAddrPort("192.0.2.2:11344"),
		Dir: ToClient, Hook: HookIngress, Flags: FlagTLS13 | FlagMaybeTicket, Ifindex: 3,
		Seq: 1000, Ack: 2000, Len: 305, Bytes: 185, RecordType: 0x17, RecordLen: 300,
		Phase: PhaseRequest, OldState: TCPSynSent, NewState: TCPEstablished, PID: 4121,
		Comm: "scanapp", Sock: 0xffff888012345678,
	}
	if e != want {
		t.Errorf("got  %+v\nwant %+v", e, want)
	}
	if got := e.Flags.String(); got != "maybe_ticket|tls13" {
		t.Errorf("flags: %q", got)
	}

	b[60] = afInet6
	copy(b[24:], netip.MustParseAddr("2001:db8::1").AsSlice())
	if e, _ := DecodeEvent(b); e.Client.Addr() != netip.MustParseAddr("2001:db8::1") {
		t.Errorf("IPv6 client: %v", e.Client)
	}
	b[60] = 99
	if e, _ := DecodeEvent(b); e.Client.IsValid() {
		t.Errorf("unknown family decoded to %v", e.Client)
	}
	if _, err := DecodeEvent(b[:EventSize-1]); !errors.Is(err, ErrShortEvent) {
		t.Errorf("short sample: %v", err)
	}
}

// FuzzDecodeEvent: samples come from the kernel, but a reader must not
// crash on whatever a buffer hands it.
func FuzzDecodeEvent(f *testing.F) {
	f.Add(make([]byte, EventSize))
	f.Add([]byte{1, 2, 3})
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := DecodeEvent(b)
		if err == nil && len(b) < EventSize {
			t.Fatal("short sample decoded")
		}
		_ = e.Type.String() + e.Flags.String() + e.Phase.String() + e.Hook.String() + e.OldState.String()
	})
}
