package agent

import (
	"net"
	"strconv"
	"testing"
)

// BenchmarkSockDiag is one dump of the watched sockets, IPv4 and IPv6,
// with the given number of loopback connections on the watched port
// (both ends are dumped) among the host's others.
func BenchmarkSockDiag(b *testing.B) {
	for _, n := range []int{0, 100, 2000} {
		b.Run(strconv.Itoa(n)+"_connections", func(b *testing.B) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			defer ln.Close()
			for range n {
				c, err := net.Dial("tcp", ln.Addr().String())
				if err != nil {
					b.Skipf("connection: %v", err)
				}
				defer c.Close()
				s, err := ln.Accept()
				if err != nil {
					b.Fatal(err)
				}
				defer s.Close()
			}
			d := NewSockDiag([]uint16{uint16(ln.Addr().(*net.TCPAddr).Port)}, "", false)
			b.ReportAllocs()
			for b.Loop() {
				socks, err := d.Sockets()
				if err != nil || len(socks) < 2*n { // more: an old TIME_WAIT on the port
					b.Fatalf("%d sockets, want %d: %v", len(socks), 2*n, err)
				}
			}
			if n > 0 {
				b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(2*n), "ns/socket")
			}
		})
	}
}
