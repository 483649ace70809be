package testutil

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"os/exec"
	"runtime"
	"strings"
	"testing"

	"github.com/vishvananda/netns"
)

// VethPair is two network namespaces joined by a veth pair, with no route
// out: a client host 192.0.2.1 and a server host 192.0.2.2.
type VethPair struct {
	ClientNS, ServerNS string // names for `ip netns exec`
	ClientIf, ServerIf string
	ClientIP, ServerIP string
	Client, Server     netns.NsHandle
}

// NewVethPair makes the namespaces; Cleanup deletes them and with them the
// veth pair.
func NewVethPair(t testing.TB) *VethPair {
	t.Helper()
	RequireRoot(t)
	if _, err := exec.LookPath("ip"); err != nil {
		SkipOrFail(t, "ip (iproute2) not found: %v", err)
	}
	id := fmt.Sprintf("%06x", rand.IntN(1<<24))
	p := &VethPair{
		ClientNS: "icw-c-" + id, ServerNS: "icw-s-" + id,
		ClientIf: "icwc" + id, ServerIf: "icws" + id,
		ClientIP: "192.0.2.1", ServerIP: "192.0.2.2",
	}
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	run("netns", "add", p.ClientNS)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", p.ClientNS).Run() })
	run("netns", "add", p.ServerNS)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", p.ServerNS).Run() })
	run("link", "add", p.ClientIf, "netns", p.ClientNS, "type", "veth", "peer", "name", p.ServerIf, "netns", p.ServerNS)
	for _, side := range []struct{ ns, dev, ip string }{
		{p.ClientNS, p.ClientIf, p.ClientIP}, {p.ServerNS, p.ServerIf, p.ServerIP},
	} {
		run("-n", side.ns, "addr", "add", side.ip+"/24", "dev", side.dev)
		run("-n", side.ns, "link", "set", side.dev, "up")
		run("-n", side.ns, "link", "set", "lo", "up")
	}
	var err error
	if p.Client, err = netns.GetFromName(p.ClientNS); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Client.Close() })
	if p.Server, err = netns.GetFromName(p.ServerNS); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Server.Close() })
	return p
}

// AddIPv6 gives the pair the client 2001:db8::1 and the server
// 2001:db8::2, usable at once (no duplicate address detection), and
// returns them.
func (p *VethPair) AddIPv6(t testing.TB) (client, server string) {
	t.Helper()
	client, server = "2001:db8::1", "2001:db8::2"
	for _, side := range []struct{ ns, dev, ip string }{
		{p.ClientNS, p.ClientIf, client}, {p.ServerNS, p.ServerIf, server},
	} {
		args := []string{"-n", side.ns, "addr", "add", side.ip + "/64", "dev", side.dev, "nodad"}
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	return client, server
}

// InNetNS runs fn on an OS thread moved into ns. Sockets that fn creates
// stay in ns wherever they are used later. The thread is thrown away
// afterwards rather than moved back.
func InNetNS(ns netns.NsHandle, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		// Never unlocked: the runtime ends the thread with the goroutine.
		runtime.LockOSThread()
		if err := netns.Set(ns); err != nil {
			errc <- fmt.Errorf("enter network namespace: %w", err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// NSDialer dials from inside a network namespace.
type NSDialer struct{ NS netns.NsHandle }

// DialContext opens the socket in the namespace.
func (d NSDialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := InNetNS(d.NS, func() error {
		var err error
		c, err = (&net.Dialer{KeepAlive: -1}).DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// ListenIn listens on a free port of 127.0.0.1 in the network namespace
// ns; the listener is closed when the test ends.
func ListenIn(t testing.TB, ns netns.NsHandle) net.Listener {
	t.Helper()
	var ln net.Listener
	if err := InNetNS(ns, func() (err error) {
		ln, err = net.Listen("tcp", "127.0.0.1:0")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}
