package bpf

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"time"
)

// Event is one kernel event, decoded. Times are on the kernel's monotonic
// clock (bpf_ktime_get_ns); Time is the wall-clock equivalent, set by the
// reader.
//
// Type, Dir, Hook, Flags and Phase are the values of enum event_type,
// direction, hook, event_flag (bits) and phase in icapwatch.h, as the
// kernel wrote them, and OldState and NewState are Linux TCP states
// (include/net/tcp_states.h). This package gives them no Go names: the
// agent's event model, agent/observe, names them, and a test there holds
// its values to the C enums (KernelEnums).
type Event struct {
	Type       uint8 // the value of enum event_type
	Time       time.Time
	Mono       time.Duration // when it happened
	RefMono    time.Duration // exchange start (acked, answer), previous data (exchange start), 0 if none
	Client     netip.AddrPort
	Server     netip.AddrPort
	Dir        uint8  // the value of enum direction: the way the segment went
	Hook       uint8  // the value of enum hook: where the event came from
	Flags      uint32 // enum event_flag bits
	Ifindex    uint32
	Seq, Ack   uint32
	Len        uint32 // payload bytes of the segment (app bytes for kprobes)
	Bytes      uint32 // request bytes of the exchange so far
	RecordType uint8  // first payload byte: the TLS content type
	RecordLen  uint16 // TLS record length at segment start
	Phase      uint8  // the value of enum phase: the exchange's, from the TLS record type at its start
	OldState   int32  // TCP states, for EV_STATE
	NewState   int32
	PID        uint32 // only where the kernel runs in the owner's context
	Comm       string
	Sock       uint64 // struct sock address: joins tracepoint and kprobe events
}

// Where DecodeEvent reads each member of struct event (icapwatch.h), in
// bytes from its start, named after the member. TestEventLayout holds each
// one to the compiled object's BTF.
const (
	offTsNs       = 0
	offRefNs      = 8
	offSkaddr     = 16
	offClient     = 24
	offServer     = 40
	offClientPort = 56
	offServerPort = 58
	offFamily     = 60
	offType       = 61
	offDir        = 62
	offHook       = 63
	offFlags      = 64
	offIfindex    = 68
	offSeq        = 72
	offAck        = 76
	offLen        = 80
	offBytes      = 84
	offRecordType = 88
	offPhase      = 89
	offRecordLen  = 90
	offOldState   = 92
	offNewState   = 96
	offPid        = 100
	offComm       = 104

	addrLen = 16 // client, server: IPv4 in the first four bytes
	commLen = 16 // TASK_COMM_LEN
)

// EventSize is the size of struct event in bytes.
const EventSize = 120

// ErrShortEvent is returned by DecodeEvent for a sample smaller than EventSize.
var ErrShortEvent = errors.New("bpf: short event sample")

// DecodeEvent decodes one struct event as the kernel wrote it (little endian).
func DecodeEvent(b []byte) (Event, error) {
	if len(b) < EventSize {
		return Event{}, fmt.Errorf("%w: %d bytes, want %d", ErrShortEvent, len(b), EventSize)
	}
	le := binary.LittleEndian
	e := Event{
		Mono:       time.Duration(le.Uint64(b[offTsNs:])),
		RefMono:    time.Duration(le.Uint64(b[offRefNs:])),
		Sock:       le.Uint64(b[offSkaddr:]),
		Type:       b[offType],
		Dir:        b[offDir],
		Hook:       b[offHook],
		Flags:      le.Uint32(b[offFlags:]),
		Ifindex:    le.Uint32(b[offIfindex:]),
		Seq:        le.Uint32(b[offSeq:]),
		Ack:        le.Uint32(b[offAck:]),
		Len:        le.Uint32(b[offLen:]),
		Bytes:      le.Uint32(b[offBytes:]),
		RecordType: b[offRecordType],
		Phase:      b[offPhase],
		RecordLen:  le.Uint16(b[offRecordLen:]),
		OldState:   int32(le.Uint32(b[offOldState:])),
		NewState:   int32(le.Uint32(b[offNewState:])),
		PID:        le.Uint32(b[offPid:]),
		Comm:       cString(b[offComm : offComm+commLen]),
	}
	e.Client, e.Server = addrPorts(b[offFamily], b[offClient:offClient+addrLen], b[offServer:offServer+addrLen],
		le.Uint16(b[offClientPort:]), le.Uint16(b[offServerPort:]))
	return e, nil
}

// EncodeEvent is the sample the kernel writes for e: DecodeEvent's
// inverse, for tests that give a reader samples. Time is not in a sample,
// and Comm is cut to 15 bytes, as TASK_COMM_LEN cuts it.
func EncodeEvent(e Event) []byte {
	b := make([]byte, EventSize)
	le := binary.LittleEndian
	le.PutUint64(b[offTsNs:], uint64(e.Mono))
	le.PutUint64(b[offRefNs:], uint64(e.RefMono))
	le.PutUint64(b[offSkaddr:], e.Sock)
	b[offType], b[offDir], b[offHook] = e.Type, e.Dir, e.Hook
	le.PutUint32(b[offFlags:], e.Flags)
	le.PutUint32(b[offIfindex:], e.Ifindex)
	le.PutUint32(b[offSeq:], e.Seq)
	le.PutUint32(b[offAck:], e.Ack)
	le.PutUint32(b[offLen:], e.Len)
	le.PutUint32(b[offBytes:], e.Bytes)
	b[offRecordType], b[offPhase] = e.RecordType, e.Phase
	le.PutUint16(b[offRecordLen:], e.RecordLen)
	le.PutUint32(b[offOldState:], uint32(e.OldState))
	le.PutUint32(b[offNewState:], uint32(e.NewState))
	le.PutUint32(b[offPid:], e.PID)
	copy(b[offComm:offComm+commLen-1], e.Comm)
	switch {
	case e.Client.Addr().Is4() && e.Server.Addr().Is4():
		b[offFamily] = afInet
	case e.Client.Addr().Is6() && e.Server.Addr().Is6():
		b[offFamily] = afInet6
	}
	if b[offFamily] != 0 {
		copy(b[offClient:offClient+addrLen], e.Client.Addr().AsSlice())
		copy(b[offServer:offServer+addrLen], e.Server.Addr().AsSlice())
		le.PutUint16(b[offClientPort:], e.Client.Port())
		le.PutUint16(b[offServerPort:], e.Server.Port())
	}
	return b
}

func cString(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return string(b)
}

// addrPorts builds the client and server endpoints; an unknown family
// leaves them invalid.
func addrPorts(family uint8, client, server []byte, cport, sport uint16) (netip.AddrPort, netip.AddrPort) {
	switch family {
	case afInet:
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte(client[:4])), cport),
			netip.AddrPortFrom(netip.AddrFrom4([4]byte(server[:4])), sport)
	case afInet6:
		return netip.AddrPortFrom(netip.AddrFrom16([16]byte(client)), cport),
			netip.AddrPortFrom(netip.AddrFrom16([16]byte(server)), sport)
	}
	return netip.AddrPort{}, netip.AddrPort{}
}

const (
	afInet  = 2
	afInet6 = 10
)
