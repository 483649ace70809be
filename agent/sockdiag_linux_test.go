package agent

import (
	"io"
	"net"
	"os"
	"testing"

	"github.com/icapwatch/icapwatch/internal/testutil"
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
