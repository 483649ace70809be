package bpftest

import "net/netip"

// Addresses of the cases: the client, and the server on the secure ICAP
// port, in IPv4 and IPv6.
var (
	Cli4 = netip.MustParseAddrPort("192.0.2.1:40000")
	Srv4 = netip.MustParseAddrPort("192.0.2.2:11344")
	Cli6 = netip.MustParseAddrPort("[2001:db8::1]:40001")
	Srv6 = netip.MustParseAddrPort("[2001:db8::2]:11344")
)

// Step is one frame and the TC hook that sees it.
type Step struct {
	Egress bool // the egress program, else the ingress one
	Seg    Segment
}

// Want is the part of an event a case checks, in the names of the C enums
// of icapwatch.h.
type Want struct {
	Type  string // enum event_type, e.g. "EV_ANSWER"
	Dir   string // enum direction
	Phase string // enum phase; "" is not checked
	Flags string // enum event_flag names joined by "|": all of them must be set
	Not   string // enum event_flag names joined by "|": none of them may be set
}

// Case is a sequence of frames and the events it must give.
type Case struct {
	Name  string
	Steps []Step
	Want  []Want
	// Counters are kernel counters the case checks after its steps, by the
	// name of enum counter ("CNT_WATCHED"), summed over CPUs; nil checks
	// none.
	Counters map[string]uint64
}

// Conn builds the frames of one connection with running sequence numbers.
// The host is the client: its frames leave through egress, the server's
// come in through ingress, unless HostIsServer.
type Conn struct {
	Cli, Srv     netip.AddrPort
	CSeq, SSeq   uint32
	HostIsServer bool
	Steps        []Step
}

// NewConn starts a connection from cli to srv.
func NewConn(cli, srv netip.AddrPort) *Conn {
	return &Conn{Cli: cli, Srv: srv, CSeq: 1000, SSeq: 5000}
}

// Client adds a client -> server segment.
func (c *Conn) Client(flags uint8, payload []byte) *Conn {
	c.Steps = append(c.Steps, Step{!c.HostIsServer, Segment{c.Cli, c.Srv, c.CSeq, c.SSeq, flags, payload}})
	c.CSeq += uint32(len(payload))
	if flags&(SYN|FIN) != 0 {
		c.CSeq++
	}
	return c
}

// Server adds a server -> client segment.
func (c *Conn) Server(flags uint8, payload []byte) *Conn {
	c.Steps = append(c.Steps, Step{c.HostIsServer, Segment{c.Srv, c.Cli, c.SSeq, c.CSeq, flags, payload}})
	c.SSeq += uint32(len(payload))
	if flags&(SYN|FIN) != 0 {
		c.SSeq++
	}
	return c
}

// Handshake opens the TCP connection: no events.
func (c *Conn) Handshake() *Conn {
	return c.Client(SYN, nil).Server(SYN|ACK, nil).Client(ACK, nil)
}

// ClassifierCases are the frame sequences the TC classifier is tested on.
func ClassifierCases() []Case {
	tls12 := func(cli, srv netip.AddrPort) *Conn {
		return NewConn(cli, srv).Handshake().
			Client(ACK|PSH, TLSRecord(0x16, 200)).                            // ClientHello
			Server(ACK, nil).                                                 // ACK
			Server(ACK|PSH, ServerHello(0xc02f, TLSRecord(0x16, 900))).       // ServerHello, Certificate...
			Client(ACK|PSH, Concat(TLSRecord(0x16, 70), TLSRecord(0x14, 1))). // ClientKeyExchange, CCS
			Server(ACK|PSH, Concat(TLSRecord(0x14, 1), TLSRecord(0x16, 40))). // CCS, Finished
			Client(ACK|PSH, TLSRecord(0x17, 147)).                            // the request
			Server(ACK, nil).
			Server(ACK|PSH, TLSRecord(0x17, 300)). // the answer
			Server(ACK|PSH, TLSRecord(0x15, 26)).  // encrypted alert
			Server(ACK|FIN, nil)
	}
	tls13 := func(cli, srv netip.AddrPort) *Conn {
		return NewConn(cli, srv).Handshake().
			Client(ACK|PSH, TLSRecord(0x16, 250)).
			Server(ACK|PSH, ServerHello(0x1301, TLSRecord(0x14, 1), TLSRecord(0x17, 2000))).
			Client(ACK|PSH, Concat(TLSRecord(0x14, 1), TLSRecord(0x17, 53))). // CCS, Finished: no answer due
			Client(ACK|PSH, TLSRecord(0x17, 180)).                            // the request
			Server(ACK|PSH, TLSRecord(0x17, 250)).                            // NewSessionTicket
			Server(ACK|PSH, TLSRecord(0x17, 400)).                            // the answer
			Client(ACK|PSH, TLSRecord(0x17, 19)).                             // close_notify ...
			Client(ACK|FIN, nil)                                              // ... then FIN
	}
	const (
		start, acked, answer = "EV_EXCHANGE_START", "EV_ACKED", "EV_ANSWER"
		toServer, toClient   = "DIR_TO_SERVER", "DIR_TO_CLIENT"
		handshake, request   = "PHASE_HANDSHAKE", "PHASE_REQUEST"
	)

	return []Case{
		{
			Name:  "tls12 ipv4",
			Steps: tls12(Cli4, Srv4).Steps,
			Want: []Want{
				{Type: start, Dir: toServer, Phase: handshake},
				{Type: acked, Dir: toClient, Phase: handshake},
				{Type: answer, Dir: toClient, Phase: handshake, Not: "EVF_TLS13"},
				{Type: start, Dir: toServer, Phase: handshake},
				{Type: answer, Dir: toClient, Phase: handshake},
				{Type: start, Dir: toServer, Phase: request},
				{Type: acked, Dir: toClient, Phase: request},
				{Type: answer, Dir: toClient, Phase: request, Not: "EVF_MAYBE_TICKET"},
				{Type: "EV_TLS_ALERT", Dir: toClient, Not: "EVF_PROBABLE"},
				{Type: "EV_FIN", Dir: toClient, Not: "EVF_OPEN_EXCHANGE"},
			},
		},
		{
			Name:  "tls12 ipv6",
			Steps: tls12(Cli6, Srv6).Steps,
			Want: []Want{
				{Type: start, Dir: toServer, Phase: handshake},
				{Type: acked, Dir: toClient},
				{Type: answer, Dir: toClient, Phase: handshake},
				{Type: start, Dir: toServer, Phase: handshake},
				{Type: answer, Dir: toClient},
				{Type: start, Dir: toServer, Phase: request},
				{Type: acked, Dir: toClient},
				{Type: answer, Dir: toClient, Phase: request},
				{Type: "EV_TLS_ALERT", Dir: toClient},
				{Type: "EV_FIN", Dir: toClient},
			},
		},
		{
			Name:  "tls13 ticket and close_notify",
			Steps: tls13(Cli6, Srv6).Steps,
			Want: []Want{
				{Type: start, Dir: toServer, Phase: handshake},
				{Type: answer, Dir: toClient, Phase: handshake, Flags: "EVF_TLS13"},
				{Type: start, Dir: toServer, Phase: request, Flags: "EVF_TLS13"},
				{Type: answer, Dir: toClient, Phase: request, Flags: "EVF_MAYBE_TICKET"},
				{Type: answer, Dir: toClient, Phase: request, Flags: "EVF_AFTER_TICKET"},
				{Type: "EV_TLS_ALERT", Dir: toServer, Flags: "EVF_PROBABLE"},
				{Type: "EV_FIN", Dir: toServer},
			},
		},
		{
			Name: "tls13 server close_notify with FIN in one segment",
			Steps: NewConn(Cli4, Srv4).Client(ACK|PSH, TLSRecord(0x17, 300)).
				Server(ACK|PSH|FIN, TLSRecord(0x17, 19)).Steps,
			Want: []Want{
				{Type: start, Dir: toServer, Phase: request, Flags: "EVF_MIDSTREAM"},
				{Type: "EV_TLS_ALERT", Dir: toClient, Flags: "EVF_PROBABLE|EVF_OPEN_EXCHANGE"},
				{Type: "EV_FIN", Dir: toClient, Flags: "EVF_OPEN_EXCHANGE"},
			},
		},
		{
			// A server that closes with the client's close_notify unread
			// resets instead of sending its FIN (c-icap, Go's crypto/tls).
			Name: "tls13 server close_notify then reset",
			Steps: NewConn(Cli4, Srv4).Client(ACK|PSH, TLSRecord(0x17, 300)).
				Server(ACK|PSH, TLSRecord(0x17, 200)).
				Server(ACK|PSH, TLSRecord(0x17, 19)).
				Server(RST|ACK, nil).Steps,
			Want: []Want{
				{Type: start, Dir: toServer, Phase: request},
				{Type: answer, Dir: toClient, Phase: request},
				{Type: "EV_TLS_ALERT", Dir: toClient, Flags: "EVF_PROBABLE", Not: "EVF_OPEN_EXCHANGE"},
				{Type: "EV_RST", Dir: toClient},
			},
		},
		{
			// The idle close as it goes on the wire: the server's
			// close_notify, the client's at once with its FIN, then the
			// server's reset. The server's alert comes with its reset,
			// holding the time of its record, which came first.
			Name: "tls13 server close_notify, the client's close_notify and FIN, the server's reset",
			Steps: NewConn(Cli4, Srv4).Client(ACK|PSH, TLSRecord(0x17, 300)).
				Server(ACK|PSH, TLSRecord(0x17, 200)).
				Server(ACK|PSH, TLSRecord(0x17, 19)).
				Client(ACK|PSH, TLSRecord(0x17, 19)).
				Client(ACK|FIN, nil).
				Server(RST|ACK, nil).Steps,
			Want: []Want{
				{Type: start, Dir: toServer, Phase: request},
				{Type: answer, Dir: toClient, Phase: request},
				{Type: "EV_TLS_ALERT", Dir: toServer, Flags: "EVF_PROBABLE"},
				{Type: "EV_FIN", Dir: toServer},
				{Type: "EV_TLS_ALERT", Dir: toClient, Flags: "EVF_PROBABLE"},
				{Type: "EV_RST", Dir: toClient},
			},
		},
		{
			Name: "tls13 client close_notify then reset",
			Steps: NewConn(Cli6, Srv6).Client(ACK|PSH, TLSRecord(0x17, 300)).
				Server(ACK|PSH, TLSRecord(0x17, 200)).
				Client(ACK|PSH, TLSRecord(0x17, 19)).
				Client(RST|ACK, nil).Steps,
			Want: []Want{
				{Type: start, Dir: toServer, Phase: request},
				{Type: answer, Dir: toClient, Phase: request},
				{Type: "EV_TLS_ALERT", Dir: toServer, Flags: "EVF_PROBABLE"},
				{Type: "EV_RST", Dir: toServer},
			},
		},
		{
			// The client closes first (a pool dropping an idle
			// connection); the server answers with its close_notify and,
			// the client's unread, a reset: no FIN of the client's ever
			// proves its record, the reset proves both. The client's
			// alert comes first, each with its record's time.
			Name: "tls13 client close_notify, the server's close_notify and reset",
			Steps: NewConn(Cli4, Srv4).Client(ACK|PSH, TLSRecord(0x17, 300)).
				Server(ACK|PSH, TLSRecord(0x17, 200)).
				Client(ACK|PSH, TLSRecord(0x17, 19)).
				Server(ACK|PSH, TLSRecord(0x17, 19)).
				Server(RST|ACK, nil).Steps,
			Want: []Want{
				{Type: start, Dir: toServer, Phase: request},
				{Type: answer, Dir: toClient, Phase: request},
				{Type: "EV_TLS_ALERT", Dir: toServer, Flags: "EVF_PROBABLE"},
				{Type: "EV_TLS_ALERT", Dir: toClient, Flags: "EVF_PROBABLE"},
				{Type: "EV_RST", Dir: toClient},
			},
		},
		{
			// Only a side's own reset ends its stream, and only right
			// behind the record: the peer's reset, or one further on,
			// proves nothing of it.
			Name: "a held record and a reset elsewhere is no alert",
			Steps: func() []Step {
				c := NewConn(Cli4, Srv4).Client(ACK|PSH, TLSRecord(0x17, 300)).
					Server(ACK|PSH, TLSRecord(0x17, 200)).
					Server(ACK|PSH, TLSRecord(0x17, 19)).
					Client(RST|ACK, nil)
				c.SSeq += 100
				return c.Server(RST|ACK, nil).Steps
			}(),
			Want: []Want{
				{Type: start, Dir: toServer, Phase: request},
				{Type: answer, Dir: toClient, Phase: request},
				{Type: "EV_RST", Dir: toServer},
				{Type: "EV_RST", Dir: toClient},
			},
		},
		{
			Name: "a held 19-byte record followed by data is a request",
			Steps: NewConn(Cli4, Srv4).Handshake().
				Client(ACK|PSH, TLSRecord(0x16, 100)).Server(ACK|PSH, TLSRecord(0x16, 100)).
				Client(ACK|PSH, TLSRecord(0x17, 19)).Client(ACK|PSH, TLSRecord(0x17, 500)).
				Server(ACK|PSH, TLSRecord(0x17, 200)).Steps,
			Want: []Want{
				{Type: start, Dir: toServer, Phase: handshake},
				{Type: answer, Dir: toClient},
				{Type: start, Dir: toServer, Phase: request},
				{Type: answer, Dir: toClient, Phase: request},
			},
		},
		{
			Name:  "a SYN alone says nothing",
			Steps: NewConn(Cli4, Srv4).Client(SYN, nil).Steps,
			Want:  nil,
		},
		{
			// The client's later states say it failed; it is no close.
			Name:  "a reset answering the SYN is a refused connect, not a close",
			Steps: NewConn(Cli4, Srv4).Client(SYN, nil).Server(RST|ACK, nil).Steps,
			Want:  nil,
		},
		{
			Name:  "a reset after the server's SYN-ACK is a close",
			Steps: NewConn(Cli4, Srv4).Client(SYN, nil).Server(SYN|ACK, nil).Server(RST, nil).Steps,
			Want:  []Want{{Type: "EV_RST", Dir: toClient}},
		},
		{
			Name: "retransmissions",
			Steps: func() []Step {
				c := NewConn(Cli4, Srv4).Client(SYN, nil)
				c.Steps = append(c.Steps, c.Steps[0]) // the SYN again
				c.Server(SYN|ACK, nil).Client(ACK, nil).Client(ACK|PSH, TLSRecord(0x17, 100))
				c.Steps = append(c.Steps, c.Steps[len(c.Steps)-1]) // the request again
				return c.Steps
			}(),
			Want: []Want{
				{Type: "EV_RETRANSMIT", Dir: toServer, Flags: "EVF_SYN"},
				{Type: start, Dir: toServer, Phase: request},
				{Type: "EV_RETRANSMIT", Dir: toServer, Not: "EVF_SYN"},
			},
		},
		{
			Name: "reset during a request",
			Steps: NewConn(Cli4, Srv4).Handshake().Client(ACK|PSH, []byte("OPTIONS icap://x/ ICAP/1.0\r\n\r\n")).
				Server(RST|ACK, nil).Steps,
			Want: []Want{
				{Type: start, Dir: toServer, Phase: request, Flags: "EVF_PLAIN"},
				{Type: "EV_RST", Dir: toClient, Flags: "EVF_OPEN_EXCHANGE"},
			},
		},
		{
			Name: "other ports exit early",
			Steps: NewConn(netip.MustParseAddrPort("192.0.2.1:40000"), netip.MustParseAddrPort("192.0.2.2:443")).
				Handshake().Client(ACK|PSH, TLSRecord(0x17, 100)).Server(ACK|PSH, TLSRecord(0x17, 100)).Steps,
			Want: nil,
			// No packet watched, no flow.
			Counters: map[string]uint64{"CNT_WATCHED": 0, "CNT_FLOWS_CREATED": 0},
		},
		{
			Name: "the same packet at a second hook counts once",
			Steps: func() []Step {
				c := NewConn(Cli4, Srv4).Client(ACK|PSH, TLSRecord(0x17, 100))
				c.Steps = append(c.Steps, Step{Egress: false, Seg: c.Steps[0].Seg})
				return c.Steps
			}(),
			Want:     []Want{{Type: start, Dir: toServer, Phase: request}},
			Counters: map[string]uint64{"CNT_DUPLICATE": 1},
		},
		{
			Name: "host is the server: direction from the watched port",
			Steps: func() []Step {
				c := NewConn(Cli4, Srv4)
				c.HostIsServer = true
				return c.Handshake().Client(ACK|PSH, TLSRecord(0x17, 100)).Server(ACK|PSH, TLSRecord(0x17, 100)).Steps
			}(),
			Want: []Want{
				{Type: start, Dir: toServer, Phase: request},
				{Type: answer, Dir: toClient, Phase: request},
			},
		},
	}
}
