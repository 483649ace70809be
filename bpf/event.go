package bpf

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/icapwatch/icapwatch/agent/observe"
)

// EventType says what an Event reports. The values are those of enum
// event_type in icapwatch.h.
type EventType uint8

const (
	EventExchangeStart  EventType = 1  // the client spoke first after the server, or first on the flow
	EventAcked          EventType = 2  // the server's TCP ACKed every request byte
	EventAnswer         EventType = 3  // the server's first byte after a request
	EventTLSAlert       EventType = 4  // a TLS alert record, or a probable TLS 1.3 close_notify
	EventFIN            EventType = 5  // a FIN, from Dir's sender
	EventRST            EventType = 6  // a RST, from Dir's sender
	EventRetransmit     EventType = 7  // a data segment (or a SYN) seen again on the wire
	EventState          EventType = 8  // sock:inet_sock_set_state
	EventTCPRetransmit  EventType = 9  // tcp:tcp_retransmit_skb
	EventAppWrite       EventType = 10 // kprobe tcp_sendmsg: the application wrote
	EventAppRead        EventType = 11 // kprobe tcp_cleanup_rbuf: the application read
	eventTypeLimit                = 12
	unknownEventTypeFmt           = "type_%d"
)

var eventTypeNames = [eventTypeLimit]string{
	EventExchangeStart: "exchange_start",
	EventAcked:         "acked",
	EventAnswer:        "answer",
	EventTLSAlert:      "tls_alert",
	EventFIN:           "fin",
	EventRST:           "rst",
	EventRetransmit:    "retransmit",
	EventState:         "state",
	EventTCPRetransmit: "tcp_retransmit",
	EventAppWrite:      "app_write",
	EventAppRead:       "app_read",
}

func (t EventType) String() string {
	if int(t) < len(eventTypeNames) && eventTypeNames[t] != "" {
		return eventTypeNames[t]
	}
	return fmt.Sprintf(unknownEventTypeFmt, uint8(t))
}

// EventFlag bits qualify an event (enum event_flag).
type EventFlag uint32

const (
	FlagProbable     EventFlag = 1 << 0 // TLS 1.3 close_notify by the 19-byte rule
	FlagOpenExchange EventFlag = 1 << 1 // an exchange was open at the time
	FlagMaybeTicket  EventFlag = 1 << 2 // first server application data after a TLS 1.3 handshake
	FlagAfterTicket  EventFlag = 1 << 3 // the next server record after a MaybeTicket answer
	FlagMidstream    EventFlag = 1 << 4 // the flow was first seen after its SYN
	FlagSYN          EventFlag = 1 << 5 // the retransmitted segment is a SYN
	FlagTLS13        EventFlag = 1 << 6 // the flow negotiated TLS 1.3
	FlagPlain        EventFlag = 1 << 7 // the flow is not TLS
)

var flagNames = []string{"probable", "open_exchange", "maybe_ticket", "after_ticket",
	"midstream", "syn", "tls13", "plain"}

func (f EventFlag) String() string {
	var parts []string
	for i, name := range flagNames {
		if f&(1<<i) != 0 {
			parts = append(parts, name)
		}
	}
	if rest := f &^ (1<<len(flagNames) - 1); rest != 0 {
		parts = append(parts, fmt.Sprintf("0x%x", uint32(rest)))
	}
	return strings.Join(parts, "|")
}

// Direction is the way a segment went, in ICAP roles.
type Direction uint8

const (
	ToServer Direction = 0 // client -> server: the request side
	ToClient Direction = 1 // server -> client: the answer side
)

func (d Direction) String() string {
	if d == ToServer {
		return "to_server"
	}
	return "to_client"
}

// Hook says where an event came from.
type Hook uint8

const (
	HookIngress    Hook = 0
	HookEgress     Hook = 1
	HookTracepoint Hook = 2
	HookKprobe     Hook = 3
)

func (h Hook) String() string {
	switch h {
	case HookIngress:
		return "ingress"
	case HookEgress:
		return "egress"
	case HookTracepoint:
		return "tracepoint"
	case HookKprobe:
		return "kprobe"
	}
	return fmt.Sprintf("hook_%d", uint8(h))
}

// Phase of an exchange, from the TLS record type at its start: the
// correlator's own type.
type Phase = observe.Phase

const (
	PhaseNone      = observe.PhaseNone
	PhaseHandshake = observe.PhaseHandshake
	PhaseRequest   = observe.PhaseRequest
)

// Event is one kernel event, decoded. Times are on the kernel's monotonic
// clock (bpf_ktime_get_ns); Time is the wall-clock equivalent, set by the
// reader.
type Event struct {
	Type       EventType
	Time       time.Time
	Mono       time.Duration // when it happened
	RefMono    time.Duration // exchange start (acked, answer), previous data (exchange start), 0 if none
	Client     netip.AddrPort
	Server     netip.AddrPort
	Dir        Direction
	Hook       Hook
	Flags      EventFlag
	Ifindex    uint32
	Seq, Ack   uint32
	Len        uint32 // payload bytes of the segment (app bytes for kprobes)
	Bytes      uint32 // request bytes of the exchange so far
	RecordType uint8  // first payload byte: the TLS content type
	RecordLen  uint16 // TLS record length at segment start
	Phase      Phase
	OldState   TCPState
	NewState   TCPState
	PID        uint32 // only where the kernel runs in the owner's context
	Comm       string
	Sock       uint64 // struct sock address: joins tracepoint and kprobe events
}

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
		Mono:       time.Duration(le.Uint64(b[0:])),
		RefMono:    time.Duration(le.Uint64(b[8:])),
		Sock:       le.Uint64(b[16:]),
		Type:       EventType(b[61]),
		Dir:        Direction(b[62]),
		Hook:       Hook(b[63]),
		Flags:      EventFlag(le.Uint32(b[64:])),
		Ifindex:    le.Uint32(b[68:]),
		Seq:        le.Uint32(b[72:]),
		Ack:        le.Uint32(b[76:]),
		Len:        le.Uint32(b[80:]),
		Bytes:      le.Uint32(b[84:]),
		RecordType: b[88],
		Phase:      Phase(b[89]),
		RecordLen:  le.Uint16(b[90:]),
		OldState:   TCPState(int32(le.Uint32(b[92:]))),
		NewState:   TCPState(int32(le.Uint32(b[96:]))),
		PID:        le.Uint32(b[100:]),
		Comm:       cString(b[104:120]),
	}
	e.Client, e.Server = addrPorts(b[60], b[24:40], b[40:56], le.Uint16(b[56:]), le.Uint16(b[58:]))
	return e, nil
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

// TCPState is a Linux TCP state (include/net/tcp_states.h).
type TCPState int32

var tcpStateNames = []string{1: "ESTABLISHED", "SYN_SENT", "SYN_RECV", "FIN_WAIT1",
	"FIN_WAIT2", "TIME_WAIT", "CLOSE", "CLOSE_WAIT", "LAST_ACK", "LISTEN", "CLOSING",
	"NEW_SYN_RECV"}

// Some TCP states the agent acts on.
const (
	TCPEstablished TCPState = 1
	TCPSynSent     TCPState = 2
	TCPClose       TCPState = 7
	TCPCloseWait   TCPState = 8
)

func (s TCPState) String() string {
	if s > 0 && int(s) < len(tcpStateNames) {
		return tcpStateNames[s]
	}
	return fmt.Sprintf("state_%d", int32(s))
}
