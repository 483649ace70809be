package testutil

import (
	"context"
	"net"
	"testing"
	"time"
)

// Connect dials ln's address with dial and returns both ends of the
// connection, the server's as ln accepted it. Both are closed when the
// test ends (closing one earlier is fine).
func Connect(t testing.TB, ln net.Listener, dial func(ctx context.Context, network, addr string) (net.Conn, error)) (client net.Conn, server *net.TCPConn) {
	t.Helper()
	accepted := make(chan net.Conn, 1)
	go func() {
		if c, err := ln.Accept(); err == nil {
			accepted <- c
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	client, err := dial(ctx, "tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	select {
	case c := <-accepted:
		server = c.(*net.TCPConn)
	case <-time.After(5 * time.Second):
		t.Fatal("not accepted within 5s")
	}
	t.Cleanup(func() { server.Close() })
	return client, server
}
