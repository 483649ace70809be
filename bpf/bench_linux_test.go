package bpf

import (
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"golang.org/x/sys/unix"
)

// BenchmarkKernelCost measures the classifier's own run time per packet,
// from the kernel's per-program statistics, on loopback traffic: b.N
// request/answer round trips on an unwatched port, then on a watched one.
// make bench-bpf runs it; the target on the development VM is at most
// 100 ns per unwatched and 300 ns per watched packet.
func BenchmarkKernelCost(b *testing.B) {
	stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		b.Skipf("kernel statistics: %v", err)
	}
	defer stats.Close()

	unwatched := listen(b)
	watchedLn := listen(b)
	cfg := DefaultConfig()
	cfg.Interfaces = []string{"lo"}
	cfg.Ports = []uint16{uint16(watchedLn.Addr().(*net.TCPAddr).Port)}
	p, err := Open(cfg)
	if err != nil {
		b.Fatal(err)
	}
	defer p.Close()
	go func() { // keep the buffer drained
		for {
			if _, err := p.Read(); err != nil {
				return
			}
		}
	}()
	egress := p.Programs()["icapwatch_egress"]
	for _, c := range []struct {
		name string
		ln   net.Listener
	}{{"unwatched", unwatched}, {"watched", watchedLn}} {
		b.Run(c.name, func(b *testing.B) {
			conn, err := net.Dial("tcp", c.ln.Addr().String())
			if err != nil {
				b.Fatal(err)
			}
			defer conn.Close()
			before := runStats(b, egress)
			buf := make([]byte, 64)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := conn.Write(buf); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(conn, buf); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			after := runStats(b, egress)
			runs := after.count - before.count
			if runs == 0 {
				b.Fatal("the classifier did not run")
			}
			b.ReportMetric(float64(after.ns-before.ns)/float64(runs), "ns/packet")
			b.ReportMetric(float64(runs)/float64(b.N), "packets/op")
		})
	}
}

type progStats struct{ ns, count uint64 }

func runStats(b *testing.B, prog *ebpf.Program) progStats {
	st, err := prog.Stats()
	if err != nil {
		b.Fatal(err)
	}
	return progStats{uint64(st.Runtime / time.Nanosecond), st.RunCount}
}

// listen starts an echo server on loopback.
func listen(b *testing.B) net.Listener {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.Copy(c, c)
			}()
		}
	}()
	return ln
}

// BenchmarkClassifierRun times the classifier through BPF_PROG_TEST_RUN on
// one frame, next to a program that only returns: the difference is the
// classifier's own cost, without the machine's per-run overhead.
func BenchmarkClassifierRun(b *testing.B) {
	p := loadForRun(b, OutputPerf)
	empty, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.SchedCLS, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, -1), asm.Return()}})
	if err != nil {
		b.Fatal(err)
	}
	defer empty.Close()
	unwatched := segment{cli4, netip.MustParseAddrPort("192.0.2.2:443"), 1, 1, fACK | fPSH, tlsRecord(0x17, 100)}
	watched := segment{cli4, srv4, 1, 1, fACK, nil} // an ACK on a known flow: no event
	for _, c := range []struct {
		name string
		prog *ebpf.Program
		seg  segment
	}{
		{"return_only", empty, unwatched},
		{"unwatched", p.coll.Programs["icapwatch_egress"], unwatched},
		{"watched_no_event", p.coll.Programs["icapwatch_egress"], watched},
	} {
		b.Run(c.name, func(b *testing.B) {
			_, per, err := c.prog.Benchmark(c.seg.frame(), b.N, nil)
			if err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(per.Nanoseconds()), "ns/run")
		})
	}
}
