package bpf

import (
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/icapwatch/icapwatch/internal/testutil"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// TestProbeLeavesOtherNamespacesOut: a probe watching a namespace's
// loopback gets no event of the host's loopback connection to the same
// address and port, which its TC programs cannot see, though its
// tracepoints see the host's sockets; its own namespace's connection is
// followed to its end. Real sockets in a namespace of the test's own.
func TestProbeLeavesOtherNamespacesOut(t *testing.T) {
	testutil.RequireRoot(t)
	pair := testutil.NewVethPair(t)
	host, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { host.Close() })
	port := host.Addr().(*net.TCPAddr).Port
	var inNS net.Listener
	if err := testutil.InNetNS(pair.Client, func() (err error) {
		inNS, err = net.Listen("tcp", host.Addr().String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { inNS.Close() })
	p := openOnLoopback(t, pair.Client, port, DefaultConfig())
	if p.settings.SkNet == offNone {
		testutil.SkipOrFail(t, "this kernel's BTF does not give a socket's network namespace")
	}

	// The host's connection first, then the namespace's: the probe's
	// events come in time order, so the namespace's close comes after
	// anything it could have said of the host's.
	hostCli, hostSrv := testutil.Connect(t, host, (&net.Dialer{KeepAlive: -1}).DialContext)
	hostPort := netip.MustParseAddrPort(hostCli.LocalAddr().String()).Port()
	hostCli.Close()
	hostSrv.Close()
	cli, srv := testutil.Connect(t, inNS, testutil.NSDialer{NS: pair.Client}.DialContext)
	nsPort := netip.MustParseAddrPort(cli.LocalAddr().String()).Port()
	if nsPort == hostPort {
		t.Skipf("both clients got port %d: the events cannot be told apart by port", nsPort)
	}
	cli.Close()
	srv.Close()

	deadline := time.Now().Add(10 * time.Second)
	for {
		ev := readBy(t, p, deadline, "CLOSE of the namespace's connection")
		if ev.Client.Port() == hostPort {
			t.Errorf("an event of the host's connection: %+v", ev)
		}
		if ev.Client.Port() == nsPort && ev.Type == evState && ev.Dir == dirToServer && ev.NewState == tcpClose {
			break
		}
	}
	wantOtherNetns(t, p)
}

// TestProbeIgnoresCopiedConnection: a namespace of its own (any user
// with user namespaces can make one) puts a watched connection's two
// addresses on its loopback and opens a connection with the same ports.
// The tracepoints see its sockets, and TC has a flow of that four-tuple,
// but what its sockets send never crosses a watched interface: none of
// their events may come out, and their close must not end the real flow.
// The probe starts after the real connection, as after an agent restart,
// when no socket has spoken for the flow yet.
func TestProbeIgnoresCopiedConnection(t *testing.T) {
	testutil.RequireRoot(t)
	pair := testutil.NewVethPair(t)
	copyNS := "icw-x-" + pair.ClientNS[len("icw-c-"):]
	for _, args := range [][]string{
		{"netns", "add", copyNS},
		{"-n", copyNS, "link", "set", "lo", "up"},
		{"-n", copyNS, "addr", "add", pair.ClientIP + "/32", "dev", "lo"},
		{"-n", copyNS, "addr", "add", pair.ServerIP + "/32", "dev", "lo"},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v: %s", args, err, out)
		}
		if args[0] == "netns" {
			t.Cleanup(func() { exec.Command("ip", "netns", "del", copyNS).Run() })
		}
	}
	copyHandle, err := netns.GetFromName(copyNS)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { copyHandle.Close() })

	var ln net.Listener
	if err := testutil.InNetNS(pair.Server, func() (err error) {
		ln, err = net.Listen("tcp", pair.ServerIP+":0")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	cli, srv := testutil.Connect(t, ln, testutil.NSDialer{NS: pair.Client}.DialContext)
	local := cli.LocalAddr().(*net.TCPAddr)
	port := ln.Addr().(*net.TCPAddr).Port

	cfg := DefaultConfig()
	cfg.Kprobes, cfg.Interfaces, cfg.Ports = KprobesOff, []string{pair.ClientIf}, []uint16{uint16(port)}
	var p *Probe
	if err := testutil.InNetNS(pair.Client, func() (err error) {
		p, err = Open(cfg)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { testutil.InNetNS(pair.Client, p.Close) })
	if p.settings.SkNet == offNone {
		testutil.SkipOrFail(t, "this kernel's BTF does not give a socket's network namespace")
	}
	deadline := time.Now().Add(10 * time.Second)
	next := func(what string) Event { t.Helper(); return readBy(t, p, deadline, what) }

	// A request: TC has the flow from its first segment.
	if _, err := cli.Write([]byte("REQMOD icap://scan/ ICAP/1.0\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	for ev := next("exchange start"); ev.Type != evExchangeStart; ev = next("exchange start") {
	}

	// The copy: the same four-tuple, connected and closed in copyNS.
	if err := testutil.InNetNS(copyHandle, func() error {
		cl, err := net.Listen("tcp", net.JoinHostPort(pair.ServerIP, strconv.Itoa(port)))
		if err != nil {
			return err
		}
		defer cl.Close()
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(pair.ClientIP), Port: local.Port}, KeepAlive: -1}
		c, err := d.Dial("tcp", cl.Addr().String())
		if err != nil {
			return err
		}
		s, err := cl.Accept()
		if err != nil {
			c.Close()
			return err
		}
		c.Close()
		return s.Close()
	}); err != nil {
		t.Fatal(err)
	}

	// The answer still ends the real exchange, and nothing of the copy
	// came before it: the real sockets changed no state meanwhile.
	if _, err := srv.Write([]byte("ICAP/1.0 204 No Content\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	for ev := next("answer"); ev.Type != evAnswer; ev = next("answer") {
		if ev.Type == evState {
			t.Errorf("a state event of the copied connection: %+v", ev)
		}
	}
	wantOtherNetns(t, p)
}

// TestPeerNamespaceFromProc: the namespace behind a veth is found from
// the processes in /proc when it is bound nowhere (a pod's, where the
// agent sees no /run/netns), and not found where no process has it.
func TestPeerNamespaceFromProc(t *testing.T) {
	pair := testutil.NewVethPair(t)
	var want unix.Stat_t
	if err := unix.Stat("/run/netns/"+pair.ServerNS, &want); err != nil {
		t.Fatal(err)
	}
	holder := exec.Command("ip", "netns", "exec", pair.ServerNS, "sleep", "60")
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { holder.Process.Kill(); holder.Wait() })
	inNS := func() bool {
		var st unix.Stat_t
		return unix.Stat(fmt.Sprintf("/proc/%d/ns/net", holder.Process.Pid), &st) == nil && st.Ino == want.Ino
	}
	for deadline := time.Now().Add(5 * time.Second); !inNS(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the holder did not enter the server's namespace within 5s")
		}
	}
	if err := testutil.InNetNS(pair.Client, func() error {
		l, err := netlink.LinkByName(pair.ClientIf)
		if err != nil {
			return err
		}
		if l.Attrs().NetNsID < 0 {
			return fmt.Errorf("%s has no nsid for its peer's namespace", pair.ClientIf)
		}
		p, err := newPeerNamespaces(nil, "/proc", hclog.NewNullLogger())
		if err != nil {
			return err
		}
		defer p.close()
		p.bound = nil
		if got, err := p.inode(l.Attrs().NetNsID); err != nil || uint64(got) != want.Ino {
			t.Errorf("from /proc: inode %d (%v), want %d", got, err, want.Ino)
		}
		p.proc = t.TempDir()
		if got, err := p.inode(l.Attrs().NetNsID); err == nil {
			t.Errorf("with no process: inode %d, want an error", got)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// wantOtherNetns fails the test when the probe counted no socket event as
// another namespace's.
func wantOtherNetns(t *testing.T, p *Probe) {
	t.Helper()
	st, err := p.Stats(false)
	if err != nil {
		t.Fatal(err)
	}
	if st.OtherNetns == 0 {
		t.Error("no socket event counted as another namespace's")
	}
}
