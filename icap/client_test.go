package icap_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/icapwatch/icapwatch/icap"
)

// startLab starts a lab server on loopback ports chosen by the kernel and
// stops it when the test ends.
func startLab(t *testing.T, mutate func(*icap.LabConfig)) *icap.Lab {
	t.Helper()
	cfg := icap.LabDefaults()
	cfg.Listen, cfg.PlainListen = "127.0.0.1:0", "127.0.0.1:0"
	cfg.Logger = hclog.New(&hclog.LoggerOptions{Name: "lab", Output: testWriter{t}, Level: hclog.Debug})
	if mutate != nil {
		mutate(&cfg)
	}
	lab, err := icap.StartLab(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := lab.Shutdown(ctx); err != nil {
			t.Errorf("lab shutdown: %v", err)
		}
	})
	return lab
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func tlsURL(lab *icap.Lab) string   { return "icaps://" + lab.TLSAddr().String() + "/SYMCScanResp-AV" }
func plainURL(lab *icap.Lab) string { return "icap://" + lab.PlainAddr().String() + "/SYMCScanResp-AV" }

// recorder is an Observer that keeps what it is told.
type recorder struct {
	mu      sync.Mutex
	opened  []icap.ConnInfo
	written []icap.RequestInfo
	retried []error
	closes  chan closeEvent
}

type closeEvent struct {
	conn icap.ConnInfo
	info icap.CloseInfo
}

func newRecorder() *recorder { return &recorder{closes: make(chan closeEvent, 64)} }

func (r *recorder) observer() *icap.Observer {
	return &icap.Observer{
		ConnOpened: func(ci icap.ConnInfo) { r.mu.Lock(); r.opened = append(r.opened, ci); r.mu.Unlock() },
		RequestWritten: func(_ icap.ConnInfo, ri icap.RequestInfo) {
			r.mu.Lock()
			r.written = append(r.written, ri)
			r.mu.Unlock()
		},
		ConnClosed: func(c icap.ConnInfo, ci icap.CloseInfo) { r.closes <- closeEvent{c, ci} },
		Retried:    func(_ icap.ConnInfo, err error) { r.mu.Lock(); r.retried = append(r.retried, err); r.mu.Unlock() },
	}
}

// nextClose waits for the next connection close the client reports.
func (r *recorder) nextClose(t *testing.T, within time.Duration) closeEvent {
	t.Helper()
	select {
	case ev := <-r.closes:
		return ev
	case <-time.After(within):
		t.Fatalf("no connection close reported within %v", within)
		return closeEvent{}
	}
}

func newClient(t *testing.T, cfg icap.Config) *icap.Client {
	t.Helper()
	c, err := icap.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func respmod(target string, body string, preview int) *icap.Request {
	t, _ := icap.ParseTarget(target)
	req := icap.NewRequest("RESPMOD", t.RequestURI())
	req.Header.Set("Host", t.Host)
	req.ReqHdr = []byte("GET /files/sample.bin HTTP/1.1\r\nHost: app.example\r\n\r\n")
	req.ResHdr = []byte("HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n")
	req.Body = []byte(body)
	req.Preview = preview
	return req
}

func TestOptionsOverTLSAndPlain(t *testing.T) {
	lab := startLab(t, func(c *icap.LabConfig) { c.Workers = 3 })
	for _, url := range []string{tlsURL(lab), plainURL(lab)} {
		t.Run(url[:strings.Index(url, ":")], func(t *testing.T) {
			c := newClient(t, icap.Config{Target: url, Insecure: true})
			resp, opts, tr, err := c.Options(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != 200 || opts.MaxConnections != 3 || !opts.Allow204 || opts.ISTag == "" {
				t.Errorf("OPTIONS: status %d, options %+v", resp.StatusCode, opts)
			}
			if tr.Reused || tr.Connect <= 0 || tr.FirstByte <= 0 || tr.Total < tr.FirstByte {
				t.Errorf("fresh trace: %+v", tr)
			}
			if strings.HasPrefix(url, "icaps") != (tr.TLS > 0) || strings.HasPrefix(url, "icaps") != (tr.Conn.TLSVersion != 0) {
				t.Errorf("TLS phase %v, version %x for %s", tr.TLS, tr.Conn.TLSVersion, url)
			}
			_, _, tr2, err := c.Options(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if !tr2.Reused || tr2.Connect != 0 || tr2.TLS != 0 || tr2.IdleAge <= 0 || tr2.Conn.ID != tr.Conn.ID {
				t.Errorf("second OPTIONS should reuse the connection: %+v", tr2)
			}
		})
	}
}

func TestCAFileAndVerificationFailure(t *testing.T) {
	cert, certPEM, err := icap.SelfSignedCert()
	if err != nil {
		t.Fatal(err)
	}
	lab := startLab(t, func(c *icap.LabConfig) { c.Certificate = &cert })
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, certPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	c := newClient(t, icap.Config{Target: tlsURL(lab), CAFile: ca})
	if _, _, _, err := c.Options(context.Background()); err != nil {
		t.Fatalf("with the lab's certificate as CA: %v", err)
	}

	strict := newClient(t, icap.Config{Target: tlsURL(lab)})
	_, _, _, err = strict.Options(context.Background())
	var pe *icap.PhaseError
	if !errors.As(err, &pe) || pe.Phase != "tls" {
		t.Fatalf("unverifiable certificate: want a tls phase error, got %v", err)
	}
	var cve *tls.CertificateVerificationError
	if !errors.As(err, &cve) {
		t.Errorf("error should say why verification failed: %v", err)
	}
}

func TestServerAlertDuringHandshakeNamesPhase(t *testing.T) {
	lab := startLab(t, func(c *icap.LabConfig) { c.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS13} })
	c := newClient(t, icap.Config{Target: tlsURL(lab), Insecure: true, TLSConfig: &tls.Config{MaxVersion: tls.VersionTLS12}})
	_, _, _, err := c.Options(context.Background())
	var pe *icap.PhaseError
	if !errors.As(err, &pe) || pe.Phase != "tls" || !strings.Contains(err.Error(), "protocol version") {
		t.Fatalf("want a tls phase error naming the protocol version alert, got %v", err)
	}
}

// TestHangReproduction is the seed case: the server has two workers, the
// application's pool three connections. Two connections answered and then
// idle hold both workers; the third is accepted by the kernel but served
// only when the server idle-closes one of the others.
func TestHangReproduction(t *testing.T) {
	const idle = 1500 * time.Millisecond
	for _, scheme := range []string{"icaps", "icap"} {
		t.Run(scheme, func(t *testing.T) {
			// A short stall on every answer keeps the first two connections
			// busy while the third request is sent, so that it cannot reuse
			// one of them and opens the third connection, as in the seed.
			lab := startLab(t, func(c *icap.LabConfig) {
				c.Workers, c.IdleTimeout = 2, idle
				c.StallEvery, c.StallFor = 1, 300*time.Millisecond
			})
			url := tlsURL(lab)
			if scheme == "icap" {
				url = plainURL(lab)
			}
			rec := newRecorder()
			// The application keeps idle connections longer than the
			// server does, as SPE's default client pool does.
			c := newClient(t, icap.Config{Target: url, Insecure: true, MaxConns: 3, MaxIdle: time.Hour, Observer: rec.observer()})

			var wg sync.WaitGroup
			traces := make([]*icap.Trace, 3)
			errs := make([]error, 3)
			for i := range 3 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					_, _, traces[i], errs[i] = c.Options(context.Background())
				}()
			}
			wg.Wait()
			var fast, slow int
			for i, tr := range traces {
				if errs[i] != nil {
					t.Fatalf("request %d: %v", i, errs[i])
				}
				wait := tr.TLS + tr.FirstByte
				switch {
				case wait < idle/2:
					fast++
				case wait >= idle*9/10 && wait < 4*idle:
					slow++
				default:
					t.Errorf("request %d waited %v: neither served at once nor after one idle timeout", i, wait)
				}
			}
			if fast != 2 || slow != 1 {
				t.Fatalf("want 2 requests served at once and 1 after the idle timeout, got %d and %d", fast, slow)
			}
			// The release came from the server closing an idle sibling.
			ev := rec.nextClose(t, 3*idle)
			if ev.info.Initiator != "server" || !ev.info.Idle || ev.info.IdleAge < idle*9/10 {
				t.Errorf("release cause: %+v", ev.info)
			}
			if scheme == "icaps" && ev.info.Alert != "close_notify" {
				t.Errorf("server idle close should carry close_notify, got %q", ev.info.Alert)
			}
			if got := c.Stats().ServerIdleTimeout; got < idle*9/10 || got > 2*idle {
				t.Errorf("observed server idle timeout %v, want about %v", got, idle)
			}
		})
	}
}

func TestPoolExhaustedAndBoundedWait(t *testing.T) {
	lab := startLab(t, func(c *icap.LabConfig) { c.StallEvery, c.StallFor = 1, 400*time.Millisecond })
	busy := func(c *icap.Client) chan error {
		done := make(chan error, 1)
		go func() { _, _, _, err := c.Options(context.Background()); done <- err }()
		waitFor(t, func() bool { return c.Stats().InUse == 1 })
		return done
	}

	c := newClient(t, icap.Config{Target: plainURL(lab), MaxConns: 1})
	first := busy(c)
	_, _, _, err := c.Options(context.Background())
	var pe *icap.PhaseError
	if !errors.Is(err, icap.ErrPoolExhausted) || !errors.As(err, &pe) || pe.Phase != "pool" {
		t.Fatalf("want ErrPoolExhausted in phase pool, got %v", err)
	}
	if c.Stats().Exhausted != 1 {
		t.Errorf("exhausted count %d, want 1", c.Stats().Exhausted)
	}
	if err := <-first; err != nil {
		t.Fatal(err)
	}

	waiting := newClient(t, icap.Config{Target: plainURL(lab), MaxConns: 1, WaitTimeout: 5 * time.Second})
	first = busy(waiting)
	_, _, tr, err := waiting.Options(context.Background())
	if err != nil {
		t.Fatalf("bounded wait should get the connection back: %v", err)
	}
	if !tr.Reused {
		t.Errorf("the waiting request should reuse the released connection")
	}
	<-first

	short := newClient(t, icap.Config{Target: plainURL(lab), MaxConns: 1, WaitTimeout: 50 * time.Millisecond})
	first = busy(short)
	if _, _, _, err := short.Options(context.Background()); !errors.Is(err, icap.ErrPoolExhausted) {
		t.Errorf("wait shorter than the stall: want ErrPoolExhausted, got %v", err)
	}
	<-first
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestIdleRetirement(t *testing.T) {
	lab := startLab(t, nil)
	rec := newRecorder()
	c := newClient(t, icap.Config{Target: tlsURL(lab), Insecure: true, MaxIdle: 150 * time.Millisecond, Observer: rec.observer()})
	if _, _, _, err := c.Options(context.Background()); err != nil {
		t.Fatal(err)
	}
	ev := rec.nextClose(t, 3*time.Second)
	if ev.info.Reason != "idle_retired" || ev.info.Initiator != "client" || ev.info.IdleAge < 150*time.Millisecond {
		t.Fatalf("want an idle retirement by the client, got %+v", ev.info)
	}
	if st := c.Stats(); st.Open != 0 || st.Idle != 0 {
		t.Errorf("pool after retirement: %+v", st)
	}
	waitFor(t, func() bool { return lab.Stats().Busy == 0 })
	_, _, tr, err := c.Options(context.Background())
	if err != nil || tr.Reused {
		t.Errorf("after retirement the next request opens a fresh connection: reused=%v err=%v", tr.Reused, err)
	}
}

// TestServerIdleCloseSeenAtOnce checks the posted read: the server's idle
// close is reported when it happens, with its alert, on TLS 1.2 and 1.3.
func TestServerIdleCloseSeenAtOnce(t *testing.T) {
	const idle = 200 * time.Millisecond
	lab := startLab(t, func(c *icap.LabConfig) { c.IdleTimeout = idle })
	for _, tc := range []struct {
		name  string
		url   string
		max   uint16
		alert string
	}{
		{"tls1.2", tlsURL(lab), tls.VersionTLS12, "close_notify"},
		{"tls1.3", tlsURL(lab), tls.VersionTLS13, "close_notify"},
		{"plain", plainURL(lab), 0, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := newRecorder()
			c := newClient(t, icap.Config{Target: tc.url, Insecure: true, MaxIdle: time.Hour,
				TLSConfig: &tls.Config{MaxVersion: tc.max}, Observer: rec.observer()})
			_, _, tr, err := c.Options(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if tc.max != 0 && tr.Conn.TLSVersion != tc.max {
				t.Errorf("negotiated TLS %x, want %x", tr.Conn.TLSVersion, tc.max)
			}
			ev := rec.nextClose(t, 10*idle)
			ci := ev.info
			if ci.Initiator != "server" || ci.Reason != "server_close" || ci.How != "fin" || !ci.Idle || ci.Alert != tc.alert {
				t.Errorf("close: %+v", ci)
			}
			if ci.IdleAge < idle*9/10 || ci.IdleAge > 5*idle {
				t.Errorf("idle age at close %v, want about %v", ci.IdleAge, idle)
			}
			if st := c.Stats(); st.Open != 0 || st.ServerIdleTimeout != ci.IdleAge {
				t.Errorf("pool after server close: %+v", st)
			}
		})
	}
}

// TestRaceRetry: the server closes (close_notify, FIN) a reused connection
// as the request arrives. OPTIONS is retried once on a fresh connection;
// RESPMOD is not retried and the caller learns where it failed.
func TestRaceRetry(t *testing.T) {
	lab := startLab(t, func(c *icap.LabConfig) { c.Fault, c.FaultEvery = icap.FaultAlert, 2 })
	rec := newRecorder()
	c := newClient(t, icap.Config{Target: tlsURL(lab), Insecure: true, Observer: rec.observer()})
	if _, _, _, err := c.Options(context.Background()); err != nil {
		t.Fatal(err)
	}
	resp, _, tr, err := c.Options(context.Background())
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("retried OPTIONS should succeed: %v", err)
	}
	if !tr.Retried || tr.Reused || tr.RetryCause == nil {
		t.Errorf("trace should be of a retry on a fresh connection: %+v", tr)
	}
	if st := c.Stats(); st.Retries != 1 || st.Dials != 2 {
		t.Errorf("stats: %+v", st)
	}
	ev := rec.nextClose(t, time.Second)
	if ev.info.Initiator != "server" || ev.info.Alert != "close_notify" || !ev.info.DuringRequest {
		t.Errorf("the failed attempt's close: %+v", ev.info)
	}
	rec.mu.Lock()
	nretried := len(rec.retried)
	rec.mu.Unlock()
	if nretried != 1 {
		t.Errorf("observer told of %d retries, want 1", nretried)
	}

	// The retry was request 3; request 4 meets the fault again.
	_, tr, err = c.Do(context.Background(), respmod(tlsURL(lab), "clean", -1))
	var pe *icap.PhaseError
	if !errors.As(err, &pe) || pe.Phase != "first_byte" || tr.Retried {
		t.Fatalf("RESPMOD on a closing connection: want a first_byte error without retry, got %v (retried %v)", err, tr.Retried)
	}
}

func TestResetFault(t *testing.T) {
	lab := startLab(t, func(c *icap.LabConfig) { c.Fault = icap.FaultReset })
	rec := newRecorder()
	c := newClient(t, icap.Config{Target: plainURL(lab), Observer: rec.observer()})
	_, _, err := c.Do(context.Background(), respmod(plainURL(lab), "clean", -1))
	if err == nil {
		t.Fatal("want an error from a reset connection")
	}
	ev := rec.nextClose(t, time.Second)
	if ev.info.How != "rst" || ev.info.Initiator != "server" || ev.info.Reason != "reset" {
		t.Errorf("close after reset: %+v (err %v)", ev.info, err)
	}
}

func TestDeadlineOnStalledServer(t *testing.T) {
	lab := startLab(t, func(c *icap.LabConfig) { c.Fault = icap.FaultDrop })
	rec := newRecorder()
	c := newClient(t, icap.Config{Target: tlsURL(lab), Insecure: true, Observer: rec.observer()})
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, _, err := c.Do(ctx, respmod(tlsURL(lab), "clean", -1))
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("want the context deadline, got %v", err)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("deadline of 200ms took %v", took)
	}
	if ev := rec.nextClose(t, time.Second); ev.info.Reason != "canceled" || ev.info.Initiator != "client" {
		t.Errorf("a timed-out connection is closed by the client: %+v", ev.info)
	}
	if c.Stats().Open != 0 {
		t.Errorf("timed-out connection must leave the pool")
	}
}

func TestScanAnswers(t *testing.T) {
	lab := startLab(t, nil)
	c := newClient(t, icap.Config{Target: tlsURL(lab), Insecure: true})
	url := tlsURL(lab)
	infected := strings.Repeat("padding ", 100) + icap.EICAR
	cases := []struct {
		name   string
		req    *icap.Request
		status int
		check  func(*testing.T, *icap.Response)
	}{
		{"clean echo", respmod(url, "clean content", -1), 200, func(t *testing.T, r *icap.Response) {
			if string(r.Body) != "clean content" || r.ResHdr == nil {
				t.Errorf("echo lost the content: %q", r.Body)
			}
		}},
		{"clean with Allow 204", func() *icap.Request {
			r := respmod(url, "clean", -1)
			r.Header.Set("Allow", "204")
			return r
		}(), 204, nil},
		{"preview holds all", respmod(url, "tiny", 16), 204, nil},
		{"preview then 100 Continue, infected", respmod(url, infected, 8), 200, func(t *testing.T, r *icap.Response) {
			if !strings.Contains(r.Header.Get("X-Infection-Found"), "EICAR") {
				t.Errorf("X-Infection-Found: %q", r.Header.Get("X-Infection-Found"))
			}
			if v := r.Header.Get("X-Violations-Found"); !strings.HasPrefix(v, "1\n") || !strings.Contains(v, "/files/sample.bin") {
				t.Errorf("X-Violations-Found: %q", v)
			}
			if !strings.HasPrefix(string(r.ResHdr), "HTTP/1.1 403") {
				t.Errorf("blocked response header: %q", r.ResHdr)
			}
		}},
		{"REQMOD", func() *icap.Request {
			r := respmod(url, "", -1)
			r.Method, r.ResHdr, r.Body = "REQMOD", nil, []byte("form=data")
			return r
		}(), 200, nil},
		{"unknown service", icap.NewRequest("OPTIONS", "icap://"+lab.TLSAddr().String()+"/nope"), 404, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			resp, _, err := c.Do(context.Background(), tc.req)
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d", resp.StatusCode, tc.status)
			}
			if tc.check != nil {
				tc.check(t, resp)
			}
		})
	}
	if st := c.Stats(); st.Dials != 1 {
		t.Errorf("all answers should come on one kept-alive connection, dialed %d", st.Dials)
	}
}

// fakeServer answers each connection with the given bytes after reading
// one request, for answers the lab would never send.
func fakeServer(t *testing.T, answer string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer nc.Close()
				nc.SetDeadline(time.Now().Add(5 * time.Second))
				if _, err := icap.ReadRequest(bufio.NewReader(nc), icap.Limits{}); err != nil {
					return
				}
				io.WriteString(nc, answer)
				io.Copy(io.Discard, nc)
			}()
		}
	}()
	return "icap://" + ln.Addr().String() + "/svc"
}

func TestMalformedAnswerDropsConnection(t *testing.T) {
	for _, tc := range []struct{ name, answer string }{
		{"http instead of icap", "HTTP/1.1 200 OK\r\n\r\n"},
		{"bad encapsulated", "ICAP/1.0 200 OK\r\nEncapsulated: res-body=5, res-hdr=0\r\n\r\n"},
		{"bad chunk", "ICAP/1.0 200 OK\r\nEncapsulated: res-body=0\r\n\r\nzz\r\n"},
		{"unsolicited 100", "ICAP/1.0 100 Continue\r\n\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := newRecorder()
			c := newClient(t, icap.Config{Target: fakeServer(t, tc.answer), Observer: rec.observer()})
			_, _, err := c.Do(context.Background(), icap.NewRequest("OPTIONS", c.Target().RequestURI()))
			var pe *icap.PhaseError
			if !errors.Is(err, icap.ErrMalformed) || !errors.As(err, &pe) || pe.Phase != "read" {
				t.Fatalf("want ErrMalformed in phase read, got %v", err)
			}
			ev := rec.nextClose(t, time.Second)
			if ev.info.Reason != "protocol_error" || ev.info.Initiator != "client" {
				t.Errorf("close: %+v", ev.info)
			}
			if c.Stats().Open != 0 {
				t.Errorf("a connection with a malformed answer must leave the pool")
			}
		})
	}
}

func TestUnsolicitedDataOnIdleConnection(t *testing.T) {
	// A valid answer followed by stray bytes: the connection goes idle and
	// the posted read sees the bytes, so it cannot be trusted any more.
	url := fakeServer(t, "ICAP/1.0 200 OK\r\nEncapsulated: null-body=0\r\n\r\ngarbage")
	rec := newRecorder()
	c := newClient(t, icap.Config{Target: url, Observer: rec.observer()})
	if _, _, err := c.Do(context.Background(), icap.NewRequest("OPTIONS", c.Target().RequestURI())); err != nil {
		t.Fatal(err)
	}
	ev := rec.nextClose(t, time.Second)
	if ev.info.Reason != "protocol_error" || !ev.info.Idle {
		t.Errorf("close: %+v", ev.info)
	}
}

func TestObserverSeesKernelAddresses(t *testing.T) {
	lab := startLab(t, nil)
	rec := newRecorder()
	c := newClient(t, icap.Config{Target: tlsURL(lab), Insecure: true, Observer: rec.observer()})
	_, _, tr, err := c.Options(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if len(rec.opened) != 1 || len(rec.written) != 1 {
		t.Fatalf("opened %d, written %d", len(rec.opened), len(rec.written))
	}
	o := rec.opened[0]
	if o.Remote.String() != lab.TLSAddr().String() || !o.Local.Addr().IsLoopback() || o.Local.Port() == 0 {
		t.Errorf("conn info %+v", o)
	}
	w := rec.written[0]
	if w.Method != "OPTIONS" || w.Bytes <= 0 || !w.Start.Equal(tr.WriteStart) || w.Done.Before(w.Start) {
		t.Errorf("request info %+v", w)
	}
}

func TestClosedClient(t *testing.T) {
	lab := startLab(t, nil)
	c := newClient(t, icap.Config{Target: plainURL(lab)})
	c.Close()
	if _, _, _, err := c.Options(context.Background()); !errors.Is(err, icap.ErrClientClosed) {
		t.Errorf("want ErrClientClosed, got %v", err)
	}
}

func TestParseTarget(t *testing.T) {
	for _, tc := range []struct {
		in, addr, svc string
		tls           bool
		bad           bool
	}{
		{in: "icaps://127.0.0.1/SYMCScanResp-AV", addr: "127.0.0.1:11344", svc: "SYMCScanResp-AV", tls: true},
		{in: "icap://scan.example:1345/avscan", addr: "scan.example:1345", svc: "avscan"},
		{in: "icaps://[2001:db8::1]/x", addr: "[2001:db8::1]:11344", svc: "x", tls: true},
		{in: "http://x/y", bad: true},
		{in: "icaps:///y", bad: true},
		{in: "icaps://x", bad: true},
		{in: "icaps://u:p@x/y", bad: true},
	} {
		got, err := icap.ParseTarget(tc.in)
		if tc.bad {
			if err == nil {
				t.Errorf("%s: want an error", tc.in)
			}
			continue
		}
		if err != nil || got.Addr != tc.addr || got.Service != tc.svc || got.TLS != tc.tls {
			t.Errorf("%s: got %+v, %v", tc.in, got, err)
		}
	}
}

func TestLabValidate(t *testing.T) {
	for _, tc := range []struct {
		mutate func(*icap.LabConfig)
		flag   string
	}{
		{func(c *icap.LabConfig) { c.Workers = 0 }, "--workers"},
		{func(c *icap.LabConfig) { c.IdleTimeout = 0 }, "--idle-timeout"},
		{func(c *icap.LabConfig) { c.Fault = "explode" }, "--fault"},
		{func(c *icap.LabConfig) { c.StallEvery, c.StallFor = 2, 0 }, "--stall-for"},
		{func(c *icap.LabConfig) { c.Service = "a/b" }, "--service"},
		{func(c *icap.LabConfig) { c.Listen, c.PlainListen = "", "" }, "--listen"},
	} {
		cfg := icap.LabDefaults()
		tc.mutate(&cfg)
		if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), tc.flag) {
			t.Errorf("want an error naming %s, got %v", tc.flag, err)
		}
	}
}

func TestLabShutdownClosesIdleWithCloseNotify(t *testing.T) {
	cfg := icap.LabDefaults()
	cfg.Listen, cfg.PlainListen = "127.0.0.1:0", ""
	lab, err := icap.StartLab(cfg)
	if err != nil {
		t.Fatal(err)
	}
	rec := newRecorder()
	c := newClient(t, icap.Config{Target: tlsURL(lab), Insecure: true, Observer: rec.observer()})
	if _, _, _, err := c.Options(context.Background()); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if err := lab.Shutdown(ctx); err != nil {
		t.Fatalf("graceful shutdown: %v", err)
	}
	ev := rec.nextClose(t, time.Second)
	if ev.info.Initiator != "server" || ev.info.Alert != "close_notify" {
		t.Errorf("shutdown close: %+v", ev.info)
	}
	if _, err := net.Dial("tcp", lab.TLSAddr().String()); err == nil {
		t.Errorf("listener still accepts after shutdown")
	}
}

func ExampleClient_Options() {
	lab, err := icap.StartLab(icap.LabConfig{Listen: "127.0.0.1:0", Workers: 2, IdleTimeout: time.Minute,
		Service: "SYMCScanResp-AV", FaultEvery: 1, RequestTimeout: time.Second})
	if err != nil {
		panic(err)
	}
	defer lab.Shutdown(context.Background())
	c, err := icap.NewClient(icap.Config{Target: "icaps://" + lab.TLSAddr().String() + "/SYMCScanResp-AV", Insecure: true})
	if err != nil {
		panic(err)
	}
	defer c.Close()
	_, opts, _, err := c.Options(context.Background())
	fmt.Println(opts.Methods, opts.MaxConnections, err)
	// Output: [RESPMOD REQMOD] 2 <nil>
}

// A deadline that ends on a reused connection is the caller's, not a race
// with a server close: no retry, and the error says so.
func TestNoRetryWhenDeadlineEnds(t *testing.T) {
	lab := startLab(t, func(c *icap.LabConfig) { c.Fault, c.FaultEvery = icap.FaultDrop, 2 })
	c := newClient(t, icap.Config{Target: plainURL(lab)})
	if _, _, _, err := c.Options(context.Background()); err != nil {
		t.Fatal(err)
	}
	for range 20 {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
		_, tr, err := c.Do(ctx, icap.NewRequest("OPTIONS", c.Target().RequestURI()))
		cancel()
		var pe *icap.PhaseError
		if !errors.Is(err, context.DeadlineExceeded) || !errors.As(err, &pe) || pe.Phase != "first_byte" || tr.Retried {
			t.Fatalf("want first_byte: context deadline exceeded without retry, got %v (retried %v)", err, tr.Retried)
		}
		// The next request is answered on a fresh connection, so the
		// one after it meets the drop again on reuse.
		if _, _, _, err := c.Options(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	if st := c.Stats(); st.Retries != 0 {
		t.Errorf("retries %d, want 0", st.Retries)
	}
}

func TestCanceledContextKeepsIdleConnection(t *testing.T) {
	lab := startLab(t, nil)
	c := newClient(t, icap.Config{Target: plainURL(lab)})
	if _, _, _, err := c.Options(context.Background()); err != nil {
		t.Fatal(err)
	}
	// The lab counts an answer once it is written: the client may have
	// read it a moment before.
	waitFor(t, func() bool { return lab.Stats().Served == 1 })
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, _, err := c.Do(ctx, respmod(plainURL(lab), "clean", -1)); !errors.Is(err, context.Canceled) {
		t.Fatalf("want context.Canceled, got %v", err)
	}
	if st := c.Stats(); st.Open != 1 || st.Idle != 1 {
		t.Errorf("the idle connection should stay in the pool: %+v", st)
	}
	if served := lab.Stats().Served; served != 1 {
		t.Errorf("a canceled request must not reach the server: served %d", served)
	}
}

// Shutdown must not wait for a dropped request or a client that never sends
// its ClientHello: both only wait on the peer.
func TestLabShutdownCutsPeerWaits(t *testing.T) {
	cfg := icap.LabDefaults()
	cfg.Listen, cfg.PlainListen, cfg.Fault = "127.0.0.1:0", "127.0.0.1:0", icap.FaultDrop
	lab, err := icap.StartLab(cfg)
	if err != nil {
		t.Fatal(err)
	}
	silent, err := net.Dial("tcp", lab.TLSAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	c := newClient(t, icap.Config{Target: plainURL(lab)})
	go c.Do(context.Background(), respmod(plainURL(lab), "clean", -1))
	waitFor(t, func() bool { return lab.Stats().Faults == 1 })

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	if err := lab.Shutdown(ctx); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("shutdown took %v with a dropped request and a silent handshake", took)
	}
}

// A TLS handshake that hangs (the server's kernel accepted the connection,
// no worker answers the ClientHello) is already reported as the client's
// connection, with the local address the server sees.
func TestObserverSeesConnectionBeforeHandshake(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		nc, err := ln.Accept()
		if err != nil {
			return
		}
		accepted <- nc // held open, never answered
	}()
	opened := make(chan icap.ConnInfo, 1)
	closed := make(chan icap.CloseInfo, 1)
	c := newClient(t, icap.Config{Target: "icaps://" + ln.Addr().String() + "/svc", Insecure: true,
		Observer: &icap.Observer{
			ConnOpened: func(ci icap.ConnInfo) { opened <- ci },
			ConnClosed: func(_ icap.ConnInfo, ci icap.CloseInfo) { closed <- ci },
		}})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		_, _, _, err := c.Options(ctx)
		done <- err
	}()
	var server net.Conn
	select {
	case server = <-accepted:
		defer server.Close()
	case <-time.After(5 * time.Second):
		t.Fatal("the client did not connect")
	}
	select {
	case ci := <-opened:
		if ci.Local.String() != server.RemoteAddr().String() || ci.Remote.String() != ln.Addr().String() ||
			ci.TLSVersion != 0 || ci.Opened.IsZero() {
			t.Errorf("conn info %+v; the server sees the client at %s", ci, server.RemoteAddr())
		}
	case err := <-done:
		t.Fatalf("request ended before the connection was reported: %v", err)
	case <-time.After(5 * time.Second):
		t.Fatal("connection not reported while its handshake hangs")
	}
	cancel()
	var pe *icap.PhaseError
	if err := <-done; !errors.As(err, &pe) || pe.Phase != "tls" {
		t.Errorf("want a failure in phase tls, got %v", err)
	}
	select {
	case ci := <-closed:
		t.Errorf("a connection whose handshake failed was reported closed: %+v", ci)
	default:
	}
}
