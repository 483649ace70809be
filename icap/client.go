package icap

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync/atomic"
	"time"
)

// Defaults for Config.
const (
	DefaultMaxIdle = 60 * time.Second // well below SPE's 300 s idle timeout
	DefaultTimeout = 30 * time.Second
)

// Config configures a Client. Only Target is required.
type Config struct {
	Target string // icaps://host:11344/SERVICE or icap://host:1344/SERVICE

	// TLS settings for icaps:// targets.
	CAFile     string      // PEM bundle of CAs to trust instead of the system's
	ServerName string      // name to verify; default the URL's host
	Insecure   bool        // skip certificate verification; only when asked
	TLSConfig  *tls.Config // base configuration (versions, certificates); cloned

	// MaxConns bounds open connections (default 1). When all are busy a
	// request fails with ErrPoolExhausted, or waits up to WaitTimeout.
	MaxConns    int
	WaitTimeout time.Duration
	// MaxIdle retires connections idle this long (default 60 s).
	MaxIdle time.Duration
	// Timeout bounds a request whose context has no deadline (default 30 s).
	Timeout time.Duration
	Limits  Limits
	// Observer, when set, is told of connection and request events.
	Observer *Observer
	// Dialer opens TCP connections; default a net.Dialer.
	Dialer interface {
		DialContext(ctx context.Context, network, addr string) (net.Conn, error)
	}
}

// Observer hooks let the agent match its own connections with what the
// kernel sees. Every hook is optional and must not block.
type Observer struct {
	// ConnOpened is told of each connection as soon as its TCP connect
	// succeeds, before the TLS handshake (TLSVersion is not known yet),
	// so that a handshake hanging behind busy server workers is already
	// known as this client's. ConnClosed follows only for connections
	// whose handshake completed.
	ConnOpened     func(ConnInfo)
	RequestWritten func(ConnInfo, RequestInfo)
	FirstByte      func(ConnInfo, time.Time)
	ConnClosed     func(ConnInfo, CloseInfo)
	// Retried is told when a request that failed on a reused connection
	// before its answer is sent again on a fresh one.
	Retried func(failed ConnInfo, cause error)
}

// RequestInfo describes one request as written.
type RequestInfo struct {
	Method string
	Start  time.Time // first byte handed to the connection
	Done   time.Time // last byte handed to the connection
	Bytes  int       // ICAP bytes written (before TLS)
}

// Trace holds the timings of one request, like blackbox_exporter's phases.
type Trace struct {
	Conn    ConnInfo
	Cipher  uint16
	Reused  bool
	IdleAge time.Duration // how long a reused connection had been idle
	// Retried is set when this trace is of a retry on a fresh connection
	// after the request failed on a reused one with RetryCause.
	Retried    bool
	RetryCause error

	Connect   time.Duration // TCP connect; 0 when reused
	TLS       time.Duration // TLS handshake; 0 when reused or plain
	Write     time.Duration // writing the request (and a preview's rest)
	FirstByte time.Duration // request written to first answer byte
	Total     time.Duration // from the call to the full answer

	WriteStart, FirstByteAt time.Time
}

// Phases lists the phase durations in order, named as in the
// icapwatch_probe_phase_seconds metric.
func (t *Trace) Phases() []Phase {
	return []Phase{
		{"connect", t.Connect}, {"tls", t.TLS}, {"write", t.Write},
		{"first_byte", t.FirstByte}, {"total", t.Total},
	}
}

// Phase is one named duration of a Trace.
type Phase struct {
	Name     string
	Duration time.Duration
}

// PhaseError says in which phase a request failed: pool, connect, tls,
// write, first_byte or read.
type PhaseError struct {
	Phase string
	Err   error
}

func (e *PhaseError) Error() string { return e.Phase + ": " + e.Err.Error() }
func (e *PhaseError) Unwrap() error { return e.Err }

// Client sends ICAP requests over a pool of keep-alive connections.
type Client struct {
	cfg    Config
	target Target
	tls    *tls.Config
	pool   *pool
	nextID atomic.Uint64
}

// NewClient validates cfg and returns a client; it opens no connection.
func NewClient(cfg Config) (*Client, error) {
	t, err := ParseTarget(cfg.Target)
	if err != nil {
		return nil, err
	}
	if cfg.MaxConns <= 0 {
		cfg.MaxConns = 1
	}
	if cfg.MaxIdle <= 0 {
		cfg.MaxIdle = DefaultMaxIdle
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.Dialer == nil {
		cfg.Dialer = &net.Dialer{KeepAlive: -1}
	}
	if cfg.Observer == nil {
		cfg.Observer = &Observer{}
	}
	c := &Client{cfg: cfg, target: t}
	if t.TLS {
		if c.tls, err = clientTLS(cfg, t); err != nil {
			return nil, err
		}
	}
	c.pool = newPool(cfg.MaxConns, cfg.MaxIdle, c.dial, func(cn *conn, ci CloseInfo) {
		if h := c.cfg.Observer.ConnClosed; h != nil {
			h(cn.info, ci)
		}
	})
	return c, nil
}

func clientTLS(cfg Config, t Target) (*tls.Config, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if cfg.TLSConfig != nil {
		tc = cfg.TLSConfig.Clone()
	}
	tc.ServerName = t.Host
	if cfg.ServerName != "" {
		tc.ServerName = cfg.ServerName
	}
	tc.InsecureSkipVerify = cfg.Insecure
	if cfg.CAFile != "" {
		roots, err := LoadCAFile(cfg.CAFile)
		if err != nil {
			return nil, err
		}
		tc.RootCAs = roots
	}
	return tc, nil
}

// LoadCAFile reads a PEM file of CA certificates; a file that holds none
// is an error, not an empty pool that would fail every handshake later.
func LoadCAFile(path string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read CA file: %w", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("CA file %s holds no PEM certificate", path)
	}
	return roots, nil
}

// Target returns the parsed target.
func (c *Client) Target() Target { return c.target }

// Stats returns a snapshot of the pool.
func (c *Client) Stats() PoolStats { return c.pool.snapshot() }

// Close closes idle connections at once and busy ones when their request
// ends. Later calls fail with ErrClientClosed.
func (c *Client) Close() error {
	c.pool.shutdown()
	return nil
}

func (c *Client) dial(ctx context.Context, tr *Trace) (*conn, error) {
	start := time.Now()
	raw, err := c.cfg.Dialer.DialContext(ctx, "tcp", c.target.Addr)
	tr.Connect = time.Since(start)
	if err != nil {
		return nil, &PhaseError{"connect", err}
	}
	info := ConnInfo{
		ID:     c.nextID.Add(1),
		Target: c.target.URL,
		Local:  addrPort(raw.LocalAddr()),
		Remote: addrPort(raw.RemoteAddr()),
		Opened: start,
	}
	if h := c.cfg.Observer.ConnOpened; h != nil {
		h(info)
	}
	var (
		nc    net.Conn = raw
		sniff *recordSniffer
	)
	if c.tls != nil {
		sniff = &recordSniffer{Conn: raw}
		tc := tls.Client(sniff, c.tls)
		hs := time.Now()
		err := tc.HandshakeContext(ctx)
		tr.TLS = time.Since(hs)
		if err != nil {
			raw.Close()
			return nil, &PhaseError{"tls", err}
		}
		nc = tc
	}
	cn := newConn(nc, sniff, info)
	if sniff != nil {
		cn.idleRecords = sniff.records
	}
	return cn, nil
}

// Do sends req and reads the answer. A request that fails on a reused
// connection before any answer byte (the server closed it as we wrote) is
// sent once more on a fresh connection when it is idempotent (OPTIONS).
// Without a deadline in ctx, Config.Timeout applies.
func (c *Client) Do(ctx context.Context, req *Request) (*Response, *Trace, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.cfg.Timeout)
		defer cancel()
	}
	start := time.Now()
	tr := &Trace{}
	resp, answered, err := c.attempt(ctx, req, tr, false)
	// A deadline or cancellation is the caller's, not a race: no retry.
	if err != nil && tr.Reused && !answered && req.Method == "OPTIONS" && contextEnded(ctx, err) == nil {
		c.pool.noteRetry()
		if h := c.cfg.Observer.Retried; h != nil {
			h(tr.Conn, err)
		}
		tr = &Trace{Retried: true, RetryCause: err}
		resp, _, err = c.attempt(ctx, req, tr, true)
	}
	tr.Total = time.Since(start)
	return resp, tr, err
}

// Options sends OPTIONS for the target's service and parses the answer.
func (c *Client) Options(ctx context.Context) (*Response, Options, *Trace, error) {
	req := NewRequest("OPTIONS", c.target.RequestURI())
	resp, tr, err := c.Do(ctx, req)
	if err != nil {
		return nil, Options{}, tr, err
	}
	opts, err := ParseOptions(resp)
	return resp, opts, tr, err
}

// attempt runs one request on one connection. answered reports whether any
// byte of an answer arrived, which makes a retry unsafe.
func (c *Client) attempt(ctx context.Context, req *Request, tr *Trace, fresh bool) (resp *Response, answered bool, err error) {
	// A caller that has already given up must not cost a healthy idle
	// connection, nor send content to be scanned for nobody.
	if err := ctx.Err(); err != nil {
		return nil, false, &PhaseError{"pool", err}
	}
	cn, err := c.pool.acquire(ctx, fresh, c.cfg.WaitTimeout, tr)
	if err != nil {
		var pe *PhaseError
		if !errors.As(err, &pe) {
			err = &PhaseError{"pool", err}
		}
		return nil, false, err
	}
	tr.Conn, tr.Cipher = cn.info, cn.cipher

	if dl, ok := ctx.Deadline(); ok {
		cn.nc.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { cn.nc.SetDeadline(time.Unix(1, 0)) })
	finish := func(reusable bool, ci CloseInfo) {
		if !stop() && reusable {
			// ctx ended while we worked: the deadline was cut short
			// under us, so the stream may be mid-message.
			reusable, ci = false, CloseInfo{Initiator: "client", How: "fin", Reason: "canceled"}
		}
		cn.nc.SetDeadline(time.Time{})
		c.pool.release(cn, reusable, ci)
	}
	fail := func(phase string, err error) (*Response, bool, error) {
		ci := cn.classify(err)
		ci.DuringRequest = true
		if cerr := contextEnded(ctx, err); cerr != nil {
			err = fmt.Errorf("%w (%w)", cerr, err)
			ci.Initiator, ci.Reason = "client", "canceled"
		}
		finish(false, ci)
		return nil, answered, &PhaseError{phase, err}
	}

	counter := &countingWriter{w: cn.nc}
	cn.bw.Reset(counter)
	tr.WriteStart = time.Now()
	needContinue, err := WriteRequest(cn.bw, req)
	if err == nil {
		err = cn.bw.Flush()
	}
	done := time.Now()
	tr.Write = done.Sub(tr.WriteStart)
	if h := c.cfg.Observer.RequestWritten; h != nil {
		h(cn.info, RequestInfo{Method: req.Method, Start: tr.WriteStart, Done: done, Bytes: counter.n})
	}
	if err != nil {
		return fail("write", err)
	}
	if _, err := cn.br.Peek(1); err != nil {
		return fail("first_byte", err)
	}
	answered = true
	tr.FirstByteAt = time.Now()
	tr.FirstByte = tr.FirstByteAt.Sub(done)
	if h := c.cfg.Observer.FirstByte; h != nil {
		h(cn.info, tr.FirstByteAt)
	}
	resp, err = ReadResponse(cn.br, c.cfg.Limits)
	if err == nil && resp.StatusCode == 100 {
		if !needContinue {
			err = malformed("status line", "100 Continue without a preview")
		} else {
			ws := time.Now()
			if err = WriteContinuation(cn.bw, req); err == nil {
				err = cn.bw.Flush()
			}
			tr.Write += time.Since(ws)
			if err == nil {
				resp, err = ReadResponse(cn.br, c.cfg.Limits)
			}
		}
	}
	if err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return fail("read", err)
	}
	reusable := resp.Header.Get("Connection") != "close"
	finish(reusable, CloseInfo{Initiator: "client", How: "fin", Reason: "not_reusable"})
	return resp, true, nil
}

// contextEnded returns ctx's error when ctx ended, or when err is the
// socket deadline we set from ctx's deadline firing a moment before the
// context's own timer.
func contextEnded(ctx context.Context, err error) error {
	if cerr := ctx.Err(); cerr != nil {
		return cerr
	}
	if dl, ok := ctx.Deadline(); ok && isTimeout(err) && !time.Now().Before(dl) {
		return context.DeadlineExceeded
	}
	return nil
}

type countingWriter struct {
	w io.Writer
	n int
}

func (cw *countingWriter) Write(p []byte) (int, error) {
	n, err := cw.w.Write(p)
	cw.n += n
	return n, err
}
