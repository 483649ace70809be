package agent

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/icapwatch/icapwatch/agent/correlate"
	"github.com/icapwatch/icapwatch/internal/cicap"
	"github.com/icapwatch/icapwatch/internal/testutil"
)

// TestSquidPool has Debian's Squid as the ICAP client: a private Squid
// proxies HTTP from a local origin and sends each response to a private
// c-icap with two workers, over TLS 1.3, on persistent connections. Two
// overlapping responses leave two idle connections in Squid's pool, each
// holding one of c-icap's workers; three more need a third connection,
// whose handshake waits until c-icap idle-closes one of the two. What the
// agent says of it is checked against the wire and c-icap's log.
func TestSquidPool(t *testing.T) {
	testutil.RequireRoot(t)
	// Debian installs it in /usr/sbin, which a user's PATH may lack.
	bin, err := exec.LookPath("squid")
	if err != nil {
		bin, err = exec.LookPath("/usr/sbin/squid")
	}
	if err != nil {
		testutil.SkipOrFail(t, "squid is not installed (Debian's squid-openssl package; make deps installs it)")
	}
	srv := cicap.StartTest(t, cicap.Config{Workers: 2, KeepAlive: 3 * time.Second, Timeout: 2 * time.Second})
	server := netip.MustParseAddrPort(srv.Addr())
	wire := captureLo(t, server)
	cfg := loopbackAgent(int(server.Port()))
	threshold := cfg.Correlator.StallThreshold
	if threshold >= srv.IdleClose()/2 {
		t.Fatalf("stall threshold %v: the stall lasts about c-icap's idle close, %v; it must be well below", threshold, srv.IdleClose())
	}
	_, base := runDaemon(t, cfg)

	origin := newHeldOrigin()
	ts := httptest.NewServer(origin)
	defer ts.Close()
	defer origin.release() // a failed step's held responses end before ts.Close
	proxy := startSquid(t, bin, srv)

	// The wire's connections to c-icap that began and have not ended.
	open := func() []uint16 {
		var ports []uint16
		for port, c := range wire.conns(true) {
			if c.syn && !c.over() {
				ports = append(ports, port)
			}
		}
		slices.Sort(ports)
		return ports
	}
	// Squid asks c-icap for the service's OPTIONS when its first response
	// needs the service, not as it starts; it keeps that connection for
	// the response, or closes it and opens another. One response first,
	// then, whose connections end (the pooled one at c-icap's idle close)
	// before the scenario starts.
	allFetched(t, fetchHeld(proxy, ts.URL, origin, 1, func() bool { return true }))
	waitCond(t, srv.IdleClose()+10*time.Second, "the first response's connections to c-icap to end", func() bool {
		return len(open()) == 0
	})
	before := wire.conns(true)
	var warm []uint16
	for port, c := range before {
		if c.syn {
			warm = append(warm, port)
		}
	}
	addr := func(p uint16) string { return netip.AddrPortFrom(server.Addr(), p).String() }
	// The agent's account of them is out before the counters are read.
	waitCond(t, 10*time.Second, "the agent's close events of the first response's connections", func() bool {
		n := 0
		for _, e := range agentEvents(t, base, server) {
			if e.kind() == correlate.KindClose && slices.ContainsFunc(warm, func(p uint16) bool { return e.str("client_addr") == addr(p) }) {
				n++
			}
		}
		return n == len(warm)
	})
	metricsBefore := scrape(t, base+"/metrics")

	// Two responses at once, held until Squid has a connection to c-icap
	// for each: two connections, idle in Squid's pool once answered.
	allFetched(t, fetchHeld(proxy, ts.URL, origin, 2, func() bool { return len(open()) == 2 }))
	idle := open()
	if len(idle) != 2 {
		t.Fatalf("after two overlapping responses the wire has open connections %v, want two", idle)
	}

	// Three at once: two reuse the idle connections, the third needs one
	// of its own, whose handshake waits while the other two hold both
	// workers. The responses are held until the third has begun.
	logFrom := time.Now().Truncate(time.Second).Add(time.Second)
	done := make(chan []error, 1)
	go func() {
		done <- fetchHeld(proxy, ts.URL, origin, 3, func() bool { return len(open()) == 3 })
	}()
	var third uint16
	waitCond(t, 10*time.Second, "Squid's third connection", func() bool {
		for _, p := range open() {
			if !slices.Contains(idle, p) {
				third = p
				return true
			}
		}
		return false
	})
	var errs []error
	select {
	case errs = <-done:
	case <-time.After(srv.IdleClose() + 30*time.Second):
		t.Fatal("the three requests did not end")
	}
	allFetched(t, errs)

	conns := append(slices.Clone(idle), third)
	var truth map[uint16]*wireConn
	waitCond(t, 2*srv.IdleClose()+10*time.Second, "the end of Squid's three connections on the wire", func() bool {
		truth = wire.conns(true)
		for _, p := range conns {
			if c := truth[p]; c == nil || !c.over() {
				return false
			}
		}
		return true
	})
	if drops := wire.drops(t); drops > 0 {
		t.Fatalf("the packet socket dropped %d packets: the wire's account is incomplete", drops)
	}
	ends := waitEnds(t, srv, logFrom, 3)
	defer func() {
		if t.Failed() {
			for _, c := range truth {
				t.Logf("wire %s", c)
			}
			t.Logf("%s", srv.Log())
		}
	}()

	// The ground truth: c-icap closed each, first, as TLS 1.3 has it: its
	// close_notify (with or without its FIN), Squid's close_notify in
	// answer, c-icap's reset. The third waited for its ServerHello; no
	// other connection began.
	for _, p := range conns {
		if c := truth[p]; c.initiator() != "server" || c.clientAlerts != 1 {
			t.Fatalf("on the wire port %d was closed first by the %s, Squid sent %d alerts; want c-icap's close answered by Squid's close_notify: %s",
				p, c.initiator(), c.clientAlerts, c)
		}
	}
	for port, c := range truth {
		if _, old := before[port]; c.syn && !old && !slices.Contains(conns, port) {
			t.Fatalf("the wire has a fourth connection from Squid: %s", c)
		}
	}
	if len(ends) != 3 {
		t.Fatalf("c-icap's log has %d connection ends since %v, want 3 (its idle closes)", len(ends), logFrom.Format(time.Stamp))
	}
	var closes []time.Time
	for _, p := range conns {
		closes = append(closes, truth[p].serverClose)
	}
	slices.SortFunc(closes, time.Time.Compare)
	for i, at := range closes {
		if d := at.Sub(ends[i]); d < -time.Second || d > 2*time.Second {
			t.Fatalf("the wire's server close %d at %v, c-icap logged its end at %v", i, at.Format(time.StampMicro), ends[i].Format(time.Stamp))
		}
	}
	c3 := truth[third]
	waited := c3.served.Sub(c3.hello)
	if waited < threshold {
		t.Fatalf("on the wire Squid's third handshake was answered after %v, below the stall threshold", waited)
	}

	// The agent.
	pooled := map[string]bool{}
	for _, p := range slices.Concat(warm, conns) {
		pooled[addr(p)] = true
	}
	var evs []apiEvent
	waitCond(t, 10*time.Second, "the agent's close events of Squid's connections", func() bool {
		evs = nil
		for _, e := range agentEvents(t, base, server) {
			if pooled[e.str("client_addr")] {
				evs = append(evs, e)
			}
		}
		n := 0
		for _, e := range evs {
			if e.kind() == correlate.KindClose {
				n++
			}
		}
		return n >= len(pooled)
	})
	defer func() {
		if t.Failed() {
			for _, e := range evs {
				t.Logf("event %v", e)
			}
		}
	}()
	byKind := map[correlate.Kind][]apiEvent{}
	for _, e := range evs {
		byKind[e.kind()] = append(byKind[e.kind()], e)
		// The connecting process is Squid, whatever the server's name.
		if e.str("client") != "squid" {
			t.Errorf("event of Squid's connection labelled client %q, want squid: %v", e.str("client"), e)
		}
	}
	if s := byKind[correlate.KindStall]; len(s) != 1 || s[0].str("client_addr") != addr(third) ||
		s[0].str("state") != correlate.StateAckedSilent || s[0].str("phase") != "handshake" {
		t.Errorf("stall events %v, want one acked_silent handshake stall of port %d", s, third)
	}
	if s := byKind[correlate.KindStallEnd]; len(s) != 1 || s[0].str("client_addr") != addr(third) ||
		s[0].str("outcome") != correlate.OutcomeAnswered || !onWire(s[0].num("duration_seconds"), waited) {
		t.Errorf("stall_end events %v, want one of port %d answered after %v", s, third, waited)
	}
	var idleAddrs []netip.AddrPort
	for _, p := range idle {
		idleAddrs = append(idleAddrs, netip.AddrPortFrom(server.Addr(), p))
	}
	checkRelease(t, byKind[correlate.KindRelease], netip.AddrPortFrom(server.Addr(), third), idleAddrs, truth,
		c3.served, cfg.Correlator.ReleaseWindow)
	hows := map[string]int{}
	for _, p := range conns {
		c := truth[p]
		var closes []apiEvent
		for _, e := range byKind[correlate.KindClose] {
			if e.str("client_addr") == addr(p) {
				closes = append(closes, e)
			}
		}
		if len(closes) != 1 || closes[0].str("initiator") != "server" || closes[0].str("how") != c.end {
			t.Errorf("port %d: close events %v, want one by the server, how %q", p, closes, c.end)
		}
		hows[c.end]++
	}
	// The first response's connections: the pooled one, which c-icap
	// idle-closes, and at times the OPTIONS' own, which Squid closes.
	for _, p := range warm {
		c := truth[p]
		var closes []apiEvent
		for _, e := range byKind[correlate.KindClose] {
			if e.str("client_addr") == addr(p) {
				closes = append(closes, e)
			}
		}
		if len(closes) != 1 || closes[0].str("initiator") != c.initiator() {
			t.Errorf("port %d: close events %v, want one by the %s, as on the wire: %s", p, closes, c.initiator(), c)
		}
	}
	// The counters say the same, under Squid's label.
	checkDeltas(t, metricsBefore, scrape(t, base+"/metrics"), server, []metricDelta{
		{"icapwatch_stalls_total", map[string]string{}, 1},
		{"icapwatch_stalls_total", map[string]string{"client": "squid", "state": correlate.StateAckedSilent}, 1},
		{"icapwatch_stall_outcomes_total", map[string]string{"client": "squid", "outcome": correlate.OutcomeAnswered}, 1},
		{"icapwatch_stall_releases_total", map[string]string{"cause": correlate.ReleaseCause}, 1},
		{"icapwatch_stalled_exchanges", map[string]string{}, 0},
		{"icapwatch_tls_alerts_total", map[string]string{"direction": "server"}, 3},
		{"icapwatch_connection_closes_total", map[string]string{}, 3},
		{"icapwatch_connection_closes_total", map[string]string{"client": "squid", "initiator": "server", "how": "fin"}, float64(hows["fin"])},
		{"icapwatch_connection_closes_total", map[string]string{"client": "squid", "initiator": "server", "how": "rst"}, float64(hows["rst"])},
	})
	first := map[uint16]string{}
	for _, p := range warm {
		first[p] = truth[p].initiator()
	}
	t.Logf("Squid's handshake on port %d waited %v; closes %v; the first response's connections closed by %v", third, waited, hows, first)
}

// heldOrigin answers each request with a header and the first bytes of
// its body, and the rest once released: Squid holds an ICAP transaction
// open for each response until it has the body.
type heldOrigin struct {
	mu      sync.Mutex
	arrived int
	gate    chan struct{}
}

// heldBody is each response's body, which the echo service returns as is.
var heldBody = strings.Repeat("clean\n", 100)

func newHeldOrigin() *heldOrigin { return &heldOrigin{gate: make(chan struct{})} }

// hold makes the next responses wait for release.
func (o *heldOrigin) hold() {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.arrived, o.gate = 0, make(chan struct{})
}

func (o *heldOrigin) release() {
	o.mu.Lock()
	defer o.mu.Unlock()
	select {
	case <-o.gate:
	default:
		close(o.gate)
	}
}

func (o *heldOrigin) count() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.arrived
}

func (o *heldOrigin) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	o.mu.Lock()
	o.arrived++
	gate := o.gate
	o.mu.Unlock()
	body := heldBody
	w.Header().Set("Content-Type", "text/plain")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(http.StatusOK)
	io.WriteString(w, body[:6])
	w.(http.Flusher).Flush()
	select {
	case <-gate:
	case <-r.Context().Done():
		return
	}
	io.WriteString(w, body[6:])
}

// fetchHeld sends n requests through the proxy at once, holds their
// responses until ready holds (or 15 s have passed: the test's checks
// then fail), and returns each request's error.
func fetchHeld(proxy *url.URL, origin string, o *heldOrigin, n int, ready func() bool) []error {
	o.hold()
	client := &http.Client{Timeout: 60 * time.Second,
		Transport: &http.Transport{Proxy: http.ProxyURL(proxy), DisableKeepAlives: true}}
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range errs {
		wg.Go(func() {
			resp, err := client.Get(fmt.Sprintf("%s/scan/%d-%d", origin, time.Now().UnixNano(), i))
			if err != nil {
				errs[i] = err
				return
			}
			defer resp.Body.Close()
			body, err := io.ReadAll(resp.Body)
			switch {
			case err != nil:
				errs[i] = err
			case resp.StatusCode != http.StatusOK || string(body) != heldBody:
				errs[i] = fmt.Errorf("through Squid: %s, %q", resp.Status, body)
			}
		})
	}
	pollUntil(15*time.Second, func() bool { return o.count() == n && ready() })
	o.release()
	wg.Wait()
	return errs
}

func allFetched(t *testing.T, errs []error) {
	t.Helper()
	for i, err := range errs {
		if err != nil {
			t.Errorf("request %d of %d: %v", i+1, len(errs), err)
		}
	}
	if t.Failed() {
		t.FailNow()
	}
}

// startSquid runs a private Squid in the foreground with its own
// configuration, logs and pid file, as an HTTP proxy on a loopback port
// that sends every response to the c-icap instance's echo service over
// TLS, and stops it (its whole process group) when the test ends.
func startSquid(t *testing.T, bin string, srv *cicap.Server) *url.URL {
	t.Helper()
	// Squid started as root runs as cache_effective_user (Debian's proxy):
	// its directory, and the way to it, must be open to that user.
	dir := t.TempDir()
	for _, d := range []string{filepath.Dir(dir), dir} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	pu, err := user.Lookup("proxy")
	if err != nil {
		testutil.SkipOrFail(t, "squid's user: %v", err)
	}
	uid, _ := strconv.Atoi(pu.Uid)
	gid, _ := strconv.Atoi(pu.Gid)
	ca, err := os.ReadFile(srv.CAFile())
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "ca.pem"), ca, 0o644); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	httpAddr := ln.Addr().String()
	ln.Close()
	p := func(name string) string { return filepath.Join(dir, name) }
	conf := strings.Join([]string{
		"http_port " + httpAddr,
		"visible_hostname icapwatch-test",
		"pid_filename " + p("squid.pid"),
		"cache_log " + p("cache.log"),
		"access_log stdio:" + p("access.log"),
		"cache_store_log none",
		"coredump_dir " + dir,
		"netdb_filename none",
		"pinger_enable off",
		"cache deny all",
		"cache_mem 8 MB",
		"http_access allow all",
		"shutdown_lifetime 0 seconds",
		"icap_enable on",
		"icap_persistent_connections on",
		// max-conn: Squid queues the transactions beyond a service's
		// Max-Connections (from its OPTIONS) instead of connecting; this
		// makes sure it opens the third connection, whatever c-icap says.
		"icap_service svc respmod_precache bypass=off max-conn=16 icaps://" + srv.Addr() + "/" + cicap.Service +
			" tls-cafile=" + p("ca.pem") + " tls-flags=DONT_VERIFY_DOMAIN",
		"adaptation_access svc allow all",
	}, "\n") + "\n"
	if err := os.WriteFile(p("squid.conf"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{dir, p("squid.conf"), p("ca.pem")} {
		if err := os.Chown(f, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	out, err := os.Create(p("stdout.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	cmd := exec.Command(bin, "-N", "-f", p("squid.conf"))
	cmd.Dir, cmd.Stdout, cmd.Stderr = dir, out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	// Pdeathsig follows the thread that started Squid: it stays locked,
	// waiting for Squid, until Squid has exited.
	started, exited := make(chan error), make(chan struct{})
	go func() {
		runtime.LockOSThread()
		err := cmd.Start()
		started <- err
		if err == nil {
			cmd.Wait()
		}
		close(exited)
	}()
	if err := <-started; err != nil {
		t.Fatal(err)
	}
	logs := func() string {
		var b strings.Builder
		for _, name := range []string{"stdout.log", "cache.log"} {
			data, _ := os.ReadFile(p(name))
			fmt.Fprintf(&b, "--- squid %s\n%s", name, data)
		}
		return b.String()
	}
	pgid := cmd.Process.Pid
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			t.Errorf("squid did not stop within 5s of SIGTERM")
		}
		alive := func() bool { return syscall.Kill(-pgid, 0) == nil }
		if !pollUntil(3*time.Second, func() bool { return !alive() }) {
			t.Errorf("squid's process group %d outlived it", pgid)
			syscall.Kill(-pgid, syscall.SIGKILL)
			pollUntil(3*time.Second, func() bool { return !alive() })
		}
		<-exited
		if t.Failed() {
			t.Logf("%s", logs())
		}
	})
	proxy := &url.URL{Scheme: "http", Host: httpAddr}
	if !pollUntil(15*time.Second, func() bool {
		select {
		case <-exited:
			return true
		default:
		}
		c, err := net.DialTimeout("tcp", httpAddr, time.Second)
		if err == nil {
			c.Close()
		}
		return err == nil
	}) {
		t.Fatalf("squid does not listen on %s within 15s\n%s", httpAddr, logs())
	}
	select {
	case <-exited:
		t.Fatalf("squid exited: %v\n%s", cmd.ProcessState, logs())
	default:
	}
	return proxy
}
