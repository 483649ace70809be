package icap

import (
	"bufio"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"syscall"
	"time"
)

// TLS record content types (RFC 8446 section 5.1).
const (
	recordAlert           = 21
	recordApplicationData = 23
)

// tls13CloseNotifyLen is the length of a TLS 1.3 record that carries one
// alert: 2 bytes of alert, 1 byte of inner content type and a 16-byte AEAD
// tag. On the wire it is an application_data record like any other, so this
// length is the only outward sign of a close_notify.
const tls13CloseNotifyLen = 19

// recordSniffer follows TLS record boundaries in the bytes read from the
// TCP connection under a tls.Conn. crypto/tls reports a peer's close_notify
// and a bare FIN both as io.EOF; the last record seen tells them apart.
type recordSniffer struct {
	net.Conn
	hdr      [5]byte
	hdrN     int
	remain   int
	records  uint64
	lastType byte
	lastLen  int
}

func (s *recordSniffer) Read(p []byte) (int, error) {
	n, err := s.Conn.Read(p)
	s.scan(p[:n])
	return n, err
}

func (s *recordSniffer) scan(b []byte) {
	for len(b) > 0 {
		if s.remain > 0 {
			k := min(s.remain, len(b))
			s.remain -= k
			b = b[k:]
			continue
		}
		k := copy(s.hdr[s.hdrN:], b)
		s.hdrN += k
		b = b[k:]
		if s.hdrN == len(s.hdr) {
			s.lastType = s.hdr[0]
			s.lastLen = int(binary.BigEndian.Uint16(s.hdr[3:]))
			s.remain = s.lastLen
			s.records++
			s.hdrN = 0
		}
	}
}

// ConnInfo identifies one pooled connection to observers. Local and Remote
// are what the kernel sees, so the agent can match its own flows.
type ConnInfo struct {
	ID         uint64
	Target     string
	Local      netip.AddrPort
	Remote     netip.AddrPort
	TLSVersion uint16 // 0 for plain ICAP
	Opened     time.Time
}

// CloseInfo says who closed a connection and how.
type CloseInfo struct {
	Initiator string // "client" or "server"
	How       string // "fin" or "rst"
	// Reason: idle_retired, server_close, reset, tls_alert, protocol_error,
	// error, canceled, not_reusable or client_closed.
	Reason string
	// Alert is the TLS alert the server sent before closing, by its RFC
	// name (close_notify, internal_error, ...); "" for none or plain ICAP.
	Alert string
	// Idle is set when the connection was idle in the pool; IdleAge is how
	// long it had been idle (for a server close, an estimate of the
	// server's idle timeout).
	Idle    bool
	IdleAge time.Duration
	// DuringRequest is set when a request was on the connection.
	DuringRequest bool
	Err           error
}

// conn is one pooled connection.
type conn struct {
	info   ConnInfo
	nc     net.Conn // *tls.Conn or the TCP connection
	sniff  *recordSniffer
	br     *bufio.Reader
	bw     *bufio.Writer
	cipher uint16

	// Guarded by the pool's mutex.
	idle      bool
	idleSince time.Time
	retire    *time.Timer
	idleGen   uint64 // counts idle periods, so a stale retire timer is ignored
	// idleRecords is the sniffer's record count when the connection went
	// idle; only records after it can be a close alert.
	idleRecords uint64

	watchDone chan struct{}
	watchErr  error
	closeOnce sync.Once
}

func newConn(nc net.Conn, sniff *recordSniffer, info ConnInfo) *conn {
	c := &conn{info: info, nc: nc, sniff: sniff}
	c.br = bufio.NewReader(nc)
	c.bw = bufio.NewWriter(nc)
	if tc, ok := nc.(*tls.Conn); ok {
		st := tc.ConnectionState()
		c.info.TLSVersion, c.cipher = st.Version, st.CipherSuite
	}
	return c
}

// startWatch posts a read on the idle connection, so that a server FIN,
// reset or alert is noticed when it arrives rather than on the next request.
// onEnd runs in the watch goroutine unless stopWatch interrupted it.
func (c *conn) startWatch(onEnd func(error)) {
	c.watchDone = make(chan struct{})
	go func() {
		defer close(c.watchDone)
		_, err := c.br.Peek(1)
		if err == nil {
			err = errUnsolicited
		}
		c.watchErr = err
		if !isTimeout(err) {
			onEnd(err)
		}
	}()
}

// errUnsolicited is what a connection on which the server sent bytes while
// no request was open reports: the stream can no longer be trusted.
var errUnsolicited = errors.New("icap: server sent data on an idle connection")

// stopWatch interrupts the posted read and reports whether the connection
// is still usable. Interrupting with a past deadline is safe: crypto/tls
// treats timeouts as temporary and keeps partial records.
func (c *conn) stopWatch() error {
	c.nc.SetReadDeadline(time.Unix(1, 0))
	<-c.watchDone
	c.nc.SetReadDeadline(time.Time{})
	if isTimeout(c.watchErr) {
		return nil
	}
	return c.watchErr
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// classify turns a read or write error into who closed and how.
func (c *conn) classify(err error) CloseInfo {
	ci := CloseInfo{Err: err, Initiator: "server", How: "fin"}
	var op *net.OpError
	switch {
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		ci.Reason = "server_close"
		ci.Alert = c.closeAlert()
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		ci.Reason, ci.How = "reset", "rst"
	case errors.As(err, &op) && op.Op == "remote error":
		ci.Reason = "tls_alert"
		ci.Alert = alertName(op.Err.Error())
	case errors.Is(err, errUnsolicited), errors.Is(err, ErrMalformed), errors.Is(err, ErrTooLarge):
		ci.Initiator, ci.Reason = "client", "protocol_error"
	case isTimeout(err):
		ci.Initiator, ci.Reason = "client", "canceled"
	default:
		ci.Initiator, ci.Reason = "client", "error"
	}
	return ci
}

// closeAlert names the alert that preceded an EOF on a TLS connection.
// crypto/tls returns io.EOF only after a close_notify or at a clean record
// boundary, so a new alert record (TLS 1.2) or a new 19-byte record
// (TLS 1.3, where alerts are encrypted as application data) since the
// connection went idle is the close_notify.
func (c *conn) closeAlert() string {
	s := c.sniff
	if s == nil || s.records == c.idleRecords {
		return ""
	}
	switch {
	case c.info.TLSVersion >= tls.VersionTLS13 && s.lastType == recordApplicationData && s.lastLen == tls13CloseNotifyLen,
		c.info.TLSVersion < tls.VersionTLS13 && s.lastType == recordAlert:
		return "close_notify"
	}
	return ""
}

// alertName turns crypto/tls's "tls: bad certificate" into the RFC name
// "bad_certificate".
func alertName(s string) string {
	s = strings.TrimPrefix(s, "tls: ")
	return strings.ReplaceAll(s, " ", "_")
}

// close closes the connection once; a TLS connection sends close_notify
// first (crypto/tls bounds that write by its own 5 s deadline).
func (c *conn) close() {
	c.closeOnce.Do(func() { c.nc.Close() })
}

// addrPort converts a net.Addr from a TCP connection.
func addrPort(a net.Addr) netip.AddrPort {
	if ta, ok := a.(*net.TCPAddr); ok {
		ap := ta.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	return netip.AddrPort{}
}
