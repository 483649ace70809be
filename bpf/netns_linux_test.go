package bpf

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/icapwatch/icapwatch/internal/testutil"
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
		p.SetDeadline(deadline)
		ev, err := p.Read()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatal("the namespace's connection did not reach CLOSE within 10s")
		}
		if err != nil {
			t.Fatal(err)
		}
		if ev.Client.Port() == hostPort {
			t.Errorf("an event of the host's connection: %+v", ev)
		}
		if ev.Client.Port() == nsPort && ev.Type == evState && ev.Dir == dirToServer && ev.NewState == tcpClose {
			break
		}
	}
	st, err := p.Stats(false)
	if err != nil {
		t.Fatal(err)
	}
	if st.OtherNetns == 0 {
		t.Error("no socket event counted as another namespace's")
	}
}
