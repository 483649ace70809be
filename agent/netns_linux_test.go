package agent

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/icapwatch/icapwatch/internal/cicap"
	"github.com/icapwatch/icapwatch/internal/testutil"
	"github.com/vishvananda/netns"
)

// TestFlowsByNetworkNamespace: the tracepoints see the sockets of every
// network namespace; the agent's TC programs only the traffic of its own
// interfaces. The host runs a real ICAP server, c-icap, on loopback; two
// namespaces of the test's reuse its address and port: in one, a
// connection with the very addresses and ports of one of the host's; in
// the other, connections the agent cannot see at all. The host's
// connection must stay the agent's, followed to its one close, and the
// others must leave nothing behind.
func TestFlowsByNetworkNamespace(t *testing.T) {
	testutil.RequireRoot(t)
	pair := testutil.NewVethPair(t) // two namespaces, used here for their own lo
	nsA, nsB := pair.Client, pair.Server
	srv := cicap.StartTest(t, cicap.Config{Workers: 4, KeepAlive: 30 * time.Second, Timeout: time.Second})
	server := netip.MustParseAddrPort(srv.Addr())
	lnA, lnB := listenAt(t, nsA, server.String()), listenAt(t, nsB, server.String())

	_, base := runDaemon(t, loopbackAgent(int(server.Port())))
	labels := map[string]string{"server": server.String(), "state": "established"}
	established := func() float64 { return sum(scrape(t, base+"/metrics"), "icapwatch_connections", labels) }
	tcfg := cicapTLS(t, srv)
	dial := func() *stressConn {
		t.Helper()
		c, err := dialOne(srv.Addr(), tcfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.tcp.Close() })
		return c
	}

	// The host's connection, answered, and the same addresses and ports in A.
	x := dial()
	if err := x.options(srv.Addr()); err != nil {
		t.Fatal(err)
	}
	waitCond(t, 10*time.Second, "the host's connection shown established", func() bool { return established() == 1 })
	a, aServer := testutil.Connect(t, lnA, nsDialerFrom(nsA, x.local))
	if a.LocalAddr().String() != x.local.String() {
		t.Fatalf("A's client is %s, want the host's %s", a.LocalAddr(), x.local)
	}
	// Two in B, left open a while.
	b1, _ := testutil.Connect(t, lnB, testutil.NSDialer{NS: nsB}.DialContext)
	b2, _ := testutil.Connect(t, lnB, testutil.NSDialer{NS: nsB}.DialContext)
	// A's connection ends, both of its ends.
	a.Close()
	aServer.Close()

	// What the agent makes of the above is in once it has reported a
	// later connection's close: its events come in the kernel's order.
	settled := func(what string) {
		t.Helper()
		s := dial()
		s.tls.Close()
		waitCond(t, 10*time.Second, what, func() bool { return len(closesOf(t, base, server, s.local.String())) == 1 })
	}
	settled("a later host connection's close, after A's connection closed")
	if n := established(); n != 1 {
		t.Errorf("%v connections established to %s, want the host's one: A's close or B's connections mixed in", n, server)
	}
	// The kernel's counters are read on the agent's next tick.
	if !pollUntil(5*time.Second, func() bool {
		return sum(scrape(t, base+"/metrics"), "icapwatch_kernel_other_netns_events_total", nil) > 0
	}) {
		t.Error("icapwatch_kernel_other_netns_events_total stays 0: no socket event was left out as another namespace's")
	}

	// B's connections end; then the host's, which the agent still follows.
	b1.Close()
	b2.Close()
	x.tls.Close()
	waitCond(t, 10*time.Second, "the host connection's close", func() bool {
		return len(closesOf(t, base, server, x.local.String())) > 0
	})
	settled("a later host connection's close, after the host's first one closed")
	if closes := closesOf(t, base, server, x.local.String()); len(closes) != 1 || closes[0].str("initiator") != "client" {
		t.Errorf("the host connection's closes: %v, want one, by the client", closes)
	}
	for _, b := range []net.Conn{b1, b2} {
		if port := netip.MustParseAddrPort(b.LocalAddr().String()).Port(); port != x.local.Port() {
			for _, e := range agentEvents(t, base, server) {
				if netip.MustParseAddrPort(e.str("client_addr")).Port() == port {
					t.Errorf("an event of B's connection from port %d: %v", port, e)
				}
			}
		}
	}
	if n := established(); n != 0 {
		t.Errorf("%v connections established to %s after all closed, want 0", n, server)
	}
}

// closesOf are the agent's close events of one client address.
func closesOf(t *testing.T, base string, server netip.AddrPort, client string) []apiEvent {
	t.Helper()
	var out []apiEvent
	for _, e := range agentEvents(t, base, server) {
		if e.kind() == "close" && e.str("client_addr") == client {
			out = append(out, e)
		}
	}
	return out
}

// listenAt listens on addr in the network namespace ns until the test ends.
func listenAt(t *testing.T, ns netns.NsHandle, addr string) net.Listener {
	t.Helper()
	var ln net.Listener
	if err := testutil.InNetNS(ns, func() (err error) {
		ln, err = net.Listen("tcp", addr)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// nsDialerFrom dials from local in the network namespace ns.
func nsDialerFrom(ns netns.NsHandle, local netip.AddrPort) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := testutil.InNetNS(ns, func() (err error) {
			d := &net.Dialer{KeepAlive: -1, LocalAddr: net.TCPAddrFromAddrPort(local)}
			c, err = d.DialContext(ctx, network, addr)
			return err
		})
		if err != nil {
			return nil, fmt.Errorf("dial from %s: %w", local, err)
		}
		return c, nil
	}
}
