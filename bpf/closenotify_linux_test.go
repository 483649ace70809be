package bpf

import (
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/icapwatch/icapwatch/internal/testutil"
	"golang.org/x/sys/unix"
)

// record is a TLS application data record of n bytes after its header:
// the classifier reads only the header.
func record(n int) []byte {
	b := make([]byte, 5+n)
	b[0], b[1], b[2], b[3], b[4] = 0x17, 3, 3, byte(n>>8), byte(n)
	return b
}

// TestResetProvesCloseNotifyOnLoopback: a server that closes with data
// unread, or with linger 0, resets; its socket reaches CLOSE before the
// reset leaves, and the flow must still be there for the reset to prove
// the server's last record a close_notify. Real sockets on lo, in a
// namespace of the test's own, as c-icap and Go's crypto/tls servers do
// it: the client answering the close_notify with its own and a FIN, or not.
func TestResetProvesCloseNotifyOnLoopback(t *testing.T) {
	for _, tc := range []struct {
		name         string
		clientAnswer bool // the client's close_notify and FIN reach the server first: it resets with them unread
	}{{"unread close_notify", true}, {"linger 0", false}} {
		t.Run(tc.name, func(t *testing.T) {
			pair := testutil.NewVethPair(t)
			ln := testutil.ListenIn(t, pair.Client)
			p := openOnLoopback(t, pair.Client, ln.Addr().(*net.TCPAddr).Port, DefaultConfig())

			cli, srv := testutil.Connect(t, ln, testutil.NSDialer{NS: pair.Client}.DialContext)
			exchange := func(from, to net.Conn, n int) {
				t.Helper()
				if _, err := from.Write(record(n)); err != nil {
					t.Fatal(err)
				}
				to.SetReadDeadline(time.Now().Add(5 * time.Second))
				if _, err := io.ReadFull(to, make([]byte, 5+n)); err != nil {
					t.Fatal(err)
				}
			}
			exchange(cli, srv, 100) // the request
			exchange(srv, cli, 300) // the answer
			exchange(srv, cli, 19)  // the server's close_notify
			sent := monoNow()
			if tc.clientAnswer {
				if _, err := cli.Write(record(19)); err != nil {
					t.Fatal(err)
				}
				cli.(*net.TCPConn).CloseWrite()
				waitUnread(t, srv, 24)
			} else {
				srv.SetLinger(0)
			}
			srv.Close()

			local := cli.LocalAddr().(*net.TCPAddr).AddrPort()
			var alert *Event
			deadline := time.Now().Add(10 * time.Second)
			for {
				ev := readBy(t, p, deadline, fmt.Sprintf("reset from the server (alert %v)", alert))
				if ev.Client.Port() != local.Port() || ev.Dir != dirToClient {
					continue
				}
				if ev.Type == uint8(icapwatchEventTypeEV_TLS_ALERT) {
					alert = &ev
				}
				if ev.Type == evRST {
					if alert == nil {
						t.Fatal("the server's reset came without its close_notify")
					}
					if alert.Flags&uint32(icapwatchEventFlagEVF_PROBABLE) == 0 || alert.RefMono == 0 || alert.RefMono > sent {
						t.Errorf("alert %s: want probable, with its record's time (before %v) in RefMono, got %v",
							describeOne(*alert), sent, alert.RefMono)
					}
					return
				}
			}
		})
	}
}

// waitUnread waits until n bytes wait unread in c's receive queue.
func waitUnread(t *testing.T, c *net.TCPConn, n int) {
	t.Helper()
	raw, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		queued := 0
		raw.Control(func(fd uintptr) { queued, _ = unix.IoctlGetInt(int(fd), unix.SIOCINQ) })
		if queued >= n {
			return
		}
	}
	t.Fatalf("%d bytes not in the receive queue within 5s", n)
}
