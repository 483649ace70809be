package bpf

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/icapwatch/icapwatch/internal/testutil"
	"golang.org/x/sys/unix"
)

// loadForRun loads the objects without attaching them, for Program.Run.
func loadForRun(t testing.TB, output string) *Probe {
	t.Helper()
	testutil.RequireRoot(t)
	cfg := DefaultConfig()
	cfg.Output = output
	cfg.Kprobes = KprobesOff
	p, _, err := load(cfg)
	if err != nil {
		if errors.Is(err, ebpf.ErrNotSupported) {
			testutil.SkipOrFail(t, "%v", err)
		}
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// step runs one frame through a hook.
type step struct {
	hook Hook
	seg  segment
}

// want is the part of an event a case checks.
type want struct {
	typ   EventType
	dir   Direction
	phase Phase
	flags EventFlag // all of these must be set
	not   EventFlag // none of these may be set
}

var (
	cli4 = netip.MustParseAddrPort("192.0.2.1:40000")
	srv4 = netip.MustParseAddrPort("192.0.2.2:11344")
	cli6 = netip.MustParseAddrPort("[2001:db8::1]:40001")
	srv6 = netip.MustParseAddrPort("[2001:db8::2]:11344")
)

// conn builds the frames of one connection with running sequence numbers.
type conn struct {
	cli, srv        netip.AddrPort
	cseq, sseq      uint32
	hookOut, hookIn Hook // the hook of client->server and of server->client frames
	steps           []step
}

func newConn(cli, srv netip.AddrPort) *conn {
	return &conn{cli: cli, srv: srv, cseq: 1000, sseq: 5000, hookOut: HookEgress, hookIn: HookIngress}
}

func (c *conn) client(flags uint8, payload []byte) *conn {
	c.steps = append(c.steps, step{c.hookOut, segment{c.cli, c.srv, c.cseq, c.sseq, flags, payload}})
	c.cseq += uint32(len(payload))
	if flags&(fSYN|fFIN) != 0 {
		c.cseq++
	}
	return c
}

func (c *conn) server(flags uint8, payload []byte) *conn {
	c.steps = append(c.steps, step{c.hookIn, segment{c.srv, c.cli, c.sseq, c.cseq, flags, payload}})
	c.sseq += uint32(len(payload))
	if flags&(fSYN|fFIN) != 0 {
		c.sseq++
	}
	return c
}

// handshake opens the TCP connection: no events.
func (c *conn) handshake() *conn {
	return c.client(fSYN, nil).server(fSYN|fACK, nil).client(fACK, nil)
}

// classifierCase is a sequence of frames and the events it must give.
type classifierCase struct {
	name  string
	steps []step
	want  []want
	stats func(Stats) string
}

func classifierCases() []classifierCase {
	tls12 := func(cli, srv netip.AddrPort) *conn {
		return newConn(cli, srv).handshake().
			client(fACK|fPSH, tlsRecord(0x16, 200)).                            // ClientHello
			server(fACK, nil).                                                  // ACK
			server(fACK|fPSH, serverHello(0xc02f, tlsRecord(0x16, 900))).       // ServerHello, Certificate...
			client(fACK|fPSH, concat(tlsRecord(0x16, 70), tlsRecord(0x14, 1))). // ClientKeyExchange, CCS
			server(fACK|fPSH, concat(tlsRecord(0x14, 1), tlsRecord(0x16, 40))). // CCS, Finished
			client(fACK|fPSH, tlsRecord(0x17, 147)).                            // the request
			server(fACK, nil).
			server(fACK|fPSH, tlsRecord(0x17, 300)). // the answer
			server(fACK|fPSH, tlsRecord(0x15, 26)).  // encrypted alert
			server(fACK|fFIN, nil)
	}
	tls13 := func(cli, srv netip.AddrPort) *conn {
		return newConn(cli, srv).handshake().
			client(fACK|fPSH, tlsRecord(0x16, 250)).
			server(fACK|fPSH, serverHello(0x1301, tlsRecord(0x14, 1), tlsRecord(0x17, 2000))).
			client(fACK|fPSH, concat(tlsRecord(0x14, 1), tlsRecord(0x17, 53))). // CCS, Finished: no answer due
			client(fACK|fPSH, tlsRecord(0x17, 180)).                            // the request
			server(fACK|fPSH, tlsRecord(0x17, 250)).                            // NewSessionTicket
			server(fACK|fPSH, tlsRecord(0x17, 400)).                            // the answer
			client(fACK|fPSH, tlsRecord(0x17, 19)).                             // close_notify ...
			client(fACK|fFIN, nil)                                              // ... then FIN
	}

	return []classifierCase{
		{
			name:  "tls12 ipv4",
			steps: tls12(cli4, srv4).steps,
			want: []want{
				{typ: EventExchangeStart, dir: ToServer, phase: PhaseHandshake},
				{typ: EventAcked, dir: ToClient, phase: PhaseHandshake},
				{typ: EventAnswer, dir: ToClient, phase: PhaseHandshake, not: FlagTLS13},
				{typ: EventExchangeStart, dir: ToServer, phase: PhaseHandshake},
				{typ: EventAnswer, dir: ToClient, phase: PhaseHandshake},
				{typ: EventExchangeStart, dir: ToServer, phase: PhaseRequest},
				{typ: EventAcked, dir: ToClient, phase: PhaseRequest},
				{typ: EventAnswer, dir: ToClient, phase: PhaseRequest, not: FlagMaybeTicket},
				{typ: EventTLSAlert, dir: ToClient, not: FlagProbable},
				{typ: EventFIN, dir: ToClient, not: FlagOpenExchange},
			},
		},
		{
			name:  "tls12 ipv6",
			steps: tls12(cli6, srv6).steps,
			want: []want{
				{typ: EventExchangeStart, phase: PhaseHandshake},
				{typ: EventAcked, dir: ToClient},
				{typ: EventAnswer, dir: ToClient, phase: PhaseHandshake},
				{typ: EventExchangeStart, phase: PhaseHandshake},
				{typ: EventAnswer, dir: ToClient},
				{typ: EventExchangeStart, phase: PhaseRequest},
				{typ: EventAcked, dir: ToClient},
				{typ: EventAnswer, dir: ToClient, phase: PhaseRequest},
				{typ: EventTLSAlert, dir: ToClient},
				{typ: EventFIN, dir: ToClient},
			},
		},
		{
			name:  "tls13 ticket and close_notify",
			steps: tls13(cli6, srv6).steps,
			want: []want{
				{typ: EventExchangeStart, phase: PhaseHandshake},
				{typ: EventAnswer, dir: ToClient, phase: PhaseHandshake, flags: FlagTLS13},
				{typ: EventExchangeStart, phase: PhaseRequest, flags: FlagTLS13},
				{typ: EventAnswer, dir: ToClient, phase: PhaseRequest, flags: FlagMaybeTicket},
				{typ: EventAnswer, dir: ToClient, phase: PhaseRequest, flags: FlagAfterTicket},
				{typ: EventTLSAlert, dir: ToServer, flags: FlagProbable},
				{typ: EventFIN, dir: ToServer},
			},
		},
		{
			name: "tls13 server close_notify with FIN in one segment",
			steps: newConn(cli4, srv4).client(fACK|fPSH, tlsRecord(0x17, 300)).
				server(fACK|fPSH|fFIN, tlsRecord(0x17, 19)).steps,
			want: []want{
				{typ: EventExchangeStart, phase: PhaseRequest, flags: FlagMidstream},
				{typ: EventTLSAlert, dir: ToClient, flags: FlagProbable | FlagOpenExchange},
				{typ: EventFIN, dir: ToClient, flags: FlagOpenExchange},
			},
		},
		{
			name: "a held 19-byte record followed by data is a request",
			steps: newConn(cli4, srv4).handshake().
				client(fACK|fPSH, tlsRecord(0x16, 100)).server(fACK|fPSH, tlsRecord(0x16, 100)).
				client(fACK|fPSH, tlsRecord(0x17, 19)).client(fACK|fPSH, tlsRecord(0x17, 500)).
				server(fACK|fPSH, tlsRecord(0x17, 200)).steps,
			want: []want{
				{typ: EventExchangeStart, phase: PhaseHandshake},
				{typ: EventAnswer, dir: ToClient},
				{typ: EventExchangeStart, phase: PhaseRequest},
				{typ: EventAnswer, dir: ToClient, phase: PhaseRequest},
			},
		},
		{
			name:  "a SYN alone says nothing",
			steps: newConn(cli4, srv4).client(fSYN, nil).steps,
			want:  nil,
		},
		{
			name: "retransmissions",
			steps: func() []step {
				c := newConn(cli4, srv4).client(fSYN, nil)
				c.steps = append(c.steps, c.steps[0]) // the SYN again
				c.server(fSYN|fACK, nil).client(fACK, nil).client(fACK|fPSH, tlsRecord(0x17, 100))
				c.steps = append(c.steps, c.steps[len(c.steps)-1]) // the request again
				return c.steps
			}(),
			want: []want{
				{typ: EventRetransmit, dir: ToServer, flags: FlagSYN},
				{typ: EventExchangeStart, phase: PhaseRequest},
				{typ: EventRetransmit, dir: ToServer, not: FlagSYN},
			},
		},
		{
			name: "reset during a request",
			steps: newConn(cli4, srv4).handshake().client(fACK|fPSH, []byte("OPTIONS icap://x/ ICAP/1.0\r\n\r\n")).
				server(fRST|fACK, nil).steps,
			want: []want{
				{typ: EventExchangeStart, phase: PhaseRequest, flags: FlagPlain},
				{typ: EventRST, dir: ToClient, flags: FlagOpenExchange},
			},
		},
		{
			name: "other ports exit early",
			steps: newConn(netip.MustParseAddrPort("192.0.2.1:40000"), netip.MustParseAddrPort("192.0.2.2:443")).
				handshake().client(fACK|fPSH, tlsRecord(0x17, 100)).server(fACK|fPSH, tlsRecord(0x17, 100)).steps,
			want: nil,
			stats: func(s Stats) string {
				if s.Watched != 0 || s.FlowsCreated != 0 {
					return "want no packet watched, no flow"
				}
				return ""
			},
		},
		{
			name: "the same packet at a second hook counts once",
			steps: func() []step {
				c := newConn(cli4, srv4).client(fACK|fPSH, tlsRecord(0x17, 100))
				c.steps = append(c.steps, step{HookIngress, c.steps[0].seg})
				return c.steps
			}(),
			want: []want{{typ: EventExchangeStart, phase: PhaseRequest}},
			stats: func(s Stats) string {
				if s.Duplicates != 1 {
					return "want one duplicate"
				}
				return ""
			},
		},
		{
			name: "host is the server: direction from the watched port",
			steps: func() []step {
				c := newConn(cli4, srv4)
				c.hookOut, c.hookIn = HookIngress, HookEgress
				return c.handshake().client(fACK|fPSH, tlsRecord(0x17, 100)).server(fACK|fPSH, tlsRecord(0x17, 100)).steps
			}(),
			want: []want{
				{typ: EventExchangeStart, dir: ToServer, phase: PhaseRequest},
				{typ: EventAnswer, dir: ToClient, phase: PhaseRequest},
			},
		},
	}
}

func TestClassifier(t *testing.T) {
	for _, tc := range classifierCases() {
		for _, output := range []string{OutputPerf, OutputRing} {
			t.Run(tc.name+"/"+output, func(t *testing.T) {
				p := loadForRun(t, output)
				for i, s := range tc.steps {
					prog := p.objs.IcapwatchIngress
					if s.hook == HookEgress {
						prog = p.objs.IcapwatchEgress
					}
					ret, err := prog.Run(&ebpf.RunOptions{Data: s.seg.frame()})
					if err != nil {
						t.Fatalf("step %d: %v", i, err)
					}
					if int32(ret) != -1 {
						t.Fatalf("step %d: returned %d, want TC_ACT_UNSPEC (-1)", i, int32(ret))
					}
				}
				got := drain(t, p)
				if len(got) != len(tc.want) {
					t.Fatalf("got %d events, want %d:\n%s", len(got), len(tc.want), describe(got))
				}
				for i, w := range tc.want {
					e := got[i]
					if e.Type != w.typ || e.Dir != w.dir && w.typ != EventExchangeStart ||
						w.phase != PhaseNone && e.Phase != w.phase ||
						e.Flags&w.flags != w.flags || e.Flags&w.not != 0 {
						t.Errorf("event %d: got %s, want %+v", i, describeOne(e), w)
					}
				}
				checkTuples(t, got)
				if tc.stats != nil {
					s, err := p.Stats(true)
					if err != nil {
						t.Fatal(err)
					}
					if msg := tc.stats(s); msg != "" {
						t.Errorf("%s: %+v", msg, s)
					}
				}
			})
		}
	}
}

// checkTuples: every event names the client and the server, whatever the
// direction of its packet.
func checkTuples(t *testing.T, events []Event) {
	t.Helper()
	for _, e := range events {
		if e.Server.Port() != 11344 || e.Client.Port() < 40000 || !e.Client.Addr().IsValid() {
			t.Errorf("tuple not normalized: %s", describeOne(e))
		}
	}
}

// drain reads what the runs wrote, in batches of three as the agent reads
// in batches: the samples are in the buffer already, so every batch but
// the last is full. The perf buffer is one per CPU, and the test's thread
// may move between CPUs from one run to the next: the events come back in
// the order of their kernel time.
func drain(t *testing.T, p *Probe) []Event {
	t.Helper()
	var out []Event
	buf := make([]Event, 3)
	short := 0
	for {
		p.SetDeadline(time.Now().Add(100 * time.Millisecond))
		n, err := p.ReadBatch(buf)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			slices.SortStableFunc(out, func(a, b Event) int { return cmp.Compare(a.Mono, b.Mono) })
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		if short > 0 {
			t.Errorf("a batch of %d events, then one of %d: the first left waiting events behind", short, n)
		}
		if n < len(buf) {
			short = n
		}
		out = append(out, buf[:n]...)
	}
}

func describe(events []Event) string {
	s := ""
	for _, e := range events {
		s += "  " + describeOne(e) + "\n"
	}
	return s
}

func describeOne(e Event) string {
	if e.Type == EventState {
		return fmt.Sprintf("state %s->%s pid %d %q %s -> %s", e.OldState, e.NewState, e.PID, e.Comm, e.Client, e.Server)
	}
	return e.Type.String() + " " + e.Dir.String() + " " + e.Phase.String() + " [" + e.Flags.String() + "] " +
		e.Client.String() + " -> " + e.Server.String()
}

// TestHeldRecordKeepsItsTime: a request that starts with a 19-byte record
// is dated from that record, not from the segment that proved it data.
func TestHeldRecordKeepsItsTime(t *testing.T) {
	p := loadForRun(t, OutputPerf)
	c := newConn(cli4, srv4).client(fACK|fPSH, tlsRecord(0x17, 19)).client(fACK|fPSH, tlsRecord(0x17, 300))
	var before time.Duration
	for i, s := range c.steps {
		if i == 1 {
			time.Sleep(5 * time.Millisecond)
		}
		if _, err := p.objs.IcapwatchEgress.Run(&ebpf.RunOptions{Data: s.seg.frame()}); err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			before = monoNow()
		}
	}
	got := drain(t, p)
	if len(got) != 1 || got[0].Type != EventExchangeStart {
		t.Fatalf("got %s", describe(got))
	}
	if got[0].Mono > before {
		t.Errorf("exchange start at %v, after the held record was seen (%v)", got[0].Mono, before)
	}
	if got[0].Seq != 1000 || got[0].RecordLen != 19 {
		t.Errorf("exchange starts at seq %d with record length %d, want 1000 and 19", got[0].Seq, got[0].RecordLen)
	}
}

func monoNow() time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		panic(err)
	}
	return time.Duration(ts.Nano())
}
