package bpf

import (
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"github.com/icapwatch/icapwatch/internal/testutil"
	"golang.org/x/sys/unix"
)

const evAppWriteFailed = uint8(icapwatchEventTypeEV_APP_WRITE_FAILED)

// TestFailedWriteAfterServerReset: a server resets an idle pooled
// connection (linger 0, as c-icap's idle close ends in a reset), and the
// client's application writes on it: the write fails at once and sends
// nothing, so TC sees nothing; sock:sock_send_length reports the failure
// with the flow, found by the socket's address, as the state tracepoint
// left it at CLOSE, or where the kernel lacks that tracepoint, the
// tcp_sendmsg kprobe does. Real sockets on lo, in a namespace of the
// test's own.
func TestFailedWriteAfterServerReset(t *testing.T) {
	testutil.RequireRoot(t)
	hook, from, cfg := HookSendLength, icapwatchHookHOOK_TRACEPOINT, DefaultConfig()
	if root, err := FindTracefs(); err != nil || !exists(root+"/events/sock/sock_send_length") {
		// Before 6.x: the kprobe, where the kernel has kprobes and BTF.
		var c icapwatchConfig
		if _, reason := kprobeSettings(&c, kernelBTF); reason != "" {
			testutil.SkipOrFail(t, "neither sock:sock_send_length nor the tcp_sendmsg kprobe: %s", reason)
			return
		}
		hook, from = HookSendmsg, icapwatchHookHOOK_KPROBE
	} else {
		cfg.Kprobes = KprobesOff
	}
	pair := testutil.NewVethPair(t)
	ln := testutil.ListenIn(t, pair.Client)
	p := openOnLoopbackKprobes(t, pair.Client, ln.Addr().(*net.TCPAddr).Port, cfg)
	attached := false
	for _, h := range p.Hooks() {
		if h.Name == hook {
			attached = h.Attached && h.Optional
		}
	}
	if !attached {
		t.Fatalf("hook %s not attached as an optional hook: %+v", hook, p.Hooks())
	}

	cli, srv := testutil.Connect(t, ln, testutil.NSDialer{NS: pair.Client}.DialContext)
	// One exchange, then the connection sits idle until the server resets it.
	if _, err := cli.Write(record(100)); err != nil {
		t.Fatal(err)
	}
	srv.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(srv, make([]byte, 105)); err != nil {
		t.Fatal(err)
	}
	if _, err := srv.Write(record(300)); err != nil {
		t.Fatal(err)
	}
	cli.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(cli, make([]byte, 305)); err != nil {
		t.Fatal(err)
	}
	srv.SetLinger(0)
	srv.Close()

	local := cli.LocalAddr().(*net.TCPAddr).AddrPort()
	server := ln.Addr().(*net.TCPAddr).AddrPort()
	// next reads the flow's events until one matches.
	next := func(what string, match func(Event) bool) Event {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			ev := readBy(t, p, deadline, what)
			if ev.Client.Port() != local.Port() {
				continue
			}
			if ev.Type == evAppWriteFailed && what != "failed write" {
				t.Fatalf("failed write before %s: %s", what, describeOne(ev))
			}
			if match(ev) {
				return ev
			}
		}
	}
	closed := next("client socket in CLOSE", func(ev Event) bool {
		return ev.Type == evState && ev.Dir == dirToServer && ev.NewState == tcpClose
	})

	// The kprobe runs at the call, before the errno is known.
	errnoFrom := func(e unix.Errno) uint32 {
		if from == icapwatchHookHOOK_KPROBE {
			return 0
		}
		return uint32(e)
	}
	for _, want := range []unix.Errno{unix.ECONNRESET, unix.EPIPE} {
		if _, err := cli.Write(record(100)); !errors.Is(err, want) {
			t.Fatalf("write after the server's reset: %v, want %v", err, want)
		}
		ev := next("failed write", func(ev Event) bool { return ev.Type == evAppWriteFailed })
		if ev.Client != local || ev.Server != server || ev.Dir != dirToServer ||
			ev.Hook != uint8(from) || ev.Sock != closed.Sock ||
			ev.Len != errnoFrom(want) || ev.NewState != tcpClose || ev.OldState != tcpEstablished ||
			ev.PID != uint32(os.Getpid()) {
			t.Errorf("failed write (%v): %s, sock %#x, errno %d, states %d->%d, pid %d; want %s -> %s to the server, "+
				"from hook %d, sock %#x, errno %d, 1->7, pid %d", want, describeOne(ev), ev.Sock, ev.Len,
				ev.OldState, ev.NewState, ev.PID, local, server, from, closed.Sock, errnoFrom(want), os.Getpid())
		}
	}
}
