package agent

import (
	"net"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"testing"
	"time"
	"unsafe"

	"github.com/icapwatch/icapwatch/internal/testutil"
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
