package bpf

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net/netip"
	"testing"
	"time"
)

// Short names for the C enums' values that the tests use, in the types of
// Event's fields. bpf2go generated the values from icapwatch.h.
const (
	evExchangeStart = uint8(icapwatchEventTypeEV_EXCHANGE_START)
	evAcked         = uint8(icapwatchEventTypeEV_ACKED)
	evAnswer        = uint8(icapwatchEventTypeEV_ANSWER)
	evFIN           = uint8(icapwatchEventTypeEV_FIN)
	evRST           = uint8(icapwatchEventTypeEV_RST)
	evState         = uint8(icapwatchEventTypeEV_STATE)

	dirToServer  = uint8(icapwatchDirectionDIR_TO_SERVER)
	dirToClient  = uint8(icapwatchDirectionDIR_TO_CLIENT)
	hookIngress  = uint8(icapwatchHookHOOK_INGRESS)
	phaseRequest = uint8(icapwatchPhasePHASE_REQUEST)

	flagMaybeTicket = uint32(icapwatchEventFlagEVF_MAYBE_TICKET)
	flagTLS13       = uint32(icapwatchEventFlagEVF_TLS13)
)

// TCP states (include/net/tcp_states.h) the tests look for.
const (
	tcpEstablished = 1
	tcpSynSent     = 2
	tcpClose       = 7
)

func TestDecodeEvent(t *testing.T) {
	b := make([]byte, EventSize)
	le := binary.LittleEndian
	le.PutUint64(b[offTsNs:], 5e9)
	le.PutUint64(b[offRefNs:], 4e9)
	le.PutUint64(b[offSkaddr:], 0xffff888012345678)
	copy(b[offClient:], []byte{192, 0, 2, 1})
	copy(b[offServer:], []byte{192, 0, 2, 2})
	le.PutUint16(b[offClientPort:], 40000)
	le.PutUint16(b[offServerPort:], 11344)
	b[offFamily], b[offType], b[offDir], b[offHook] = afInet, evAnswer, dirToClient, hookIngress
	le.PutUint32(b[offFlags:], flagTLS13|flagMaybeTicket)
	le.PutUint32(b[offIfindex:], 3)
	le.PutUint32(b[offSeq:], 1000)
	le.PutUint32(b[offAck:], 2000)
	le.PutUint32(b[offLen:], 305)
	le.PutUint32(b[offBytes:], 185)
	b[offRecordType], b[offPhase] = 0x17, phaseRequest
	le.PutUint16(b[offRecordLen:], 300)
	le.PutUint32(b[offOldState:], tcpSynSent)
	le.PutUint32(b[offNewState:], tcpEstablished)
	le.PutUint32(b[offPid:], 4121)
	copy(b[offComm:], "scanapp")

	e, err := DecodeEvent(b)
	if err != nil {
		t.Fatal(err)
	}
	want := Event{
		Type: evAnswer, Mono: 5 * time.Second, RefMono: 4 * time.Second,
		Client: netip.MustParseAddrPort("192.0.2.1:40000"), Server: netip.MustParseAddrPort("192.0.2.2:11344"),
		Dir: dirToClient, Hook: hookIngress, Flags: flagTLS13 | flagMaybeTicket, Ifindex: 3,
		Seq: 1000, Ack: 2000, Len: 305, Bytes: 185, RecordType: 0x17, RecordLen: 300,
		Phase: phaseRequest, OldState: tcpSynSent, NewState: tcpEstablished, PID: 4121,
		Comm: "scanapp", Sock: 0xffff888012345678,
	}
	if e != want {
		t.Errorf("got  %+v\nwant %+v", e, want)
	}
	if got := EncodeEvent(want); !bytes.Equal(got, b) {
		t.Errorf("EncodeEvent(%+v):\n got  %x\n want %x", want, got, b)
	}

	b[offFamily] = afInet6
	copy(b[offClient:], netip.MustParseAddr("2001:db8::1").AsSlice())
	if e, _ := DecodeEvent(b); e.Client.Addr() != netip.MustParseAddr("2001:db8::1") {
		t.Errorf("IPv6 client: %v", e.Client)
	}
	b[offFamily] = 99
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
		// The kernel ends a comm with a NUL within its 16 bytes.
		if again, _ := DecodeEvent(EncodeEvent(e)); err == nil && len(e.Comm) < commLen && again != e {
			t.Fatalf("decoded %+v, encoded and decoded again %+v", e, again)
		}
	})
}
