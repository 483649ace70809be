// Package observe is the event model every source produces into and the
// correlator consumes: the kernel reader, the capture reader and the
// canary. It depends on nothing but the standard library, so a source
// needs neither eBPF nor the correlator to speak it.
package observe

import (
	"fmt"
	"net/netip"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// Kind says what an Observation reports.
type Kind uint8

const (
	// Wire signals, from the TC classifier or a capture.
	ExchangeStart Kind = iota + 1 // the client spoke after the server, or first
	Acked                         // the server's TCP ACKed every request byte
	Answer                        // the server's first byte after a request
	TLSAlert                      // a TLS alert record (Flags Probable for the TLS 1.3 length rule)
	FIN                           // from Dir's sender
	RST                           // from Dir's sender
	Retransmit                    // a segment (Flags SYN: a SYN) seen again

	// Socket signals, from tracepoints, kprobes or sock_diag.
	State         // a TCP state change; PID and Comm when the owner is known
	TCPRetransmit // the local stack retransmitted
	AppWrite      // the application wrote (kprobe)
	AppRead       // the application read (kprobe)
	SocketInfo    // a socket's queues and counters (sock_diag): RQueue, Unacked, Retrans

	// Canary signals: the agent's own client knows the truth.
	CanaryConn    // a canary connection's local address (Flow), to label it
	CanaryAnswer  // the canary's own gap for an exchange, in Gap
	ServerOptions // OPTIONS of a server: MaxConnections
	ServerIdle    // the canary saw the server idle-close after IdleTimeout

	// AppWriteFailed: the application's write failed on a socket in
	// CLOSE, and nothing reached the wire (sock:sock_send_length or the
	// kprobe). Len is the errno where known; OldState the socket's
	// state before CLOSE where known. A socket signal, numbered after the
	// canary's to keep the kinds' values.
	AppWriteFailed
)

var kindNames = [...]string{ExchangeStart: "exchange_start", Acked: "acked", Answer: "answer",
	TLSAlert: "tls_alert", FIN: "fin", RST: "rst", Retransmit: "retransmit", State: "state",
	TCPRetransmit: "tcp_retransmit", AppWrite: "app_write", AppRead: "app_read",
	SocketInfo: "socket_info", CanaryConn: "canary_conn", CanaryAnswer: "canary_answer",
	ServerOptions: "server_options", ServerIdle: "server_idle", AppWriteFailed: "app_write_failed"}

func (k Kind) String() string {
	if int(k) < len(kindNames) && kindNames[k] != "" {
		return kindNames[k]
	}
	return "unknown"
}

// Direction of a segment in ICAP roles.
type Direction uint8

const (
	ToServer Direction = iota // client -> server: request side
	ToClient                  // server -> client: answer side
)

// Phase of an exchange.
type Phase uint8

const (
	PhaseNone Phase = iota
	PhaseHandshake
	PhaseRequest
)

func (p Phase) String() string {
	switch p {
	case PhaseHandshake:
		return "handshake"
	case PhaseRequest:
		return "request"
	}
	return "none"
}

// Flags qualify an observation.
type Flags uint16

const (
	Probable     Flags = 1 << iota // TLS 1.3 close_notify by the 19-byte rule
	OpenExchange                   // an exchange was open at the time
	MaybeTicket                    // first server data after a TLS 1.3 handshake: a ticket or the answer
	AfterTicket                    // the next server record after a MaybeTicket answer
	Midstream                      // the flow was first seen after its SYN
	SYN                            // the retransmitted segment is a SYN
	TLS13                          // the flow negotiated TLS 1.3
	Plain                          // the flow is not TLS
	// Lost: a socket sock_diag no longer finds, beside kernel probes that
	// never told its close (their events were lost): how it ended is unknown.
	Lost
)

// Source says where observations come from; the agent reports it.
type Source uint8

const (
	SourceKernel Source = iota + 1
	SourceSockDiag
	SourceCapture
	SourceCanary
)

func (s Source) String() string {
	switch s {
	case SourceKernel:
		return "bpf"
	case SourceSockDiag:
		return "sockdiag"
	case SourceCapture:
		return "capture"
	case SourceCanary:
		return "canary"
	}
	return "unknown"
}

// Flow identifies a TCP connection to a watched port.
type Flow struct {
	Client netip.AddrPort
	Server netip.AddrPort
}

// TCPState is a socket's TCP state, numbered as the kernel numbers them
// (include/net/tcp_states.h): the tracepoints, sock_diag and the kernel
// events carry these numbers.
type TCPState uint8

// TCP states.
const (
	TCPEstablished TCPState = iota + 1
	TCPSynSent
	TCPSynRecv
	TCPFinWait1
	TCPFinWait2
	TCPTimeWait
	TCPClose
	TCPCloseWait
	TCPLastAck
	TCPListen
	TCPClosing
	TCPNewSynRecv
	tcpStateLimit
)

var tcpStateNames = [tcpStateLimit]string{TCPEstablished: "established", TCPSynSent: "syn_sent",
	TCPSynRecv: "syn_recv", TCPFinWait1: "fin_wait1", TCPFinWait2: "fin_wait2", TCPTimeWait: "time_wait",
	TCPClose: "close", TCPCloseWait: "close_wait", TCPLastAck: "last_ack", TCPListen: "listen",
	TCPClosing: "closing", TCPNewSynRecv: "new_syn_recv"}

// String is the state's name as the connections gauge labels it.
func (s TCPState) String() string {
	if s < tcpStateLimit && tcpStateNames[s] != "" {
		return tcpStateNames[s]
	}
	return "unknown"
}

// Observation is one thing a source saw. Time is on the source's clock:
// wall time for live sources, the capture's for files; the correlator
// only compares times of the same source.
type Observation struct {
	Kind   Kind
	Source Source
	Time   time.Time
	// Ref is a related earlier time: the exchange's start (Acked, Answer),
	// the flow's previous data (ExchangeStart, State from sock_diag), the
	// record of a probable TLS 1.3 close_notify that the FIN or reset
	// behind it proved (TLSAlert). Zero when unknown.
	Ref  time.Time
	Flow Flow
	Dir  Direction
	// Phase of the exchange (ExchangeStart, Acked, Answer).
	Phase Phase
	Flags Flags
	Seq   uint32
	Ack   uint32
	Len   uint32 // segment payload, app bytes, or queued bytes (RecvQueue)
	Bytes uint32 // request bytes of the exchange so far

	OldState, NewState TCPState // State
	PID                uint32
	Comm               string
	Sock               uint64 // kernel socket address: joins socket signals

	// SocketInfo: what sock_diag read of the socket. Retransmit: how
	// many segments were sent again (0 is one, the wire's single segment).
	RQueue, Unacked, Retrans uint32

	// Canary signals.
	Gap            time.Duration // CanaryAnswer: the canary's own gap
	MaxConnections int           // ServerOptions
	IdleTimeout    time.Duration // ServerIdle
}

// Printable returns s as valid, printable UTF-8, for strings that come
// from outside and become label values, event fields and log values (a
// process may name itself with any bytes): bytes that are not UTF-8 and
// control characters are written escaped, \xff. Sources pass such
// strings through it once, where they enter the model; a string that is
// already printable is returned as it is, without allocating.
func Printable(s string) string {
	clean := true
	for _, r := range s {
		if r == utf8.RuneError || !unicode.IsPrint(r) {
			clean = false
			break
		}
	}
	if clean {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && n <= 1, r != utf8.RuneError && !unicode.IsPrint(r) && n == 1:
			fmt.Fprintf(&b, "\\x%02x", s[i])
		case !unicode.IsPrint(r):
			fmt.Fprintf(&b, "\\u%04x", r)
		default:
			b.WriteString(s[i : i+n])
		}
		i += n
	}
	return b.String()
}
