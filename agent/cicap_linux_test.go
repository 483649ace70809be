package agent

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"
	"github.com/icapwatch/icapwatch/agent/correlate"
	"github.com/icapwatch/icapwatch/icap"
	"github.com/icapwatch/icapwatch/internal/cicap"
	"github.com/icapwatch/icapwatch/internal/testutil"
	dto "github.com/prometheus/client_model/go"
	"golang.org/x/sys/unix"
)

// TestCICap is the seed against a real ICAP server, Debian's c-icap, which
// gives each connection a worker for as long as it stays open: with two
// workers, an application's pool holds two idle persistent connections
// and then needs a third, whose TLS handshake the server's kernel ACKs
// and no worker answers until c-icap idle-closes one of the two. The
// agent runs with real eBPF on lo; what it says is checked against what
// happened, as c-icap's own log and the wire (a packet socket on lo) tell
// it, and as the application's TLS stack saw it.
func TestCICap(t *testing.T) {
	testutil.RequireRoot(t)
	for _, tc := range []struct {
		name  string
		tls12 bool
		// version is the tls_version of the server's alerts: a TLS 1.2
		// alert record, or a TLS 1.3 close_notify known by its length.
		version string
	}{{"tls13", false, "1.3?"}, {"tls12", true, "1.2"}} {
		t.Run(tc.name, func(t *testing.T) { cicapSeed(t, tc.tls12, tc.version) })
	}
}

func cicapSeed(t *testing.T, tls12 bool, version string) {
	srv := cicap.StartTest(t, cicap.Config{Workers: 2, KeepAlive: 3 * time.Second, Timeout: 2 * time.Second, TLS12: tls12})
	server := netip.MustParseAddrPort(srv.Addr())
	wire := captureLo(t, server)
	cfg := loopbackAgent(int(server.Port()))
	threshold := cfg.Correlator.StallThreshold
	if threshold >= srv.IdleClose()/2 {
		t.Fatalf("stall threshold %v: the stall lasts about c-icap's idle close, %v; it must be well below", threshold, srv.IdleClose())
	}
	_, base := runDaemon(t, cfg)
	metricsBefore := scrape(t, base+"/metrics")

	pool := newPoolWatch()
	dialer := &gatedDialer{}
	client, err := icap.NewClient(icap.Config{Target: srv.Target(), CAFile: srv.CAFile(), MaxConns: 3,
		MaxIdle: time.Hour, Timeout: 30 * time.Second, Dialer: dialer, Observer: pool.observer()})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()

	// Two requests at once: two connections, which go idle after their
	// answers, each holding one of the server's two workers.
	allAnswered(t, poolBurst(client, dialer, 2))
	waitCond(t, 5*time.Second, "two idle connections in the pool", func() bool { return client.Stats().Idle == 2 })
	idle := pool.opened()

	// Three at once: two reuse the idle connections, the third needs one
	// of its own. Its handshake waits while the other two, answered, idle
	// again and hold both workers. While it waits, the agent shows it
	// stalled, live.
	// c-icap's log, to the second, has this step's ends from the next
	// second on (they come an idle close later); the readiness check's,
	// from before the agent started, are all before.
	logFrom := time.Now().Truncate(time.Second).Add(time.Second)
	done := make(chan []burstResult, 1)
	go func() { done <- poolBurst(client, dialer, 3) }()
	waitCond(t, 10*time.Second, "a third connection", func() bool { return len(pool.opened()) == 3 })
	third := pool.opened()[2]
	var live correlate.OpenExchange
	waitCond(t, srv.IdleClose(), "the third connection's handshake shown stalled while it waits", func() bool {
		var ex struct {
			Exchanges []correlate.OpenExchange `json:"exchanges"`
		}
		getJSON(t, base+"/api/v1/exchanges", &ex)
		for _, e := range ex.Exchanges {
			if e.ClientAddr == third.String() && e.State != "open" {
				live = e
				return true
			}
		}
		return false
	})
	if live.State != correlate.StateAckedSilent || live.Phase != "handshake" || !live.Acked {
		t.Errorf("the waiting handshake is shown as %+v, want an acked_silent handshake stall", live)
	}
	var results []burstResult
	select {
	case results = <-done:
	case <-time.After(srv.IdleClose() + 20*time.Second):
		t.Fatal("the three requests did not end")
	}
	allAnswered(t, results)
	var fresh []burstResult
	for _, r := range results {
		if !r.trace.Reused {
			fresh = append(fresh, r)
		}
	}
	if len(fresh) != 1 || fresh[0].trace.Conn.Local != third {
		t.Fatalf("want one request on a new connection, %s; got %d: %+v", third, len(fresh), fresh)
	}
	// The application's own measure of the wait: its handshake.
	if tr := fresh[0].trace; tr.TLS < threshold {
		t.Fatalf("the third connection's handshake took %v, less than the stall threshold %v: the server did not make it wait", tr.TLS, threshold)
	}

	// c-icap idle-closes every connection in turn: the two that held its
	// workers, then the third. The application sees each close, the wire
	// its last packets from both ends, the server's log each end.
	conns := append(idle, third)
	waitCond(t, 2*srv.IdleClose()+10*time.Second, "the application to see the server close its three connections",
		func() bool { return len(pool.closed()) == 3 })
	for addr, ci := range pool.closed() {
		if ci.Initiator != "server" || ci.Alert != "close_notify" || !ci.Idle {
			t.Errorf("the application saw %s closed %+v, want an idle close by the server with close_notify", addr, ci)
		}
	}
	var truth map[uint16]*wireConn
	if !pollUntil(10*time.Second, func() bool {
		truth = wire.conns(!tls12)
		for _, a := range conns {
			if c := truth[a.Port()]; c == nil || !c.over() {
				return false
			}
		}
		return true
	}) {
		t.Fatalf("the wire does not show the end of each of %v within 10s: %v", conns, truth)
	}
	if drops := wire.drops(t); drops > 0 {
		t.Fatalf("the packet socket dropped %d packets: the wire's account is incomplete", drops)
	}
	ends := waitEnds(t, srv, logFrom, 3)

	// The ground truth, checked first: what the agent is held to.
	for _, a := range conns {
		c := truth[a.Port()]
		if c.initiator() != "server" {
			t.Fatalf("on the wire %s was closed first by the %s, not by c-icap: %s", a, c.initiator(), c)
		}
	}
	// Any other connection is the readiness check's, whose last packets
	// may follow Start: none began on the wire.
	for port, c := range truth {
		if c.syn && !slices.ContainsFunc(conns, func(a netip.AddrPort) bool { return a.Port() == port }) {
			t.Errorf("the wire has a connection to %s the pool did not open: %s", server, c)
		}
	}
	if len(ends) != 3 {
		t.Fatalf("c-icap's log has %d connection ends since %v, want 3 (its idle closes)\n%s", len(ends), logFrom.Format(time.Stamp), srv.Log())
	}
	var closes []time.Time
	for _, a := range conns {
		closes = append(closes, truth[a.Port()].serverClose)
	}
	slices.SortFunc(closes, time.Time.Compare)
	for i, at := range closes {
		// The log is to the second, written as the worker lets go.
		if d := at.Sub(ends[i]); d < -time.Second || d > 2*time.Second {
			t.Errorf("the wire's server close %d at %v, c-icap logged its end at %v", i, at.Format(time.StampMicro), ends[i].Format(time.Stamp))
		}
	}
	c3 := truth[third.Port()]
	waited := c3.served.Sub(c3.hello)
	if waited < threshold {
		t.Fatalf("on the wire the third handshake was answered after %v, below the stall threshold", waited)
	}

	// The agent: everything about these connections, once their closes
	// are out (a close waits for the other end's signals).
	var evs []apiEvent
	waitCond(t, 10*time.Second, "the agent's close events of the three connections", func() bool {
		evs = agentEvents(t, base, server)
		n := 0
		for _, e := range evs {
			if e.kind() == correlate.KindClose {
				n++
			}
		}
		return n >= 3
	})
	defer func() {
		if t.Failed() {
			for _, c := range truth {
				t.Logf("wire %s", c)
			}
			for _, e := range evs {
				t.Logf("event %v", e)
			}
		}
	}()
	pooled := map[string]bool{}
	for _, a := range conns {
		pooled[a.String()] = true
	}
	byKind := map[correlate.Kind][]apiEvent{}
	for _, e := range evs {
		if !pooled[e.str("client_addr")] {
			t.Errorf("event of a connection the pool did not open: %v", e)
			continue
		}
		byKind[e.kind()] = append(byKind[e.kind()], e)
	}

	// One stall, the third connection's handshake: ACKed by the server's
	// kernel, unanswered by c-icap.
	if s := byKind[correlate.KindStall]; len(s) != 1 || s[0].str("client_addr") != third.String() ||
		s[0].str("state") != correlate.StateAckedSilent || s[0].str("phase") != "handshake" || s[0]["acked_after_seconds"] == nil {
		t.Errorf("stall events %v, want one acked_silent handshake stall of %s", s, third)
	}
	// It ended answered, when the wire shows the ServerHello.
	if s := byKind[correlate.KindStallEnd]; len(s) != 1 || s[0].str("client_addr") != third.String() ||
		s[0].str("outcome") != correlate.OutcomeAnswered || s[0].str("phase") != "handshake" || !onWire(s[0].num("duration_seconds"), waited) {
		t.Errorf("stall_end events %v, want one of %s answered after %v", s, third, waited)
	}
	// Released by the server's close of one of the two idle connections:
	// the one the agent names closed first by the server on the wire,
	// within the release window before the ServerHello.
	checkRelease(t, byKind[correlate.KindRelease], third, idle, truth, c3.served, cfg.Correlator.ReleaseWindow)
	// Each connection: the server's alert as the wire has it, with the
	// version it was sent in, the client's answering alert, and a close
	// by the server, as the wire ended it.
	hows := map[string]float64{}
	for _, a := range conns {
		c := truth[a.Port()]
		var server, client, closes []apiEvent
		for _, e := range byKind[correlate.KindTLSAlert] {
			if e.str("client_addr") != a.String() {
				continue
			}
			if e.str("direction") == "server" {
				server = append(server, e)
			} else {
				client = append(client, e)
			}
		}
		for _, e := range byKind[correlate.KindClose] {
			if e.str("client_addr") == a.String() {
				closes = append(closes, e)
			}
		}
		if len(server) != 1 || server[0].str("tls_version") != version || (server[0].time(t).Sub(c.serverClose)).Abs() > timeSlack {
			t.Errorf("%s: server alerts %v, want one, tls_version %q, at the wire's %v", a, server, version, c.serverClose.Format(time.StampMicro))
		}
		// The client's close_notify, which Go's TLS sends as it closes:
		// on TLS 1.2 an alert record. On TLS 1.3 the length rule needs the
		// client's own FIN or reset behind it, and here the server's reset
		// (c-icap has closed) comes first: it is not known for sure.
		if tls12 && len(client) != c.clientAlerts {
			t.Errorf("%s: client alerts %v, the wire has %d", a, client, c.clientAlerts)
		}
		if len(closes) != 1 || closes[0].str("initiator") != "server" || closes[0].str("how") != c.end ||
			closes[0]["open_exchange"] != false {
			t.Errorf("%s: close events %v, want one by the server, how %q, no exchange open", a, closes, c.end)
		}
		hows[c.end]++
	}

	// The metrics say the same.
	checkDeltas(t, metricsBefore, scrape(t, base+"/metrics"), server, []metricDelta{
		{"icapwatch_stalls_total", map[string]string{}, 1},
		{"icapwatch_stalls_total", map[string]string{"state": correlate.StateAckedSilent}, 1},
		{"icapwatch_stalled_exchanges", map[string]string{}, 0},
		{"icapwatch_stall_outcomes_total", map[string]string{"outcome": correlate.OutcomeAnswered}, 1},
		{"icapwatch_stall_releases_total", map[string]string{"cause": correlate.ReleaseCause}, 1},
		{"icapwatch_tls_alerts_total", map[string]string{"direction": "server"}, 3},
		{"icapwatch_connection_closes_total", map[string]string{"initiator": "client"}, 0},
		{"icapwatch_connection_closes_total", map[string]string{"initiator": "server", "how": "fin"}, hows["fin"]},
		{"icapwatch_connection_closes_total", map[string]string{"initiator": "server", "how": "rst"}, hows["rst"]},
	})
	t.Logf("stall %v on %s, released %v after the server closed a sibling; closes: %v", waited, third, c3.served.Sub(firstClose(truth, idle)), hows)
}

// waitEnds waits until c-icap's log has at least n connection ends
// logged at from or later, and returns them.
func waitEnds(t *testing.T, s *cicap.Server, from time.Time, n int) []time.Time {
	t.Helper()
	var ends []time.Time
	waitCond(t, 5*time.Second, fmt.Sprintf("%d connection ends in c-icap's log", n), func() bool {
		all, err := s.Ends()
		if err != nil {
			t.Fatal(err)
		}
		ends = slices.DeleteFunc(all, func(at time.Time) bool { return at.Before(from) })
		return len(ends) >= n
	})
	return ends
}

// cicapTLS is a TLS client's setting that trusts the instance.
func cicapTLS(t *testing.T, srv *cicap.Server) *tls.Config {
	t.Helper()
	roots, err := icap.LoadCAFile(srv.CAFile())
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{RootCAs: roots, ServerName: "127.0.0.1"}
}

// waitCond polls cond until it holds, and fails the test when it does
// not within the bound.
func waitCond(t *testing.T, bound time.Duration, what string, cond func() bool) {
	t.Helper()
	if !pollUntil(bound, cond) {
		t.Fatalf("no %s within %v", what, bound)
	}
}

// pollUntil polls cond until it holds, for up to bound.
func pollUntil(bound time.Duration, cond func() bool) bool {
	return pollEvery(bound, 50*time.Millisecond, cond)
}

// pollEvery is pollUntil at another pace.
func pollEvery(bound, every time.Duration, cond func() bool) bool {
	for deadline := time.Now().Add(bound); !cond(); time.Sleep(every) {
		if time.Now().After(deadline) {
			return false
		}
	}
	return true
}

// firstClose is when the server first closed one of the connections.
// timeSlack: the agent's kernel times against the packet socket's.
const timeSlack = 20 * time.Millisecond

// onWire: a duration in seconds from the agent is the wire's, within
// timeSlack.
func onWire(got float64, want time.Duration) bool {
	return (time.Duration(got*float64(time.Second)) - want).Abs() <= timeSlack
}

// metricDelta: a metric, summed over the series with these labels (and
// the server's), went up by want.
type metricDelta struct {
	name   string
	labels map[string]string
	want   float64
}

// checkDeltas compares what the metrics went up by between two scrapes,
// and checks that no event was lost or late.
func checkDeltas(t *testing.T, before, after map[string]*dto.MetricFamily, server netip.AddrPort, want []metricDelta) {
	t.Helper()
	for _, m := range want {
		m.labels["server"] = server.String()
		if got := sum(after, m.name, m.labels) - sum(before, m.name, m.labels); got != m.want {
			t.Errorf("%s%v went up by %v, want %v", m.name, m.labels, got, m.want)
		}
	}
	for _, name := range []string{"icapwatch_events_lost_total", "icapwatch_events_late_total"} {
		if got := sum(after, name, nil) - sum(before, name, nil); got != 0 {
			t.Errorf("%s went up by %v: the agent's account is incomplete", name, got)
		}
	}
}

// checkRelease: one release, of the third connection, naming as its
// sibling one of the idle connections, which the server closed on the
// wire within the window before the third's ServerHello (served), with
// after_close_seconds as the wire has it.
func checkRelease(t *testing.T, releases []apiEvent, third netip.AddrPort, idle []netip.AddrPort,
	truth map[uint16]*wireConn, served time.Time, window time.Duration) {
	t.Helper()
	if len(releases) != 1 || releases[0].str("client_addr") != third.String() {
		t.Errorf("release events %v, want one of %s", releases, third)
		return
	}
	r := releases[0]
	sib, err := netip.ParseAddrPort(r.str("sibling_client_addr"))
	c := truth[sib.Port()]
	switch {
	case err != nil || !slices.Contains(idle, sib):
		t.Errorf("release names sibling %q, want one of the idle connections %v", r.str("sibling_client_addr"), idle)
	case c.serverClose.After(served) || served.Sub(c.serverClose) > window:
		t.Errorf("release names %s, which the server closed at %v; the ServerHello came at %v",
			sib, c.serverClose.Format(time.StampMicro), served.Format(time.StampMicro))
	case !onWire(r.num("after_close_seconds"), served.Sub(c.serverClose)):
		t.Errorf("release after_close_seconds %v, the wire says %v", r.num("after_close_seconds"), served.Sub(c.serverClose))
	}
}

func firstClose(truth map[uint16]*wireConn, conns []netip.AddrPort) time.Time {
	var first time.Time
	for _, a := range conns {
		if at := truth[a.Port()].serverClose; first.IsZero() || at.Before(first) {
			first = at
		}
	}
	return first
}

type burstResult struct {
	trace *icap.Trace
	err   error
}

// poolBurst sends n RESPMODs at once, as an application with n scans to do.
// The dialer holds each request's writes until the pool has opened the
// connections it needs for all n at once: requests that overlap,
// whatever the scheduler does.
func poolBurst(c *icap.Client, d *gatedDialer, n int) []burstResult {
	d.arm(n - c.Stats().Open)
	defer d.arm(0)
	results := make([]burstResult, n)
	var wg sync.WaitGroup
	for i := range results {
		wg.Go(func() {
			req := icap.NewRequest("RESPMOD", c.Target().RequestURI())
			req.ResHdr = []byte("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\n")
			req.Body = []byte("clean")
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			var resp *icap.Response
			resp, results[i].trace, results[i].err = c.Do(ctx, req)
			if results[i].err == nil && resp.StatusCode != 200 && resp.StatusCode != 204 {
				results[i].err = fmt.Errorf("answered %d %s", resp.StatusCode, resp.Reason)
			}
		})
	}
	wg.Wait()
	return results
}

// allAnswered fails the test unless every request of a burst was answered.
func allAnswered(t *testing.T, results []burstResult) {
	t.Helper()
	for i, r := range results {
		if r.err != nil {
			t.Errorf("request %d of %d: %v", i+1, len(results), r.err)
		}
	}
	if t.Failed() {
		t.FailNow()
	}
}

// gatedDialer opens TCP connections for the pool and counts them. While
// armed, every write on its connections waits until the connections it
// was armed for have been opened.
type gatedDialer struct {
	mu    sync.Mutex
	dials int
	want  int
	gate  chan struct{} // closed when dials reaches want; nil: not armed
}

// arm makes writes wait for more new connections (0: none).
func (d *gatedDialer) arm(more int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.want, d.gate = d.dials+more, nil
	if more > 0 {
		d.gate = make(chan struct{})
	}
}

func (d *gatedDialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.dials++; d.gate != nil && d.dials == d.want {
		close(d.gate)
	}
	return &gatedConn{Conn: c, d: d}, nil
}

func (d *gatedDialer) wait() error {
	d.mu.Lock()
	gate := d.gate
	d.mu.Unlock()
	if gate == nil {
		return nil
	}
	select {
	case <-gate:
		return nil
	case <-time.After(10 * time.Second):
		return errors.New("the pool did not open the connections for the requests at once within 10s")
	}
}

type gatedConn struct {
	net.Conn
	d *gatedDialer
}

func (c *gatedConn) Write(p []byte) (int, error) {
	if err := c.d.wait(); err != nil {
		return 0, err
	}
	return c.Conn.Write(p)
}

// poolWatch is what the application's pool tells of its connections: the
// local addresses in the order they were opened, and how each closed.
type poolWatch struct {
	mu     sync.Mutex
	opens  []netip.AddrPort
	closes map[netip.AddrPort]icap.CloseInfo
}

func newPoolWatch() *poolWatch { return &poolWatch{closes: map[netip.AddrPort]icap.CloseInfo{}} }

func (p *poolWatch) observer() *icap.Observer {
	return &icap.Observer{
		ConnOpened: func(c icap.ConnInfo) {
			p.mu.Lock()
			defer p.mu.Unlock()
			p.opens = append(p.opens, c.Local)
		},
		ConnClosed: func(c icap.ConnInfo, ci icap.CloseInfo) {
			p.mu.Lock()
			defer p.mu.Unlock()
			p.closes[c.Local] = ci
		},
	}
}

func (p *poolWatch) opened() []netip.AddrPort {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.opens)
}

func (p *poolWatch) closed() map[netip.AddrPort]icap.CloseInfo {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make(map[netip.AddrPort]icap.CloseInfo, len(p.closes))
	for k, v := range p.closes {
		out[k] = v
	}
	return out
}

// apiEvent is one object of /api/v1/events.
type apiEvent map[string]any

func (e apiEvent) kind() correlate.Kind { return correlate.Kind(e.str("kind")) }

func (e apiEvent) str(key string) string {
	s, _ := e[key].(string)
	return s
}

func (e apiEvent) num(key string) float64 {
	f, _ := e[key].(float64)
	return f
}

func (e apiEvent) time(t *testing.T) time.Time {
	t.Helper()
	at, err := time.Parse(time.RFC3339Nano, e.str("time"))
	if err != nil {
		t.Fatalf("event time: %v", err)
	}
	return at
}

// agentEvents are the agent's events of one server.
func agentEvents(t *testing.T, base string, server netip.AddrPort) []apiEvent {
	t.Helper()
	var api struct {
		Events []apiEvent `json:"events"`
	}
	getJSON(t, base+"/api/v1/events", &api)
	var out []apiEvent
	for _, e := range api.Events {
		if e.str("server") == server.String() {
			out = append(out, e)
		}
	}
	return out
}

// loCapture records the TCP segments of one port on lo from a packet
// socket: the wire's account of the connections, which owes nothing to
// the agent. Each packet on lo passes the packet taps twice, leaving and
// arriving; only the leaving copy is kept.
type loCapture struct {
	server netip.AddrPort
	fd     int
	stop   chan struct{}
	done   chan struct{}

	mu   sync.Mutex
	segs []wireSegment
	// frames are the kept frames themselves, for analyze (pcap).
	frames []wireFrame
}

// wireFrame is one kept frame as the packet socket read it: Ethernet
// (lo's addresses are zeros), with the kernel's timestamp.
type wireFrame struct {
	at   time.Time
	data []byte
}

// wireSegment is one TCP segment of a connection to the port.
type wireSegment struct {
	at         time.Time // the kernel's timestamp
	client     uint16    // the client's port
	fromServer bool
	syn        bool
	fin, rst   bool
	payload    int
	// records are the TLS record headers that start in the segment,
	// walked from its first byte.
	records []tlsRecord
}

type tlsRecord struct {
	typ byte
	len int
}

func captureLo(t *testing.T, server netip.AddrPort) *loCapture {
	t.Helper()
	lo, err := net.InterfaceByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	proto := netOrder16(unix.ETH_P_ALL)
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(proto))
	if err != nil {
		testutil.SkipOrFail(t, "packet socket: %v", err)
	}
	c := &loCapture{server: server, fd: fd, stop: make(chan struct{}), done: make(chan struct{})}
	setup := func() error {
		// Only the port's IPv4 TCP segments pass the socket's filter.
		if err := unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_FILTER, wireFilter(server.Port())); err != nil {
			return fmt.Errorf("attach filter: %w", err)
		}
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 8<<20); err != nil {
			return fmt.Errorf("receive buffer: %w", err)
		}
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 1); err != nil {
			return fmt.Errorf("timestamps: %w", err)
		}
		// The reader looks at stop this often.
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Usec: 100000}); err != nil {
			return fmt.Errorf("receive timeout: %w", err)
		}
		return unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: proto, Ifindex: lo.Index})
	}
	if err := setup(); err != nil {
		unix.Close(fd)
		t.Fatalf("packet socket on lo: %v", err)
	}
	go c.read()
	t.Cleanup(func() {
		close(c.stop)
		<-c.done
		unix.Close(fd)
	})
	return c
}

func netOrder16(v uint16) uint16 { return v<<8 | v>>8 }

// wireFilter is a classic BPF program that passes IPv4 TCP frames from
// or to port: EtherType at 12, IP protocol at 14+9, the TCP ports at the
// IP header's length (its low nibble, times 4) past 14.
func wireFilter(port uint16) *unix.SockFprog {
	const accept, drop = 9, 10
	ins := []unix.SockFilter{
		{Code: unix.BPF_LD | unix.BPF_H | unix.BPF_ABS, K: 12},
		{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, K: unix.ETH_P_IP, Jf: drop - 2},
		{Code: unix.BPF_LD | unix.BPF_B | unix.BPF_ABS, K: 14 + 9},
		{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, K: unix.IPPROTO_TCP, Jf: drop - 4},
		{Code: unix.BPF_LDX | unix.BPF_B | unix.BPF_MSH, K: 14},
		{Code: unix.BPF_LD | unix.BPF_H | unix.BPF_IND, K: 14},
		{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, K: uint32(port), Jt: accept - 7},
		{Code: unix.BPF_LD | unix.BPF_H | unix.BPF_IND, K: 16},
		{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, K: uint32(port), Jt: accept - 9, Jf: drop - 9},
		{Code: unix.BPF_RET | unix.BPF_K, K: 1 << 18},
		{Code: unix.BPF_RET | unix.BPF_K, K: 0},
	}
	return &unix.SockFprog{Len: uint16(len(ins)), Filter: &ins[0]}
}

func (c *loCapture) read() {
	defer close(c.done)
	buf := make([]byte, 1<<18)
	oob := make([]byte, unix.CmsgSpace(16))
	for {
		select {
		case <-c.stop:
			return
		default:
		}
		n, oobn, _, from, err := unix.Recvmsg(c.fd, buf, oob, 0)
		if err != nil {
			continue // the receive timeout, or an interrupted call
		}
		if ll, ok := from.(*unix.SockaddrLinklayer); !ok || ll.Pkttype != unix.PACKET_OUTGOING {
			continue
		}
		seg, ok := parseSegment(buf[:n], c.server)
		if !ok {
			continue
		}
		seg.at = packetTime(oob[:oobn])
		c.mu.Lock()
		c.segs = append(c.segs, seg)
		c.frames = append(c.frames, wireFrame{at: seg.at, data: bytes.Clone(buf[:n])})
		c.mu.Unlock()
	}
}

// packetTime is the kernel's timestamp of a packet (SCM_TIMESTAMPNS).
func packetTime(oob []byte) time.Time {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return time.Now()
	}
	for _, m := range msgs {
		if m.Header.Level == unix.SOL_SOCKET && m.Header.Type == unix.SCM_TIMESTAMPNS && len(m.Data) >= 16 {
			return time.Unix(int64(binary.NativeEndian.Uint64(m.Data)), int64(binary.NativeEndian.Uint64(m.Data[8:])))
		}
	}
	return time.Now()
}

// parseSegment reads an Ethernet frame (lo's addresses are zeros) of an
// IPv4 TCP segment to or from server. Other connections may use its port
// number on other addresses, as a client's.
func parseSegment(b []byte, server netip.AddrPort) (wireSegment, bool) {
	var s wireSegment
	if len(b) < 14+20 || binary.BigEndian.Uint16(b[12:]) != unix.ETH_P_IP {
		return s, false
	}
	ip := b[14:]
	ihl, total := int(ip[0]&0x0f)*4, int(binary.BigEndian.Uint16(ip[2:]))
	if total == 0 || total > len(ip) {
		total = len(ip)
	}
	if ip[0]>>4 != 4 || ip[9] != unix.IPPROTO_TCP || ihl < 20 || total < ihl+20 {
		return s, false
	}
	tcp := ip[ihl:total]
	src, dst := binary.BigEndian.Uint16(tcp), binary.BigEndian.Uint16(tcp[2:])
	off := int(tcp[12]>>4) * 4
	if off < 20 || off > len(tcp) {
		return s, false
	}
	srcIP, dstIP := netip.AddrFrom4([4]byte(ip[12:16])), netip.AddrFrom4([4]byte(ip[16:20]))
	switch server {
	case netip.AddrPortFrom(dstIP, dst):
		s.client = src
	case netip.AddrPortFrom(srcIP, src):
		s.client, s.fromServer = dst, true
	default:
		return s, false
	}
	flags := tcp[13]
	s.syn, s.fin, s.rst = flags&0x02 != 0, flags&0x01 != 0, flags&0x04 != 0
	payload := tcp[off:]
	s.payload = len(payload)
	for at := 0; at+5 <= len(payload); {
		typ, length := payload[at], int(binary.BigEndian.Uint16(payload[at+3:]))
		if typ < 20 || typ > 23 || payload[at+1] != 3 {
			break // not a record header: the segment began inside a record
		}
		s.records = append(s.records, tlsRecord{typ, length})
		at += 5 + length
	}
	return s, true
}

// pcap writes the frames so far as a pcap file (Ethernet, nanosecond
// timestamps), in the order the socket read them, as a capture tool
// writes them: each packet once, as it left.
func (c *loCapture) pcap(t *testing.T) *bytes.Buffer {
	t.Helper()
	c.mu.Lock()
	frames := slices.Clone(c.frames)
	c.mu.Unlock()
	var buf bytes.Buffer
	w := pcapgo.NewWriterNanos(&buf)
	// The socket's filter keeps up to 1<<18 bytes of a frame (wireFilter).
	if err := w.WriteFileHeader(1<<18, layers.LinkTypeEthernet); err != nil {
		t.Fatal(err)
	}
	for _, f := range frames {
		ci := gopacket.CaptureInfo{Timestamp: f.at, CaptureLength: len(f.data), Length: len(f.data)}
		if err := w.WritePacket(ci, f.data); err != nil {
			t.Fatal(err)
		}
	}
	return &buf
}

// drops is how many packets the socket could not keep.
func (c *loCapture) drops(t *testing.T) uint32 {
	t.Helper()
	st, err := unix.GetsockoptTpacketStats(c.fd, unix.SOL_PACKET, unix.PACKET_STATISTICS)
	if err != nil {
		t.Fatal(err)
	}
	return st.Drops
}

// wireConn is one connection as the wire tells it.
type wireConn struct {
	client uint16
	syn    bool // it began on the wire
	// hello is the client's first bytes (its ClientHello), served the
	// server's first bytes after them.
	hello, served time.Time
	// Each end's first close signal: an alert record, a FIN or a RST.
	serverClose, clientClose time.Time
	clientAlerts             int     // alert records the client sent
	end                      string  // fin or rst: the connection's first FIN or RST, from either end
	fins, reset              [2]bool // a FIN, a RST from the client, the server
}

// over: a reset, or both ends' FIN.
func (c *wireConn) over() bool { return c.reset != [2]bool{} || c.fins == [2]bool{true, true} }

// initiator is the end whose close signal came first.
func (c *wireConn) initiator() string {
	switch {
	case c.serverClose.IsZero() && c.clientClose.IsZero():
		return "neither end"
	case c.clientClose.IsZero() || !c.serverClose.IsZero() && c.serverClose.Before(c.clientClose):
		return "server"
	}
	return "client"
}

func (c *wireConn) String() string {
	at := func(t time.Time) string {
		if t.IsZero() {
			return "-"
		}
		return t.Format(time.StampMicro)
	}
	return fmt.Sprintf("client port %d (SYN %v): hello %s served %s, server close %s, client close %s (%d alerts), first %s; FIN client %v server %v, RST client %v server %v",
		c.client, c.syn, at(c.hello), at(c.served), at(c.serverClose), at(c.clientClose), c.clientAlerts, c.end,
		c.fins[0], c.fins[1], c.reset[0], c.reset[1])
}

// conns reads the connections from the segments so far. An alert record
// is one of type alert (21); on TLS 1.3, whose records all say
// application data (23), an alert is a lone record of 19 bytes: a
// two-byte alert, its inner type and a 16-byte tag.
func (c *loCapture) conns(tls13 bool) map[uint16]*wireConn {
	c.mu.Lock()
	segs := slices.Clone(c.segs)
	c.mu.Unlock()
	isAlert := func(s wireSegment) bool {
		if len(s.records) == 0 || s.payload == 0 {
			return false
		}
		if tls13 {
			r := s.records[0]
			return len(s.records) == 1 && r.typ == 23 && r.len == 19 && s.payload == 5+19
		}
		return slices.ContainsFunc(s.records, func(r tlsRecord) bool { return r.typ == 21 })
	}
	out := map[uint16]*wireConn{}
	for _, s := range segs {
		w := out[s.client]
		if w == nil {
			w = &wireConn{client: s.client}
			out[s.client] = w
		}
		w.syn = w.syn || s.syn
		switch {
		case !s.fromServer && s.payload > 0 && w.hello.IsZero():
			w.hello = s.at
		case s.fromServer && s.payload > 0 && !w.hello.IsZero() && w.served.IsZero():
			w.served = s.at
		}
		closing := s.fin || s.rst
		if !w.served.IsZero() && isAlert(s) {
			closing = true
			if !s.fromServer {
				w.clientAlerts++
			}
		}
		if closing {
			side := &w.clientClose
			if s.fromServer {
				side = &w.serverClose
			}
			if side.IsZero() {
				*side = s.at
			}
		}
		if (s.fin || s.rst) && w.end == "" {
			w.end = map[bool]string{false: "fin", true: "rst"}[s.rst]
		}
		side := 0
		if s.fromServer {
			side = 1
		}
		w.fins[side] = w.fins[side] || s.fin
		w.reset[side] = w.reset[side] || s.rst
	}
	return out
}
