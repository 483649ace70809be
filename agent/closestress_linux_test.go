package agent

import (
	"bufio"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/icapwatch/icapwatch/agent/analyze"
	"github.com/icapwatch/icapwatch/agent/correlate"
	"github.com/icapwatch/icapwatch/agent/observe"
	"github.com/icapwatch/icapwatch/bpf"
	"github.com/icapwatch/icapwatch/internal/cicap"
	"github.com/icapwatch/icapwatch/internal/testutil"
)

// TestSimultaneousCloses closes many connections in the same millisecond
// from both ends against a real server, c-icap, and holds the live
// agent's close events to the wire and to `icapwatch analyze` of a
// capture taken at the same time. A live run once reported no close for
// two connections the server closed, where analyze of its capture had
// both: whatever the kernel's hooks, the reader and the correlator do
// with a burst of closes, each connection must close once, as the wire
// says.
//
// c-icap idle-closes every connection of a wave within a few
// milliseconds; the moment the client sees the first of those closes, it
// closes half of the others itself, all at once, some with close_notify
// and a FIN, some with a reset (linger 0): their closes cross the
// server's.
//
// The waves are timed to end just before one of the agent's sock_diag
// polls (see daemonPolls), one of them a few milliseconds before it: the
// poll's view of those sockets reaches the correlator at once, the
// kernel's events of the same closes up to the reader's lag later. That
// is how the closes went missing: sock_diag told the sockets gone, a
// sweep then reported closes without a close signal, and the kernel's
// came too late (TestSockDiagPollAheadOfKernelCloses replays it without
// a kernel). The other wave, away from a poll, is the plain burst.
func TestSimultaneousCloses(t *testing.T) {
	testutil.RequireRoot(t)
	for _, tc := range []struct {
		name   string
		tls12  bool
		output string // the kernel's event buffer
	}{
		{"tls13", false, bpf.ModeAuto},
		{"tls12", true, bpf.ModeAuto},
		// The perf buffer, whose per-CPU events the reader merges in time
		// order: a burst of closes on both CPUs is what it must merge.
		{"tls13-perf", false, bpf.OutputPerf},
	} {
		t.Run(tc.name, func(t *testing.T) { simultaneousCloses(t, tc.tls12, tc.output) })
	}
}

// stressConns is how many connections close, in stressWaves waves: c-icap
// gives each a worker of its own (ThreadsPerChild).
const (
	stressConns = 32
	stressWaves = 2
)

// closeBy is how a connection of the test is closed.
type closeBy int

const (
	byServer    closeBy = iota // c-icap's idle close; the client answers it with its own close
	byClientFIN                // the client: close_notify, then its FIN
	byClientRST                // the client: a reset (SO_LINGER 0)
)

func (b closeBy) String() string {
	return [...]string{"server (client answers)", "client close_notify+FIN", "client reset"}[b]
}

// stressConn is one connection of the test, as its client holds it.
type stressConn struct {
	tcp   *net.TCPConn
	tls   *tls.Conn
	r     *bufio.Reader
	local netip.AddrPort
	by    closeBy
	wave  int
	// answered: when the OPTIONS answer was read; c-icap's idle timer of
	// the connection starts then.
	answered time.Time
}

// simultaneousCloseTie: two ends' first close signals closer than this on
// the wire may be ordered otherwise by the agent's hooks, whose clock is
// read at another point of the packet's way than the packet socket's.
const simultaneousCloseTie = 500 * time.Microsecond

// c-icap closes an idle connection this long after its idle close
// (KeepAlive+Timeout) is due, from the answer as the client reads it:
// 0.5 to 4.6 ms here.
const cicapCloseLate = 3 * time.Millisecond

// aimBefore: a wave's closes are aimed this long before the sock_diag
// poll, well within the reader's poll (50 ms), in which the kernel's
// events of them wait.
const aimBefore = 8 * time.Millisecond

func simultaneousCloses(t *testing.T, tls12 bool, output string) {
	srv := cicap.StartTest(t, cicap.Config{Workers: stressConns, KeepAlive: 2 * time.Second, Timeout: time.Second, TLS12: tls12})
	server := netip.MustParseAddrPort(srv.Addr())
	wire := captureLo(t, server)
	cfg := loopbackAgent(int(server.Port()))
	cfg.KernelEvents = output
	d, base, polls := runDaemonPolls(t, cfg)
	before := scrape(t, base+"/metrics")

	conns := dialStress(t, srv, stressConns)
	for i, c := range conns {
		c.wave = i * stressWaves / len(conns)
		c.by = [...]closeBy{byClientFIN, byClientRST, byServer, byServer}[i%4]
	}
	// The agent's second sock_diag poll comes sockDiagBeside after its
	// first, on the sweep grid, or a sweep interval later when the first
	// poll's timer ran later than the one due then: a wave is aimed at
	// each.
	aims := make([]time.Time, stressWaves)
	for k := range aims {
		aims[k] = polls.first.Add(sockDiagBeside + time.Duration(k)*cfg.SweepInterval - aimBefore)
	}
	results := make(chan waveResult, stressWaves)
	for k := range stressWaves {
		var wave []*stressConn
		for _, c := range conns {
			if c.wave == k {
				wave = append(wave, c)
			}
		}
		go func() {
			r := runWave(srv, wave, aims[k].Add(-srv.IdleClose()-cicapCloseLate))
			r.wave = k
			results <- r
		}()
	}
	waves := make([]waveResult, stressWaves)
	for range stressWaves {
		r := <-results
		if r.err != nil {
			t.Errorf("wave %d: %v", r.wave, r.err)
		}
		waves[r.wave] = r
	}
	if t.Failed() {
		t.FailNow()
	}
	ports := map[uint16]*stressConn{}
	for _, c := range conns {
		ports[c.local.Port()] = c
	}

	// The wire first: every connection began and ended on it.
	var truth map[uint16]*wireConn
	if !pollUntil(10*time.Second, func() bool {
		truth = wire.conns(!tls12)
		for _, c := range conns {
			if w := truth[c.local.Port()]; w == nil || !w.syn || !w.over() {
				return false
			}
		}
		return true
	}) {
		for _, c := range conns {
			t.Logf("wire %v", truth[c.local.Port()])
		}
		t.Fatalf("the wire does not show each of the %d connections begin and end within 10s", len(conns))
	}

	// The agent reports a close once both ends have closed, or at the
	// first sweep a race window after the first close signal (plus the
	// reader's lag): wait for one of each connection.
	var live []apiEvent
	liveCloses := func() map[string][]apiEvent {
		live = agentEvents(t, base, server)
		return eventsBy(live, func(e apiEvent) (string, bool) { return e.str("client_addr"), e.kind() == correlate.KindClose })
	}
	settle := cfg.Correlator.RaceWindow + 2*cfg.SweepInterval + polls.lag
	pollUntil(settle+2*time.Second, func() bool {
		got := liveCloses()
		return !slices.ContainsFunc(conns, func(c *stressConn) bool { return len(got[c.local.String()]) == 0 })
	})
	liveBy := liveCloses()
	after := scrape(t, base+"/metrics")

	// analyze, on the capture of the same moments, with the agent's
	// correlator settings.
	acfg := cfg.Correlator
	acfg.SweepInterval, acfg.MaxCatchUp = cfg.SweepInterval, cfg.SweepInterval // as NewDaemon sets them
	a, err := analyze.Run(wire.pcap(t), analyze.Config{Ports: []uint16{server.Port()}, Correlator: acfg, Server: server})
	if err != nil || a.Err != nil {
		t.Fatalf("analyze: %v, %v", err, a.Err)
	}
	offline := map[string][]apiEvent{}
	for _, e := range a.Events {
		if e.Kind() == correlate.KindClose {
			offline[e.ClientAddr.String()] = append(offline[e.ClientAddr.String()], toAPI(e))
		}
	}

	if drops := wire.drops(t); drops > 0 {
		t.Errorf("the packet socket dropped %d packets: the wire's account is incomplete", drops)
	}
	for _, name := range []string{"icapwatch_events_lost_total", "icapwatch_events_late_total"} {
		if d := sum(after, name, nil) - sum(before, name, nil); d != 0 {
			t.Errorf("%s went up by %v during the test", name, d)
		}
	}

	var ties, tiesAgree, unproven, problems int
	hows, initiators := map[string]int{}, map[string]int{}
	for _, c := range conns {
		addr := c.local.String()
		w := truth[c.local.Port()]
		end := provableEnds(wire, c.local.Port(), !tls12)
		lc, oc := liveBy[addr], offline[addr]
		problem := func(format string, args ...any) {
			t.Helper()
			t.Errorf("%s (wave %d, closed by %v): %s\n  wire: %v\n  provable: %v\n  live closes: %v\n  analyze closes: %v",
				addr, c.wave, c.by, fmt.Sprintf(format, args...), w, end, lc, oc)
			if problems++; problems <= 3 { // the first few in full
				dumpConn(t, wire, c.local, live, a.Events)
			}
		}
		if testing.Verbose() {
			t.Logf("%s wave %d %-24v %s, %v; server closed %v after the answer", addr, c.wave, c.by, w.end, end,
				w.serverClose.Sub(c.answered))
		}
		if len(lc) != 1 || len(oc) != 1 {
			problem("%d live and %d analyze close events, want one each", len(lc), len(oc))
			continue
		}
		hows[w.end]++
		initiators[end.initiator]++
		if lh, oh := lc[0].str("how"), oc[0].str("how"); lh != w.end || oh != w.end {
			problem("how: live %q, analyze %q, the wire %q", lh, oh, w.end)
		}
		li, oi := lc[0].str("initiator"), oc[0].str("initiator")
		if end.initiator != w.initiator() {
			// A TLS 1.3 close_notify is known by its length only when its
			// sender's FIN or reset follows it; here it did not (the
			// other end's reset came first): neither the kernel nor
			// analyze can tell it from data.
			unproven++
		}
		if end.tie() {
			ties++
			if li != oi {
				t.Logf("%s: ends closed %v apart on the wire (%s first there): live says %s, analyze %s; hooks and packet socket may order a tie differently",
					addr, end.apart(), end.initiator, li, oi)
			} else {
				tiesAgree++
			}
			continue
		}
		if li != end.initiator || oi != end.initiator {
			problem("initiator: live %q, analyze %q, the wire %q (ends %v apart)", li, oi, end.initiator, end.apart())
		}
	}
	// No connection of the test's has more than it should.
	for addr, es := range liveBy {
		if p, _ := netip.ParseAddrPort(addr); ports[p.Port()] == nil && truth[p.Port()] != nil && truth[p.Port()].syn {
			t.Errorf("live close events %v of a connection the test did not open", es)
		}
	}
	var timing []string
	for k, r := range waves {
		first := firstClose(truth, r.addrs)
		timing = append(timing, fmt.Sprintf("wave %d: first server close %v before the aimed poll (%d conns closed by the client at once within %v, %d after the server)",
			k, aims[k].Add(aimBefore).Sub(first).Round(10*time.Microsecond), r.clientClosed, r.span.Round(10*time.Microsecond), r.answered))
	}
	t.Logf("%d connections, hows %v, initiators %v; %d ties (< %v apart), live and analyze agree on %d; %d TLS 1.3 close_notify unprovable by length; output %s\n  %s",
		len(conns), hows, initiators, ties, simultaneousCloseTie, tiesAgree, unproven, d.KernelEvents(), strings.Join(timing, "\n  "))
}

// daemonPolls is when the agent polls sock_diag: first at its first
// sweep tick, a sweep interval and its lag after it is ready (Run), then
// at the first tick sockDiagBeside or more after the last.
type daemonPolls struct {
	first time.Time
	lag   time.Duration
}

// runDaemonPolls is runDaemon that also says when the agent polls
// sock_diag: it watches for the moment the agent is ready closely.
func runDaemonPolls(t *testing.T, cfg DaemonConfig) (*Daemon, string, daemonPolls) {
	t.Helper()
	d, base := launchDaemon(t, cfg)
	if !pollEvery(30*time.Second, 50*time.Microsecond, d.ready.Load) {
		t.Fatal("agent not ready within 30s")
	}
	ready := time.Now()
	waitReady(t, base)
	d.mu.Lock() // the lag is set before the source is told, under the lock
	lag := d.lag
	d.mu.Unlock()
	return d, base, daemonPolls{first: ready.Add(cfg.SweepInterval + lag), lag: lag}
}

// dialStress opens n TLS connections to the server. They are closed when
// the test ends, if the test has not.
func dialStress(t *testing.T, srv *cicap.Server, n int) []*stressConn {
	t.Helper()
	tcfg := cicapTLS(t, srv)
	conns := make([]*stressConn, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range conns {
		wg.Go(func() { conns[i], errs[i] = dialOne(srv.Addr(), tcfg) })
	}
	wg.Wait()
	t.Cleanup(func() {
		for _, c := range conns {
			if c != nil {
				c.tcp.Close()
			}
		}
	})
	for _, err := range errs {
		if err != nil {
			t.Fatalf("dial c-icap: %v", err)
		}
	}
	return conns
}

func dialOne(addr string, cfg *tls.Config) (*stressConn, error) {
	raw, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	tcp := raw.(*net.TCPConn)
	c := tls.Client(tcp, cfg)
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if err := c.Handshake(); err != nil {
		tcp.Close()
		return nil, err
	}
	c.SetDeadline(time.Time{})
	return &stressConn{tcp: tcp, tls: c, r: bufio.NewReader(c), local: tcp.LocalAddr().(*net.TCPAddr).AddrPort()}, nil
}

// options sends an OPTIONS and reads its answer, which has no body.
func (c *stressConn) options(addr string) error {
	c.tls.SetDeadline(time.Now().Add(10 * time.Second))
	defer c.tls.SetDeadline(time.Time{})
	req := "OPTIONS icap://" + addr + "/" + cicap.Service + " ICAP/1.0\r\nHost: " + addr + "\r\nEncapsulated: null-body=0\r\n\r\n"
	if _, err := io.WriteString(c.tls, req); err != nil {
		return err
	}
	for first := true; ; first = false {
		line, err := c.r.ReadString('\n')
		if err != nil {
			return fmt.Errorf("%s: %w", c.local, err)
		}
		if first && !strings.HasPrefix(line, "ICAP/1.0 200") {
			return fmt.Errorf("%s: OPTIONS answered %q", c.local, strings.TrimSpace(line))
		}
		if line == "\r\n" {
			c.answered = time.Now()
			return nil
		}
	}
}

// waveResult is how a wave's closes went, as the client saw them.
type waveResult struct {
	wave                   int
	addrs                  []netip.AddrPort
	clientClosed, answered int
	span                   time.Duration // from the client's first close to its last
	err                    error
}

// runWave sends an OPTIONS on every connection of a wave at once, to be
// answered at answerAt (or at once, when that has passed), then closes
// them together (closeTogether).
func runWave(srv *cicap.Server, wave []*stressConn, answerAt time.Time) waveResult {
	res := waveResult{}
	for _, c := range wave {
		res.addrs = append(res.addrs, c.local)
	}
	// Not a wait for something to happen: the moment the wave's idle
	// timers start is the test's choice. c-icap answers within a
	// millisecond.
	time.Sleep(time.Until(answerAt.Add(-time.Millisecond)))
	errs := make([]error, len(wave))
	var wg sync.WaitGroup
	for i, c := range wave {
		wg.Go(func() { errs[i] = c.options(srv.Addr()) })
	}
	wg.Wait()
	if res.err = errors.Join(errs...); res.err != nil {
		res.err = fmt.Errorf("OPTIONS: %w", res.err)
		return res
	}
	closeTogether(wave, srv.IdleClose(), &res)
	return res
}

// closeTogether keeps a read posted on every connection until the server
// closes one; at once then, the connections meant to be closed by the
// client are closed, together, each as it is meant to, and each other
// one as the server's close reaches it. It returns when every connection
// is closed.
func closeTogether(conns []*stressConn, idleClose time.Duration, res *waveResult) {
	release := make(chan struct{})
	var once sync.Once
	var mu sync.Mutex
	var first, last time.Time
	var unexpected []error
	var wg sync.WaitGroup
	for _, c := range conns {
		// The reader: the server's close (its close_notify, its FIN or a
		// reset) ends the read; the first one releases the client's closes.
		wg.Go(func() {
			buf := make([]byte, 512)
			for {
				n, err := c.r.Read(buf)
				if n > 0 {
					mu.Lock()
					unexpected = append(unexpected, fmt.Errorf("%s: %d unexpected bytes from the server: %q", c.local, n, buf[:n]))
					mu.Unlock()
				}
				if err != nil {
					break
				}
			}
			once.Do(func() { close(release) })
			if c.by == byServer {
				// As an application does: the server's close is answered
				// with the client's own.
				c.tls.Close()
				mu.Lock()
				res.answered++
				mu.Unlock()
			}
		})
		if c.by == byServer {
			continue
		}
		wg.Go(func() {
			<-release
			switch c.by {
			case byClientFIN:
				c.tls.Close()
			case byClientRST:
				c.tcp.SetLinger(0)
				c.tcp.Close()
			}
			mu.Lock()
			defer mu.Unlock()
			now := time.Now()
			if first.IsZero() {
				first = now
			}
			last = now
			res.clientClosed++
		})
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(idleClose + 15*time.Second):
		for _, c := range conns {
			c.tcp.Close()
		}
		<-done
		unexpected = append(unexpected, fmt.Errorf("the connections did not all close within %v of c-icap's idle close", idleClose+15*time.Second))
	}
	res.span = last.Sub(first)
	res.err = errors.Join(unexpected...)
}

// eventsBy groups events by a key; keep says which count and their key.
func eventsBy(es []apiEvent, keep func(apiEvent) (string, bool)) map[string][]apiEvent {
	out := map[string][]apiEvent{}
	for _, e := range es {
		if k, ok := keep(e); ok {
			out[k] = append(out[k], e)
		}
	}
	return out
}

// toAPI is an event of analyze as /api/v1/events writes it.
func toAPI(e correlate.Event) apiEvent {
	b, err := json.Marshal(e)
	if err != nil {
		return apiEvent{"error": err.Error()}
	}
	var out apiEvent
	if err := json.Unmarshal(b, &out); err != nil {
		return apiEvent{"error": err.Error()}
	}
	return out
}

// closeEnds are each end's first close signal on the wire that the
// kernel's rules can know for one: a FIN, a reset, a TLS alert record,
// and on TLS 1.3 a lone 19-byte record only when its sender's FIN or
// reset follows it (the length rule), or the reset that proves the
// other end's; zero where that end sent none.
type closeEnds struct {
	client, server time.Time
	initiator      string
}

func (e closeEnds) apart() time.Duration {
	if e.client.IsZero() || e.server.IsZero() {
		return -1 // one end only
	}
	return e.client.Sub(e.server).Abs()
}

// tie: both ends closed, too close together on the wire to say which
// the agent's clock saw first.
func (e closeEnds) tie() bool {
	d := e.apart()
	return d >= 0 && d < simultaneousCloseTie
}

func (e closeEnds) String() string {
	at := func(t time.Time) string {
		if t.IsZero() {
			return "-"
		}
		return t.Format(time.StampMicro)
	}
	return fmt.Sprintf("client %s, server %s: %s first, %v apart", at(e.client), at(e.server), e.initiator, e.apart())
}

// provableEnds reads a connection's close signals from the wire's
// segments by the kernel's rules.
func provableEnds(c *loCapture, port uint16, tls13 bool) closeEnds {
	c.mu.Lock()
	segs := slices.Clone(c.segs)
	c.mu.Unlock()
	var ends [2]time.Time // client, server
	var held [2]time.Time // a lone 19-byte record waiting for its proof
	var hello, served bool
	for _, s := range segs {
		if s.client != port {
			continue
		}
		side := 0
		if s.fromServer {
			side = 1
		}
		first := func(at time.Time) { ends[side] = earliest(ends[side], at) }
		switch {
		case !s.fromServer && s.payload > 0:
			hello = true
		case s.fromServer && s.payload > 0 && hello:
			served = true
		}
		lone := tls13 && served && len(s.records) == 1 && s.records[0].typ == 23 && s.records[0].len == 19 && s.payload == 5+19
		switch {
		case s.fin || s.rst:
			if !held[side].IsZero() && s.payload == 0 {
				first(held[side]) // proved: the record was a close_notify
				if other := 1 - side; s.rst && !held[other].IsZero() {
					// The reset proves the other end's unanswered one too.
					ends[other] = earliest(ends[other], held[other])
					held[other] = time.Time{}
				}
			}
			first(s.at)
			held[side] = time.Time{}
		case lone:
			held[side] = s.at
		case s.payload > 0:
			held[side] = time.Time{} // the held record was data after all
			if !tls13 && served && slices.ContainsFunc(s.records, func(r tlsRecord) bool { return r.typ == 21 }) {
				first(s.at)
			}
		}
	}
	e := closeEnds{client: ends[0], server: ends[1], initiator: "neither end"}
	switch {
	case e.client.IsZero() && e.server.IsZero():
	case e.client.IsZero() || !e.server.IsZero() && e.server.Before(e.client):
		e.initiator = "server"
	default:
		e.initiator = "client"
	}
	return e
}

// earliest is the earlier of two times, zero meaning none.
func earliest(a, b time.Time) time.Time {
	if a.IsZero() || !b.IsZero() && b.Before(a) {
		return b
	}
	return a
}

// dumpConn logs what the wire, the agent and analyze have of one
// connection.
func dumpConn(t *testing.T, c *loCapture, client netip.AddrPort, live []apiEvent, offline []correlate.Event) {
	t.Helper()
	c.mu.Lock()
	segs := slices.Clone(c.segs)
	c.mu.Unlock()
	var b strings.Builder
	for _, s := range segs {
		if s.client != client.Port() {
			continue
		}
		from := "client"
		if s.fromServer {
			from = "server"
		}
		var flags []string
		for _, f := range []struct {
			on   bool
			name string
		}{{s.syn, "SYN"}, {s.fin, "FIN"}, {s.rst, "RST"}} {
			if f.on {
				flags = append(flags, f.name)
			}
		}
		fmt.Fprintf(&b, "\n    %s %s %v payload %d records %v", s.at.Format(time.StampMicro), from, flags, s.payload, s.records)
	}
	for _, e := range live {
		if e.str("client_addr") == client.String() {
			fmt.Fprintf(&b, "\n    live %v", e)
		}
	}
	for _, e := range offline {
		if e.ClientAddr == client {
			fmt.Fprintf(&b, "\n    analyze %v", toAPI(e))
		}
	}
	t.Logf("%s:%s", client, b.String())
}

// TestSockDiagPollAheadOfKernelCloses is TestSimultaneousCloses's lost
// closes replayed without a kernel: beside the kernel probes, sock_diag
// polls every few seconds (sockDiagBeside) and its observations reach the
// correlator at once, stamped with the poll's time, while the kernel's
// reach it up to the daemon's lag later (the reader's polls and the
// reorder window). A poll that falls between a close and the kernel's
// events of it finds the sockets gone or closing first, and the daemon's
// tick sweeps right after it (Run: diag.Poll, then Advance). Told first,
// sockets gone made the sweep report the close with no close signal seen
// (no event), and a TIME_WAIT's two FINs at the poll's time made it the
// client's. Each connection must close once, as the kernel's signals say.
func TestSockDiagPollAheadOfKernelCloses(t *testing.T) {
	const lag = 100 * time.Millisecond // 2 × the reader's 50 ms poll, ring buffer
	for _, tc := range []struct {
		name string
		// serverEnd: the server end's socket at the poll (0: gone).
		serverEnd observe.TCPState
	}{
		// c-icap closes (close_notify, FIN); the client answers with its
		// own close_notify, which the closed server end resets: both
		// sockets are gone within microseconds.
		{"both ends gone", 0},
		// The client's answer came as a FIN: the server end lingers in
		// TIME_WAIT, which tells both FINs.
		{"server end in TIME_WAIT", observe.TCPTimeWait},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			diag := newDiagTracker(false)
			kernel := func(kind observe.Kind, dir observe.Direction, s float64) observe.Observation {
				return observe.Observation{Kind: kind, Source: observe.SourceKernel, Time: at(s), Flow: flowA, Dir: dir,
					Phase: observe.PhaseRequest, PID: 77, Comm: "scanapp"}
			}
			state := func(dir observe.Direction, from, to observe.TCPState, s float64) observe.Observation {
				o := kernel(observe.State, dir, s)
				o.OldState, o.NewState = from, to
				return o
			}
			// tick is the daemon's: a sock_diag poll at s, then the sweep
			// for s minus the lag.
			tick := func(s float64, socks ...Socket) {
				h.now = at(s)
				diag.update(h.now, socks, h.c.Observe)
				h.c.Sweep(at(s).Add(-lag))
			}
			end := func(client bool, st observe.TCPState) Socket {
				return Socket{Flow: flowA, ClientEnd: client, State: st, PID: 77, Comm: "scanapp"}
			}

			// A connection, one exchange, then idle; sock_diag sees both ends.
			h.observe(state(observe.ToServer, observe.TCPSynSent, observe.TCPEstablished, 0))
			h.observe(state(observe.ToClient, observe.TCPSynRecv, observe.TCPEstablished, 0.0001))
			h.observe(kernel(observe.ExchangeStart, observe.ToServer, 1))
			h.observe(kernel(observe.Answer, observe.ToClient, 1.01))
			tick(3, end(true, observe.TCPEstablished), end(false, observe.TCPEstablished))

			// At 6 s the server closes, the client answers. The next poll,
			// at 6.05 s, comes before the kernel's events of it.
			var socks []Socket
			if tc.serverEnd != 0 {
				socks = append(socks, end(false, tc.serverEnd))
			}
			tick(6.05, socks...)
			alert := kernel(observe.TLSAlert, observe.ToClient, 6.0003)
			alert.Flags, alert.Ref = observe.Probable, at(6)
			for _, o := range []observe.Observation{
				alert,
				kernel(observe.FIN, observe.ToClient, 6.0003),
				state(observe.ToServer, observe.TCPEstablished, observe.TCPCloseWait, 6.0004),
				state(observe.ToServer, observe.TCPCloseWait, observe.TCPLastAck, 6.0006),
				kernel(observe.FIN, observe.ToServer, 6.0006),
				state(observe.ToServer, observe.TCPLastAck, observe.TCPClose, 6.0008),
			} {
				h.observe(o) // at 6.1 s, the lag later: their own times
			}
			for s := 6.2; s < 9; s += 0.2 {
				tick(s, socks...)
			}

			var closes []correlate.Event
			for _, e := range h.events {
				if e.Kind() == correlate.KindClose {
					closes = append(closes, e)
				}
			}
			if len(closes) != 1 || closes[0].Field("initiator") != "server" || closes[0].Field("how") != "fin" {
				var all []string
				for _, e := range h.events {
					all = append(all, fmt.Sprint(e.LogArgs()))
				}
				t.Errorf("close events %d, want one by the server with a FIN; events:\n  %s", len(closes), strings.Join(all, "\n  "))
			}
		})
	}
}
