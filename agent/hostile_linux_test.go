package agent

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
	"unsafe"

	"github.com/icapwatch/icapwatch/internal/testutil"
	dto "github.com/prometheus/client_model/go"
	"golang.org/x/sys/unix"
)

// A test binary started with these variables names its main thread
// holdName and holds a connection to holdAddr until it is killed: a local
// process that names itself with any bytes it likes.
const (
	holdName = "ICAPWATCH_TEST_HOLD_AS"
	holdAddr = "ICAPWATCH_TEST_HOLD_ADDR"
)

func init() {
	name, addr := os.Getenv(holdName), os.Getenv(holdAddr)
	if name == "" {
		return
	}
	// Package init runs on the main thread: the name is the process's
	// (/proc/PID/comm) and the connecting thread's (the tracepoint's).
	runtime.LockOSThread()
	b := append([]byte(name), 0)
	if err := unix.Prctl(unix.PR_SET_NAME, uintptr(unsafePointer(b)), 0, 0, 0); err != nil {
		os.Exit(3)
	}
	c, err := net.Dial("tcp", addr)
	if err != nil {
		os.Exit(4)
	}
	defer c.Close()
	time.Sleep(time.Minute)
	os.Exit(0)
}

// holdAs starts a process named name that holds a connection to addr.
func holdAs(t *testing.T, name, addr string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), holdName+"="+name, holdAddr+"="+addr)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
}

// hostileName is a process name that is not UTF-8.
const hostileName = "\xff\xfebad\xc3"

// A process that names itself with bytes that are not UTF-8 and connects
// to a watched port made the agent panic on a label value; with the
// connection open at start, at every start. Its name is shown escaped.
func TestHostileProcessName(t *testing.T) {
	testutil.RequireRoot(t)
	for _, source := range []string{SourceSockDiag, SourceBPF} {
		t.Run(source, func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			accepted := make(chan net.Conn, 4)
			go func() {
				for {
					c, err := ln.Accept()
					if err != nil {
						return
					}
					accepted <- c
				}
			}()
			hold := func() {
				holdAs(t, hostileName, ln.Addr().String())
				select {
				case c := <-accepted:
					t.Cleanup(func() { c.Close() })
				case <-time.After(10 * time.Second):
					t.Fatal("the named process did not connect")
				}
			}
			if source == SourceSockDiag {
				hold() // open before the agent starts: seeded from /proc
			}
			cfg := loopbackAgent(ln.Addr().(*net.TCPAddr).Port)
			cfg.Source = source
			base := startDaemon(t, cfg)
			if source == SourceBPF {
				hold() // named by the tracepoint at connect
			}
			want := map[string]string{"client": `\xff\xfebad\xc3`, "state": "established"}
			for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(100 * time.Millisecond) {
				if sum(scrape(t, base+"/metrics"), "icapwatch_connections", want) == 1 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("no connection of %s in /metrics:\n%s", strconv.Quote(want["client"]), get(t, base+"/metrics"))
				}
			}
		})
	}
}

func unsafePointer(b []byte) unsafe.Pointer { return unsafe.Pointer(&b[0]) }

// dialAs connects to addr from a thread named name: the kernel names the
// connection's process by the connecting thread. The thread ends with
// its goroutine, locked, and its name with it.
func dialAs(name, addr string) (net.Conn, error) {
	type result struct {
		c   net.Conn
		err error
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the renamed thread exits
		b := append([]byte(name), 0)
		if err := unix.Prctl(unix.PR_SET_NAME, uintptr(unsafePointer(b)), 0, 0, 0); err != nil {
			done <- result{nil, err}
			return
		}
		c, err := net.Dial("tcp", addr)
		done <- result{c, err}
	}()
	r := <-done
	return r.c, r.err
}

// A process that renames itself before each connection made a series of
// every client-labelled metric per name, for good. With --max-clients the
// label values stay bounded, the rest counted as other; and once the
// connections are gone, their names' series go after the linger.
func TestRenamingProcessLoad(t *testing.T) {
	testutil.RequireRoot(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var mu sync.Mutex
	var conns []net.Conn
	defer func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	}()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	const n, maxClients = 400, 8
	cfg := loopbackAgent(ln.Addr().(*net.TCPAddr).Port)
	cfg.MaxClients, cfg.clientLinger = maxClients, 2*time.Second
	base := startDaemon(t, cfg)
	for i := range n {
		c, err := dialAs(fmt.Sprintf("renamed%d", i), ln.Addr().String())
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		mu.Lock()
		conns = append(conns, c)
		mu.Unlock()
	}

	// clients is every client label value in /metrics.
	clients := func(mfs map[string]*dto.MetricFamily) map[string]bool {
		out := map[string]bool{}
		for _, mf := range mfs {
			for _, m := range mf.GetMetric() {
				for _, l := range m.GetLabel() {
					if l.GetName() == "client" {
						out[l.GetValue()] = true
					}
				}
			}
		}
		return out
	}
	// A flow shows as soon as either end's state does, its client's name
	// with the client end's; a scrape reads the counters and the gauges
	// one after the other, not at one instant. A connection may also be
	// named after the process (sock_diag's owners from /proc: the main
	// thread's name, which one of the renamed threads may have been):
	// every connection has a name's own label, or is counted as other.
	var mfs map[string]*dto.MetricFamily
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		mfs = scrape(t, base+"/metrics")
		established := sum(mfs, "icapwatch_connections", map[string]string{"state": "established"})
		unknown := sum(mfs, "icapwatch_connections", map[string]string{"client": "unknown"})
		other := sum(mfs, "icapwatch_connections", map[string]string{"client": ClientOther})
		overflows := sum(mfs, "icapwatch_client_label_overflows_total", nil)
		if established >= n && unknown == 0 && overflows >= other {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%v connections established in /metrics, %v of unknown clients, %v labelled other, %v counted so; want %d, 0, and all counted",
				established, unknown, other, overflows, n)
		}
	}
	seen := clients(mfs)
	named := 0
	for c := range seen {
		if strings.HasPrefix(c, "renamed") {
			named++
		}
	}
	if named != maxClients || !seen[ClientOther] {
		t.Errorf("client labels %v: want %d process names and %q", seen, maxClients, ClientOther)
	}
	// About 15 KB; a series of each name would be over 200 KB.
	if text := get(t, base+"/metrics"); len(text) > 32<<10 {
		t.Errorf("/metrics is %d bytes with %d connections", len(text), n)
	}

	// Both ends of every connection close: the server's once accepted.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		mu.Lock()
		if len(conns) == 2*n {
			for _, c := range conns {
				c.Close()
			}
			conns = nil
			mu.Unlock()
			break
		}
		mu.Unlock()
		if time.Now().After(deadline) {
			t.Fatalf("the server end of %d connections not accepted", n)
		}
	}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		left := 0
		for c := range clients(scrape(t, base+"/metrics")) {
			if strings.HasPrefix(c, "renamed") {
				left++
			}
		}
		if left == 0 {
			break
		}
		if time.Now().After(deadline) {
			var lines []string
			for _, l := range strings.Split(get(t, base+"/metrics"), "\n") {
				if strings.Contains(l, `client="renamed`) {
					lines = append(lines, l)
				}
			}
			t.Fatalf("%d process names' series still in /metrics 30 s after their connections closed:\n%s",
				left, strings.Join(lines, "\n"))
		}
	}
}
