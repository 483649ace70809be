// Package cicap runs Debian's c-icap as a real ICAP server for the
// end-to-end tests and the capture fixtures: a private instance with its
// own configuration, certificate, logs, pid file and control socket in a
// directory of the caller's, on a loopback port of its own, never the
// system's service.
//
// c-icap gives a worker to each connection for as long as it stays open,
// idle or not, which is what icapwatch diagnoses: with more pooled
// connections than workers, a new connection's handshake waits until the
// server idle-closes one of the others.
package cicap

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/icapwatch/icapwatch/icap"
	"github.com/icapwatch/icapwatch/internal/testutil"
)

// ErrNotInstalled says that c-icap or its echo service is missing: the
// tests skip (or fail where privileged tests are required).
var ErrNotInstalled = errors.New("c-icap is not installed (Debian's c-icap package; make deps installs it)")

// Service is the built-in service the instance offers: it answers
// OPTIONS, and RESPMOD and REQMOD with the content unchanged.
const Service = "echo"

// Config shapes an instance.
type Config struct {
	// Dir holds everything of the instance's: config, certificate, logs.
	Dir string
	// Addr is the TLS listener's address; "127.0.0.1:0" picks a free port.
	Addr string
	// Workers is how many connections the one server process serves at
	// once (ThreadsPerChild, with MaxServers 1).
	Workers int
	// KeepAlive and Timeout, whole seconds: c-icap 0.5 waits KeepAlive
	// for an idle connection's next request and then Timeout more for its
	// first bytes before it closes the connection, so an idle connection
	// is closed after their sum (IdleClose).
	KeepAlive, Timeout time.Duration
	// TLS12 makes the server refuse TLS 1.3 (SSL_OP_NO_TLSv1_3): its
	// alerts are then visible records on the wire.
	TLS12 bool
}

// IdleClose is how long an idle connection stays open.
func (c Config) IdleClose() time.Duration { return c.KeepAlive + c.Timeout }

// Server is a running instance.
type Server struct {
	cfg     Config
	addr    string
	certPEM []byte
	cmd     *exec.Cmd
	exited  chan struct{}
}

// find returns c-icap's binary and the directory of its services.
func find() (bin, services string, err error) {
	bin, err = exec.LookPath("c-icap")
	if err != nil {
		return "", "", ErrNotInstalled
	}
	for _, pattern := range []string{"/usr/lib/*/c_icap/srv_echo.so", "/usr/lib/c_icap/srv_echo.so",
		"/usr/lib64/c_icap/srv_echo.so", "/usr/local/lib/c_icap/srv_echo.so"} {
		if m, _ := filepath.Glob(pattern); len(m) > 0 {
			return bin, filepath.Dir(m[0]), nil
		}
	}
	return "", "", fmt.Errorf("%w: no srv_echo.so found", ErrNotInstalled)
}

// Start writes the instance's files and starts it; it returns once the
// server answers an OPTIONS over TLS. A port that another process takes
// in the meantime is tried again with another.
func Start(cfg Config) (*Server, error) {
	bin, services, err := find()
	if err != nil {
		return nil, err
	}
	if cfg.Workers <= 0 || cfg.KeepAlive < time.Second || cfg.Timeout < time.Second {
		return nil, errors.New("cicap: Workers, and KeepAlive and Timeout of a second or more, are needed")
	}
	if cfg.Addr == "" {
		cfg.Addr = "127.0.0.1:0"
	}
	cert, certPEM, err := icap.SelfSignedCert()
	if err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(cfg.Dir, "cert.pem"), certPEM, 0o644); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(cfg.Dir, "key.pem"),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return nil, err
	}
	for attempt := 1; ; attempt++ {
		addr, err := freeAddr(cfg.Addr)
		if err != nil {
			return nil, err
		}
		s := &Server{cfg: cfg, addr: addr, certPEM: certPEM, exited: make(chan struct{})}
		err = s.start(bin, services)
		switch {
		case err == nil:
			return s, nil
		case attempt == 3 || !strings.HasSuffix(cfg.Addr, ":0"):
			return nil, err
		}
	}
}

// freeAddr picks a free port for an address ending in ":0".
func freeAddr(addr string) (string, error) {
	if !strings.HasSuffix(addr, ":0") {
		return addr, nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

func (s *Server) path(name string) string { return filepath.Join(s.cfg.Dir, name) }

func (s *Server) config(services string) string {
	tlsOptions := ""
	if s.cfg.TLS12 {
		tlsOptions = " tls-options=SSL_OP_NO_TLSv1_3"
	}
	lines := []string{
		"PidFile " + s.path("c-icap.pid"),
		"CommandsSocket " + s.path("c-icap.ctl"),
		fmt.Sprintf("Timeout %d", int(s.cfg.Timeout.Seconds())),
		fmt.Sprintf("KeepAliveTimeout %d", int(s.cfg.KeepAlive.Seconds())),
		"MaxKeepAliveRequests -1",
		// One process with Workers threads: no second process is started
		// when they are all busy.
		"StartServers 1",
		"MaxServers 1",
		"MinSpareThreads 0",
		fmt.Sprintf("MaxSpareThreads %d", s.cfg.Workers),
		fmt.Sprintf("ThreadsPerChild %d", s.cfg.Workers),
		"MaxRequestsPerChild 0",
		fmt.Sprintf("TlsPort %s cert=%s key=%s%s", s.addr, s.path("cert.pem"), s.path("key.pem"), tlsOptions),
		"ServerName icapwatch-test",
		"TmpDir " + s.cfg.Dir,
		"ModulesDir " + services,
		"ServicesDir " + services,
		"ServerLog " + s.path("server.log"),
		"AccessLog " + s.path("access.log"),
		// Level 5 is the lowest at which the server log has a line for
		// each connection a worker lets go of (Ends).
		"DebugLevel 5",
		"Service " + Service + " srv_echo.so",
	}
	if _, err := os.Stat("/usr/share/c_icap/templates"); err == nil {
		lines = append(lines, "TemplateDir /usr/share/c_icap/templates/")
	}
	return strings.Join(lines, "\n") + "\n"
}

func (s *Server) start(bin, services string) error {
	conf := s.path("c-icap.conf")
	if err := os.WriteFile(conf, []byte(s.config(services)), 0o644); err != nil {
		return err
	}
	out, err := os.Create(s.path("stdout.log"))
	if err != nil {
		return err
	}
	defer out.Close()
	// -N: in the foreground, so that this process is its parent. Its own
	// process group holds its server process too, for Stop.
	s.cmd = exec.Command(bin, "-N", "-f", conf)
	s.cmd.Dir = s.cfg.Dir
	s.cmd.Stdout, s.cmd.Stderr = out, out
	s.cmd.SysProcAttr = procAttr()
	// c-icap is told to stop when the thread that started it ends (see
	// procAttr): that thread is this goroutine's, kept until c-icap has
	// exited, whatever the rest of the process does with its threads.
	started := make(chan error)
	go func() {
		runtime.LockOSThread()
		err := s.cmd.Start()
		started <- err
		if err == nil {
			s.cmd.Wait()
		}
		close(s.exited)
	}()
	if err := <-started; err != nil {
		return err
	}
	if err := s.ready(); err != nil {
		s.Stop()
		return fmt.Errorf("c-icap on %s: %w\n%s", s.addr, err, s.Log())
	}
	return nil
}

// ready waits until the server answers an OPTIONS over TLS.
func (s *Server) ready() error {
	deadline := time.Now().Add(15 * time.Second)
	var last error
	for time.Now().Before(deadline) {
		select {
		case <-s.exited:
			return fmt.Errorf("exited: %v", s.cmd.ProcessState)
		default:
		}
		if last = s.options(time.Until(deadline)); last == nil {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("no answer within 15s: %w", last)
}

func (s *Server) options(timeout time.Duration) error {
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(s.certPEM)
	d := &net.Dialer{Timeout: time.Second}
	c, err := tls.DialWithDialer(d, "tcp", s.addr, &tls.Config{RootCAs: roots, ServerName: "127.0.0.1"})
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(min(timeout, 5*time.Second)))
	req := "OPTIONS icap://" + s.addr + "/" + Service + " ICAP/1.0\r\nHost: " + s.addr + "\r\nEncapsulated: null-body=0\r\n\r\n"
	if _, err := io.WriteString(c, req); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if !strings.HasPrefix(line, "ICAP/1.0 200") {
		return fmt.Errorf("OPTIONS answered %q", strings.TrimSpace(line))
	}
	return nil
}

// Addr is the TLS listener's address.
func (s *Server) Addr() string { return s.addr }

// Target is the URL of the echo service.
func (s *Server) Target() string { return "icaps://" + s.addr + "/" + Service }

// CAFile is the PEM file of the server's certificate, for clients to trust.
func (s *Server) CAFile() string { return s.path("cert.pem") }

// IdleClose is how long an idle connection stays open.
func (s *Server) IdleClose() time.Duration { return s.cfg.IdleClose() }

// Log is the server's own log (its errors, and its stdout).
func (s *Server) Log() string {
	var b strings.Builder
	for _, name := range []string{"server.log", "stdout.log"} {
		if data, err := os.ReadFile(s.path(name)); err == nil && len(data) > 0 {
			fmt.Fprintf(&b, "--- c-icap %s\n%s", name, data)
		}
	}
	return b.String()
}

// endLine is what c-icap 0.5 logs (at debug level 5) when a worker lets a
// connection go: its idle time ran out, or the client closed it or broke
// off a request.
const endLine = "connection closed or request timed-out or request interrupted"

// Ends reads the server log for the connections the server has let go
// of, in the order it did: the time of each, to the second (the log's
// precision), whoever closed it. The first are the readiness check's,
// which Start closes from the client side: one, or more when its first
// tries timed out, whose ends the server may log a moment after Start
// returns.
func (s *Server) Ends() ([]time.Time, error) {
	data, err := os.ReadFile(s.path("server.log"))
	if err != nil {
		return nil, err
	}
	var ends []time.Time
	for line := range strings.Lines(string(data)) {
		if !strings.Contains(line, endLine) {
			continue
		}
		// "Tue Nov 24 14:27:59 2026, 6524/1358952128, connection closed ...":
		// ctime's format, in c-icap's local time, which is this process's.
		stamp, _, ok := strings.Cut(line, ", ")
		if !ok {
			return nil, fmt.Errorf("c-icap server log: no time in %q", line)
		}
		at, err := time.ParseInLocation(ctimeLayout, stamp, time.Local)
		if err != nil {
			return nil, fmt.Errorf("c-icap server log: %w", err)
		}
		ends = append(ends, at)
	}
	return ends, nil
}

// ctimeLayout is ctime(3)'s, without its newline: the day of the month
// is padded with a space.
const ctimeLayout = "Mon Jan _2 15:04:05 2006"

// Stop ends the instance: the main process is asked to stop (it stops
// its server process), and whatever of its process group is still there
// after a few seconds is killed. It returns once they are gone.
func (s *Server) Stop() error {
	if s.cmd == nil || s.cmd.Process == nil {
		return nil
	}
	pid := s.cmd.Process.Pid
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exited:
	case <-time.After(5 * time.Second):
	}
	// The group is the main process's pid; its server process may
	// outlive it for a moment.
	for deadline := time.Now().Add(3 * time.Second); groupAlive(pid) && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
	}
	if groupAlive(pid) {
		killGroup(pid)
		for deadline := time.Now().Add(3 * time.Second); groupAlive(pid) && time.Now().Before(deadline); {
			time.Sleep(20 * time.Millisecond)
		}
	}
	<-s.exited
	if groupAlive(pid) {
		return fmt.Errorf("c-icap process group %d still alive", pid)
	}
	return nil
}

// StartTest starts an instance in a directory of the test's, stopped when
// the test ends; where c-icap is not installed, the test is skipped (or
// fails where privileged tests are required).
func StartTest(t testing.TB, cfg Config) *Server {
	t.Helper()
	cfg.Dir = t.TempDir()
	s, err := Start(cfg)
	if errors.Is(err, ErrNotInstalled) {
		testutil.SkipOrFail(t, "%v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Stop(); err != nil {
			t.Error(err)
		}
	})
	return s
}
