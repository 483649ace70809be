package agent

import (
	"bytes"
	"fmt"
	"io"
	"maps"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/icapwatch/icapwatch/agent/observe"
	"github.com/icapwatch/icapwatch/internal/testutil"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// TestSockDiagFindsLoopbackFlow reads a real connection on a watched port
// and finds both ends with their owner.
func TestSockDiagFindsLoopbackFlow(t *testing.T) {
	testutil.RequireRoot(t) // reading other processes' /proc/PID/fd needs it
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		accepted <- err
		if err == nil {
			io.Copy(io.Discard, c) // never answers: the request stays open
			c.Close()
		}
	}()
	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// A socket still in the accept queue has no file, hence no owner:
	// read only once the server end belongs to this process.
	if err := <-accepted; err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Write([]byte("OPTIONS icap://127.0.0.1/x ICAP/1.0\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	port := uint16(ln.Addr().(*net.TCPAddr).Port)
	d := NewSockDiag([]uint16{port}, "", false)
	socks, err := d.Sockets()
	if err != nil {
		testutil.SkipOrFail(t, "sock_diag: %v", err)
		return
	}
	comm, _ := os.ReadFile("/proc/self/comm")
	var client, server bool
	for _, s := range socks {
		if s.Flow.Client.String() != conn.LocalAddr().String() {
			continue
		}
		if s.PID != uint32(os.Getpid()) || s.Comm+"\n" != string(comm) {
			t.Errorf("owner of %+v: want pid %d comm %q", s, os.Getpid(), comm)
		}
		if s.ClientEnd {
			client = true
		} else {
			server = true
		}
	}
	if !client || !server {
		t.Errorf("want both ends of %s, got %+v", conn.LocalAddr(), socks)
	}
}

// TestSockDiagPortFilter checks the kernel-side port filter and the
// in-place parser: of connections to three ports, over IPv4 and IPv6,
// the dump keeps those to the watched ones, both ends, and reads the
// same fields as vishvananda/netlink's independent parser.
func TestSockDiagPortFilter(t *testing.T) {
	type conn struct {
		client  net.Conn
		port    uint16
		written int
	}
	var conns []conn
	listen := func(network, addr string) uint16 {
		ln, err := net.Listen(network, addr)
		if err != nil {
			t.Skipf("%s %s: %v", network, addr, err)
		}
		t.Cleanup(func() { ln.Close() })
		port := uint16(ln.Addr().(*net.TCPAddr).Port)
		for i := range 2 {
			c, err := net.Dial(network, ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { c.Close() })
			s, err := ln.Accept()
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close() })
			// Unread bytes on the server end: the receive queue.
			msg := make([]byte, 100*(i+1))
			if _, err := c.Write(msg); err != nil {
				t.Fatal(err)
			}
			conns = append(conns, conn{c, port, len(msg)})
		}
		return port
	}
	a, b := listen("tcp4", "127.0.0.1:0"), listen("tcp4", "127.0.0.1:0")
	c := listen("tcp6", "[::1]:0")
	unwatched := listen("tcp4", "127.0.0.1:0")
	time.Sleep(50 * time.Millisecond) // the bytes reach the receive queues

	mine := map[netip.AddrPort]bool{}
	for _, cn := range conns {
		mine[cn.client.LocalAddr().(*net.TCPAddr).AddrPort()] = true
	}
	many := make([]uint16, 0, 40) // a long program: the jumps still land
	for p := uint16(1); len(many) < 39; p++ {
		if p != a && p != b && p != c && p != unwatched {
			many = append(many, p)
		}
	}
	many = append(many, a)
	for _, ports := range [][]uint16{{a}, {b, a}, {a, b, c}, {c}, many} {
		watched := map[uint16]bool{}
		for _, p := range ports {
			watched[p] = true
		}
		// User space would drop the other ports too: it is told of all
		// four here, so that only the kernel's filter decides.
		all := map[uint16]bool{a: true, b: true, c: true, unwatched: true}
		var socks []Socket
		for _, family := range []uint8{unix.AF_INET, unix.AF_INET6} {
			var err error
			if socks, err = diagDump(family, portFilter(ports), make([]byte, diagReceiveBuffer), socks, all); err != nil {
				testutil.SkipOrFail(t, "sock_diag: %v", err)
				return
			}
		}
		// Other sockets of the host may use these port numbers too: only
		// this test's connections count.
		got := map[string]Socket{}
		n := 0
		for _, s := range socks {
			if !mine[s.Flow.Client] {
				continue
			}
			n++
			if !watched[s.Flow.Server.Port()] {
				t.Errorf("ports %v: port %d passed the filter: %+v", ports, s.Flow.Server.Port(), s)
			}
			got[s.Flow.Client.String()+map[bool]string{true: " client", false: " server"}[s.ClientEnd]] = s
		}
		for _, cn := range conns {
			if !watched[cn.port] {
				continue
			}
			local := cn.client.LocalAddr().(*net.TCPAddr).AddrPort()
			cl, ok1 := got[local.String()+" client"]
			sv, ok2 := got[local.String()+" server"]
			if !ok1 || !ok2 {
				t.Errorf("ports %v: connection %s: client end %v, server end %v", ports, local, ok1, ok2)
				continue
			}
			if cl.Flow.Server.Port() != cn.port || sv.RQueue != uint32(cn.written) || cl.BytesAcked != uint64(cn.written)+1 {
				t.Errorf("ports %v: %s: client %+v, server %+v; want %d bytes queued and ACKed", ports, local, cl, sv, cn.written)
			}
			if sv.BytesReceived != uint64(cn.written) || cl.State != 1 || sv.Inode == 0 {
				t.Errorf("ports %v: %s: server end %+v", ports, local, sv)
			}
		}
		if want := 4 * countWatched(ports, a, b, c); n != want { // two connections a port, both ends
			t.Errorf("ports %v: %d sockets, want %d: %+v", ports, n, want, socks)
		}
	}

	// The same sockets through vishvananda/netlink's parser.
	d := NewSockDiag([]uint16{a, c}, "", false)
	socks, err := d.Sockets()
	if err != nil {
		t.Fatal(err)
	}
	theirs := map[uint32]*netlink.InetDiagTCPInfoResp{}
	for _, family := range []uint8{unix.AF_INET, unix.AF_INET6} {
		resp, err := netlink.SocketDiagTCPInfo(family)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range resp {
			theirs[r.InetDiagMsg.INode] = r
		}
	}
	for _, s := range socks {
		if !mine[s.Flow.Client] {
			continue
		}
		r := theirs[s.Inode]
		if r == nil || r.TCPInfo == nil {
			t.Errorf("inode %d not in netlink's dump", s.Inode)
			continue
		}
		ti := r.TCPInfo
		if s.RQueue != r.InetDiagMsg.RQueue || s.State != observe.TCPState(r.InetDiagMsg.State) ||
			s.Unacked != ti.Unacked || s.Retrans != ti.Total_retrans ||
			s.BytesAcked != ti.Bytes_acked || s.BytesReceived != ti.Bytes_received ||
			!near(s.SinceSent, ti.Last_data_sent) || !near(s.SinceRecv, ti.Last_data_recv) ||
			!near(s.SinceAckRecv, ti.Last_ack_recv) {
			t.Errorf("parsed %+v, netlink has %+v %+v", s, r.InetDiagMsg, ti)
		}
	}
}

// near: a timer read twice, a moment apart.
func near(d time.Duration, ms uint32) bool {
	diff := d - time.Duration(ms)*time.Millisecond
	return diff > -time.Second && diff < time.Second
}

func countWatched(ports []uint16, listened ...uint16) int {
	n := 0
	for _, l := range listened {
		if slices.Contains(ports, l) {
			n++
		}
	}
	return n
}

// What the agent reads under --proc is bounded and cannot block: a comm
// that is a FIFO or a huge file, or that holds bytes that are not UTF-8,
// gives a short, printable name or none; sockets not watched are not kept.
func TestSocketOwnersReadsProcSafely(t *testing.T) {
	proc := t.TempDir()
	mk := func(pid string, inode int, comm func(path string)) {
		fd := filepath.Join(proc, pid, "fd")
		if err := os.MkdirAll(fd, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(fmt.Sprintf("socket:[%d]", inode), filepath.Join(fd, "3")); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(fmt.Sprintf("socket:[%d]", inode+1000), filepath.Join(fd, "4")); err != nil {
			t.Fatal(err)
		}
		comm(filepath.Join(proc, pid, "comm"))
	}
	write := func(b []byte) func(string) {
		return func(path string) {
			if err := os.WriteFile(path, b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	mk("10", 1, write([]byte("\xff\xfebad\xc3\n")))
	mk("11", 2, write(bytes.Repeat([]byte("a"), 10<<20)))
	mk("12", 3, func(path string) {
		if err := unix.Mkfifo(path, 0o644); err != nil {
			t.Fatal(err)
		}
	})
	done := make(chan map[uint32]procOwner, 1)
	go func() { done <- socketOwners(proc, map[uint32]bool{1: true, 2: true, 3: true}) }()
	var owners map[uint32]procOwner
	select {
	case owners = <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("socketOwners blocks on a FIFO under --proc")
	}
	want := map[uint32]procOwner{1: {10, `\xff\xfebad\xc3`}, 2: {11, strings.Repeat("a", commMax)}, 3: {12, ""}}
	if !maps.Equal(owners, want) {
		t.Errorf("owners %v, want %v", owners, want)
	}
}
