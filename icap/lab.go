package icap

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
)

// Fault kinds the lab server can inject into a request.
const (
	FaultReset = "reset" // close with RST instead of answering
	FaultDrop  = "drop"  // read the request, never answer, keep the connection
	FaultAlert = "alert" // send a TLS close_notify alert and FIN mid-request
)

// EICAR is the antivirus test string every scanner reports as infected.
const EICAR = `X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*`

// LabConfig configures the lab server. LabDefaults gives the defaults.
type LabConfig struct {
	Listen      string // TLS address; "" disables
	PlainListen string // plain ICAP address; "" disables
	// Certificate for TLS; a self-signed one is made when empty.
	Certificate *tls.Certificate
	TLSConfig   *tls.Config // base settings (versions); cloned

	// Workers is how many connections are served at once. Like c-icap, a
	// connection holds its worker for as long as it is open, idle or not.
	Workers int
	// IdleTimeout closes connections idle this long (close_notify, FIN).
	IdleTimeout time.Duration
	// MaxConnections is advertised in OPTIONS; default Workers.
	MaxConnections int
	Service        string
	// StallEvery holds every Nth request's answer for StallFor.
	StallEvery int
	StallFor   time.Duration
	// Fault is injected into every FaultEvery-th request.
	Fault      string
	FaultEvery int
	// RequestTimeout bounds reading a request once its first byte arrived,
	// and a TLS handshake once a worker took the connection.
	RequestTimeout time.Duration
	Limits         Limits
	Logger         hclog.Logger
}

// LabDefaults returns the lab server's defaults.
func LabDefaults() LabConfig {
	return LabConfig{
		Listen:         "127.0.0.1:11344",
		PlainListen:    "127.0.0.1:1344",
		Workers:        16,
		IdleTimeout:    5 * time.Minute,
		Service:        "SYMCScanResp-AV",
		StallFor:       30 * time.Second,
		FaultEvery:     1,
		RequestTimeout: time.Minute,
	}
}

// Validate checks the configuration; messages name the lab's flags.
func (c LabConfig) Validate() error {
	switch {
	case c.Listen == "" && c.PlainListen == "":
		return errors.New("--listen and --plain-listen are both empty: nothing to serve")
	case c.Workers < 1:
		return errors.New("--workers must be at least 1")
	case c.IdleTimeout <= 0:
		return errors.New("--idle-timeout must be positive")
	case c.MaxConnections < 0:
		return errors.New("--max-connections must not be negative")
	case c.Service == "" || strings.ContainsAny(c.Service, "/ \t"):
		return errors.New("--service must be a name without slashes or spaces")
	case c.StallEvery < 0:
		return errors.New("--stall-every must not be negative")
	case c.StallEvery > 0 && c.StallFor <= 0:
		return errors.New("--stall-for must be positive when --stall-every is set")
	case c.FaultEvery < 1:
		return errors.New("--fault-every must be at least 1")
	case c.RequestTimeout <= 0:
		return errors.New("request timeout must be positive")
	}
	switch c.Fault {
	case "", FaultReset, FaultDrop, FaultAlert:
	default:
		return fmt.Errorf("--fault %q: want %s, %s or %s", c.Fault, FaultReset, FaultDrop, FaultAlert)
	}
	return nil
}

// LabStats counts what the lab server did.
type LabStats struct {
	Accepted   uint64
	Served     uint64 // requests answered
	Stalled    uint64 // requests held by StallEvery
	Faults     uint64
	IdleClosed uint64
	Waiting    int // connections accepted but waiting for a worker
	Busy       int // workers held by open connections
}

// Lab is an SPE-like ICAP server with fault knobs.
type Lab struct {
	cfg     LabConfig
	log     hclog.Logger
	tls     *tls.Config
	tlsLn   net.Listener // nil when disabled
	plainLn net.Listener // nil when disabled
	workers chan struct{}
	quit    chan struct{}
	wg      sync.WaitGroup
	reqs    atomic.Uint64

	mu      sync.Mutex
	conns   map[*labConn]struct{}
	stats   LabStats
	stopped bool
}

type labConn struct {
	nc net.Conn
	// state is "waiting" (for a worker), "handshake", "idle", "busy"
	// (reading or answering a request), "drop" (a dropped request) or
	// "closing" (claimed by Shutdown).
	state atomic.Value
}

// StartLab listens on the configured addresses and starts serving. It
// returns once the listeners are open.
func StartLab(cfg LabConfig) (*Lab, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.MaxConnections == 0 {
		cfg.MaxConnections = cfg.Workers
	}
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	s := &Lab{
		cfg:     cfg,
		log:     cfg.Logger,
		workers: make(chan struct{}, cfg.Workers),
		quit:    make(chan struct{}),
		conns:   make(map[*labConn]struct{}),
	}
	if cfg.Listen != "" {
		s.tls = &tls.Config{MinVersion: tls.VersionTLS12}
		if cfg.TLSConfig != nil {
			s.tls = cfg.TLSConfig.Clone()
		}
		if cfg.Certificate != nil {
			s.tls.Certificates = []tls.Certificate{*cfg.Certificate}
		} else if len(s.tls.Certificates) == 0 {
			cert, _, err := SelfSignedCert()
			if err != nil {
				return nil, err
			}
			s.tls.Certificates = []tls.Certificate{cert}
		}
	}
	for _, l := range []struct {
		addr string
		ln   *net.Listener
		tls  bool
	}{{cfg.Listen, &s.tlsLn, true}, {cfg.PlainListen, &s.plainLn, false}} {
		if l.addr == "" {
			continue
		}
		ln, err := net.Listen("tcp", l.addr)
		if err != nil {
			s.closeListeners()
			return nil, fmt.Errorf("listen on %s: %w", l.addr, err)
		}
		*l.ln = ln
		s.log.Info("listening", "addr", ln.Addr().String(), "tls", l.tls, "workers", cfg.Workers,
			"idle_timeout", cfg.IdleTimeout, "service", cfg.Service)
		s.wg.Add(1)
		go s.accept(ln, l.tls)
	}
	return s, nil
}

// TLSAddr is the TLS listener's address, nil when disabled.
func (s *Lab) TLSAddr() net.Addr { return listenAddr(s.tlsLn) }

// PlainAddr is the plain listener's address, nil when disabled.
func (s *Lab) PlainAddr() net.Addr { return listenAddr(s.plainLn) }

func listenAddr(ln net.Listener) net.Addr {
	if ln == nil {
		return nil
	}
	return ln.Addr()
}

// Stats returns a snapshot of the counters.
func (s *Lab) Stats() LabStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.stats
	for c := range s.conns {
		switch c.state.Load() {
		case "waiting":
			st.Waiting++
		default:
			st.Busy++
		}
	}
	return st
}

func (s *Lab) count(f func(*LabStats)) {
	s.mu.Lock()
	f(&s.stats)
	s.mu.Unlock()
}

func (s *Lab) closeListeners() {
	for _, ln := range []net.Listener{s.tlsLn, s.plainLn} {
		if ln != nil {
			ln.Close()
		}
	}
}

// Shutdown stops accepting, closes idle and waiting connections at once
// (idle ones with close_notify), lets requests in progress finish until ctx
// ends, then closes whatever is left.
func (s *Lab) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	if !s.stopped {
		s.stopped = true
		close(s.quit)
	}
	for c := range s.conns {
		switch c.state.Load() {
		case "idle":
			// The swap loses to serveConn's idle→busy once a request
			// has begun to arrive: that request is finished, not cut.
			if c.state.CompareAndSwap("idle", "closing") {
				c.nc.SetReadDeadline(time.Unix(1, 0))
			}
		case "handshake", "drop":
			c.nc.SetReadDeadline(time.Unix(1, 0))
		}
	}
	s.mu.Unlock()
	s.closeListeners()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		s.mu.Lock()
		for c := range s.conns {
			c.nc.Close()
		}
		s.mu.Unlock()
		<-done
		return ctx.Err()
	}
}

func (s *Lab) accept(ln net.Listener, useTLS bool) {
	defer s.wg.Done()
	for {
		nc, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			s.log.Warn("accept failed", "error", err)
			select {
			case <-s.quit:
				return
			case <-time.After(50 * time.Millisecond):
			}
			continue
		}
		lc := &labConn{nc: nc}
		lc.state.Store("waiting")
		s.mu.Lock()
		if s.stopped {
			s.mu.Unlock()
			nc.Close()
			return
		}
		s.conns[lc] = struct{}{}
		s.stats.Accepted++
		s.mu.Unlock()
		s.wg.Add(1)
		go s.serveConn(lc, useTLS)
	}
}

// serveConn waits for a worker, then serves requests until the connection
// closes, idles out or the server stops. The worker is held throughout.
func (s *Lab) serveConn(lc *labConn, useTLS bool) {
	defer s.wg.Done()
	log := s.log.With("client", lc.nc.RemoteAddr().String(), "tls", useTLS)
	defer func() {
		s.mu.Lock()
		delete(s.conns, lc)
		s.mu.Unlock()
	}()
	accepted := time.Now()
	select {
	case s.workers <- struct{}{}:
	default:
		log.Info("all workers held, connection waits", "workers", s.cfg.Workers)
		select {
		case s.workers <- struct{}{}:
		case <-s.quit:
			lc.nc.Close()
			return
		}
	}
	defer func() { <-s.workers }()
	log.Info("worker took connection", "waited", time.Since(accepted).Round(time.Millisecond))

	nc := lc.nc
	if useTLS {
		tc := tls.Server(lc.nc, s.tls)
		tc.SetWriteDeadline(time.Now().Add(s.cfg.RequestTimeout))
		if !s.awaitPeer(lc, "handshake", time.Now().Add(s.cfg.RequestTimeout)) {
			lc.nc.Close()
			return
		}
		if err := tc.Handshake(); err != nil {
			log.Warn("tls handshake failed", "error", err)
			lc.nc.Close()
			return
		}
		tc.SetDeadline(time.Time{})
		log.Debug("tls handshake done", "version", tls.VersionName(tc.ConnectionState().Version))
		nc = tc
	}
	br := bufio.NewReader(nc)
	bw := bufio.NewWriter(nc)
	for {
		idleSince := time.Now()
		if !s.awaitPeer(lc, "idle", idleSince.Add(s.cfg.IdleTimeout)) {
			log.Info("closing connection for shutdown")
			nc.Close()
			return
		}
		if _, err := br.Peek(1); err != nil {
			switch {
			case isTimeout(err) && isClosed(s.quit):
				log.Info("closing connection for shutdown")
			case isTimeout(err):
				s.count(func(st *LabStats) { st.IdleClosed++ })
				log.Info("idle timeout, closing connection", "idle", time.Since(idleSince).Round(time.Millisecond))
			case errors.Is(err, io.EOF):
				log.Info("client closed connection")
			default:
				log.Info("connection ended", "error", err)
			}
			// tls.Conn.Close sends close_notify, then the TCP FIN.
			nc.Close()
			return
		}
		if !lc.state.CompareAndSwap("idle", "busy") {
			log.Info("closing connection for shutdown")
			nc.Close()
			return
		}
		nc.SetReadDeadline(time.Now().Add(s.cfg.RequestTimeout))
		if !s.serveRequest(log, lc, nc, br, bw) {
			return
		}
	}
}

// awaitPeer marks the connection as waiting for its peer in state st,
// which Shutdown may cut, with the given read deadline. It reports false
// when shutdown has begun. The check comes after the deadline is set:
// Shutdown closes quit before it cuts deadlines, so it cannot be undone.
func (s *Lab) awaitPeer(lc *labConn, st string, deadline time.Time) bool {
	lc.state.Store(st)
	lc.nc.SetReadDeadline(deadline)
	return !isClosed(s.quit)
}

func isClosed(ch chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// serveRequest reads and answers one request; false means the connection
// is finished (and closed).
func (s *Lab) serveRequest(log hclog.Logger, lc *labConn, nc net.Conn, br *bufio.Reader, bw *bufio.Writer) bool {
	start := time.Now()
	req, err := ReadRequest(br, s.cfg.Limits)
	if err != nil {
		if errors.Is(err, ErrMalformed) || errors.Is(err, ErrTooLarge) {
			log.Warn("bad request", "error", err)
			s.writeAndFlush(nc, bw, &Response{StatusCode: 400, Header: Header{"Connection": {"close"}}})
		} else {
			log.Info("connection ended mid-request", "error", err)
		}
		nc.Close()
		return false
	}
	if !req.IEOF {
		err := s.writeAndFlush(nc, bw, &Response{StatusCode: 100})
		if err == nil {
			err = ReadContinuation(br, req, s.cfg.Limits)
		}
		if err != nil {
			log.Info("connection ended mid-request", "error", err)
			nc.Close()
			return false
		}
	}
	n := s.reqs.Add(1)
	log = log.With("method", req.Method, "request", n)

	if s.cfg.Fault != "" && n%uint64(s.cfg.FaultEvery) == 0 {
		s.count(func(st *LabStats) { st.Faults++ })
		return s.injectFault(log, lc, nc, br)
	}
	if s.cfg.StallEvery > 0 && n%uint64(s.cfg.StallEvery) == 0 {
		s.count(func(st *LabStats) { st.Stalled++ })
		log.Info("stalling request", "for", s.cfg.StallFor)
		select {
		case <-time.After(s.cfg.StallFor):
		case <-s.quit:
		}
	}
	resp := s.answer(req)
	nc.SetWriteDeadline(time.Now().Add(s.cfg.RequestTimeout))
	if err := s.writeAndFlush(nc, bw, resp); err != nil {
		log.Info("writing answer failed", "error", err)
		nc.Close()
		return false
	}
	nc.SetWriteDeadline(time.Time{})
	s.count(func(st *LabStats) { st.Served++ })
	log.Info("answered", "status", resp.StatusCode, "took", time.Since(start).Round(time.Microsecond))
	return true
}

func (s *Lab) writeAndFlush(nc net.Conn, bw *bufio.Writer, resp *Response) error {
	if err := WriteResponse(bw, resp); err != nil {
		return err
	}
	return bw.Flush()
}

func (s *Lab) injectFault(log hclog.Logger, lc *labConn, nc net.Conn, br *bufio.Reader) bool {
	log.Info("injecting fault", "fault", s.cfg.Fault)
	switch s.cfg.Fault {
	case FaultReset:
		if tcp, ok := underlyingTCP(nc); ok {
			// Linger 0 makes close send RST instead of FIN (socket(7)).
			tcp.SetLinger(0)
			tcp.Close()
			return false
		}
	case FaultDrop:
		// Never answer; hold the connection (and its worker) until the
		// client gives up, the idle timeout passes or the server stops.
		if s.awaitPeer(lc, "drop", time.Now().Add(s.cfg.IdleTimeout)) {
			io.Copy(io.Discard, br)
		}
	case FaultAlert:
		if tc, ok := nc.(*tls.Conn); ok {
			// CloseWrite sends close_notify; Close then sends FIN.
			tc.CloseWrite()
		}
	}
	nc.Close()
	return false
}

func underlyingTCP(nc net.Conn) (*net.TCPConn, bool) {
	if tc, ok := nc.(*tls.Conn); ok {
		nc = tc.NetConn()
	}
	tcp, ok := nc.(*net.TCPConn)
	return tcp, ok
}

// answer scans the request the way SPE answers: OPTIONS lists the service;
// a body holding the EICAR string is infected; clean content gets 204 when
// the client allows it and an echo otherwise.
func (s *Lab) answer(req *Request) *Response {
	if !strings.EqualFold(servicePath(req.URI), s.cfg.Service) {
		return &Response{StatusCode: 404, Header: Header{}}
	}
	switch req.Method {
	case "OPTIONS":
		return &Response{StatusCode: 200, Header: s.options().Header()}
	case "RESPMOD", "REQMOD":
	default:
		return &Response{StatusCode: 405, Header: Header{}}
	}
	h := Header{}
	h.Set("ISTag", `"`+labISTag+`"`)
	if bytes.Contains(req.Body, []byte(EICAR)) {
		h.Set("X-Infection-Found", "Type=0; Resolution=2; Threat=EICAR Test String;")
		// SPE's multi-line form: count, then per violation the file name,
		// threat name, threat ID and problem ID on folded lines.
		h.Set("X-Violations-Found", strings.Join([]string{"1", fileName(req), "EICAR Test String", "11101", "0"}, "\n"))
		msg := []byte("Access denied: the content contains the EICAR Test String.\n")
		resHdr := fmt.Sprintf("HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n", len(msg))
		return &Response{StatusCode: 200, Header: h, ResHdr: []byte(resHdr), Body: msg}
	}
	if req.Preview >= 0 || hasToken(req.Header.Get("Allow"), "204") {
		return &Response{StatusCode: 204, Header: h}
	}
	return &Response{StatusCode: 200, Header: h, ReqHdr: req.ReqHdr, ResHdr: req.ResHdr, Body: req.Body}
}

const labISTag = "ICAPWATCH-LAB-1"

func (s *Lab) options() Options {
	return Options{
		Methods:          []string{"RESPMOD", "REQMOD"},
		Service:          "icapwatch lab (SPE-like) " + s.cfg.Service,
		ISTag:            labISTag,
		MaxConnections:   s.cfg.MaxConnections,
		TTL:              time.Hour,
		Preview:          4096,
		Allow204:         true,
		TransferPreview:  []string{"*"},
		TransferComplete: []string{"exe", "com", "zip"},
	}
}

// servicePath returns the service name of an ICAP URI.
func servicePath(uri string) string {
	if i := strings.Index(uri, "://"); i >= 0 {
		uri = uri[i+3:]
		if j := strings.IndexByte(uri, '/'); j >= 0 {
			uri = uri[j:]
		} else {
			uri = ""
		}
	}
	uri, _, _ = strings.Cut(uri, "?")
	return strings.TrimPrefix(uri, "/")
}

// fileName takes the file name from the encapsulated HTTP request line.
func fileName(req *Request) string {
	line, _, _ := bytes.Cut(req.ReqHdr, []byte("\r\n"))
	parts := strings.Fields(string(line))
	if len(parts) >= 2 {
		if p := parts[1]; p != "" {
			return p
		}
	}
	return "stream"
}
