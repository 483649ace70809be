package bpf

import (
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/icapwatch/icapwatch/bpf/bpftest"
	"golang.org/x/sys/unix"
)

// BenchmarkKernelCost measures the classifier's run time per packet, from
// the kernel's per-program statistics, on loopback traffic of three kinds:
//
//   - unwatched: 64-byte echoes on a port that is not watched;
//   - watched_bulk: 256 KiB requests answered with one byte, on a watched
//     port: few events for many packets;
//   - watched_echo: 64-byte echoes on a watched port, where every packet is
//     a request or an answer and gives an event.
//
// A program that only returns is attached beside the classifier (TCX) and
// sees the same packets: its statistics are the floor, what the accounting
// of a run costs, and "ns/packet_over_floor" is the classifier's own cost.
// The two watched kinds, with their events a packet from the kernel's
// counters, split that cost into a watched packet's and an event's
// ("ns/watched_packet" and "ns/event", reported with watched_echo).
// make bench-bpf runs it; the targets are at most 100 ns per unwatched and
// 300 ns per watched packet.
func BenchmarkKernelCost(b *testing.B) {
	stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		b.Skipf("kernel statistics: %v", err)
	}
	defer stats.Close()

	const bulk = 256 << 10
	echo := func(c net.Conn) { io.Copy(c, c) }
	sink := func(c net.Conn) { // answers each request with one byte
		buf := make([]byte, bulk)
		for {
			if _, err := io.ReadFull(c, buf); err != nil {
				return
			}
			if _, err := c.Write(buf[:1]); err != nil {
				return
			}
		}
	}
	unwatched, watchedEcho, watchedBulk := listen(b, echo), listen(b, echo), listen(b, sink)
	cfg := DefaultConfig()
	cfg.Interfaces = []string{"lo"}
	cfg.Ports = []uint16{port(watchedEcho), port(watchedBulk)}
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
	egress := p.objs.IcapwatchEgress
	floor := returnOnly(b)
	lo, err := net.InterfaceByName("lo")
	if err != nil {
		b.Fatal(err)
	}
	if l, err := link.AttachTCX(link.TCXOptions{Interface: lo.Index, Program: floor, Attach: ebpf.AttachTCXEgress}); err == nil {
		defer l.Close()
	} else {
		b.Logf("no floor (TCX: %v): the statistics include the accounting of each run", err)
		floor = nil
	}

	type result struct{ perPacket, eventsPerPacket float64 }
	var bulkResult result
	for _, c := range []struct {
		name      string
		ln        net.Listener
		req, resp int
	}{
		{"unwatched", unwatched, 64, 64},
		{"watched_bulk", watchedBulk, bulk, 1},
		{"watched_echo", watchedEcho, 64, 64},
	} {
		b.Run(c.name, func(b *testing.B) {
			conn, err := net.Dial("tcp", c.ln.Addr().String())
			if err != nil {
				b.Fatal(err)
			}
			defer conn.Close()
			req, resp := make([]byte, c.req), make([]byte, c.resp)
			before, floorBefore, eventsBefore := runStats(b, egress), runStats(b, floor), events(b, p)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := conn.Write(req); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(conn, resp); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			after, floorAfter, eventsAfter := runStats(b, egress), runStats(b, floor), events(b, p)
			runs := after.count - before.count
			if runs == 0 {
				b.Fatal("the classifier did not run")
			}
			perPacket := float64(after.ns-before.ns) / float64(runs)
			b.ReportMetric(perPacket, "ns/packet")
			b.ReportMetric(float64(runs)/float64(b.N), "packets/op")
			if floor != nil && floorAfter.count > floorBefore.count {
				floorPer := float64(floorAfter.ns-floorBefore.ns) / float64(floorAfter.count-floorBefore.count)
				b.ReportMetric(floorPer, "floor_ns/packet")
				perPacket -= floorPer
				b.ReportMetric(perPacket, "ns/packet_over_floor")
			}
			r := result{perPacket, float64(eventsAfter-eventsBefore) / float64(runs)}
			b.ReportMetric(r.eventsPerPacket, "events/packet")
			switch c.name {
			case "watched_bulk":
				bulkResult = r
			case "watched_echo":
				// cost = watched packet + events a packet x event, from two points.
				if de := r.eventsPerPacket - bulkResult.eventsPerPacket; bulkResult.perPacket > 0 && de > 0.1 {
					perEvent := (r.perPacket - bulkResult.perPacket) / de
					b.ReportMetric(perEvent, "ns/event")
					b.ReportMetric(bulkResult.perPacket-perEvent*bulkResult.eventsPerPacket, "ns/watched_packet")
				}
			}
		})
	}
}

func port(ln net.Listener) uint16 { return uint16(ln.Addr().(*net.TCPAddr).Port) }

// events is how many events the kernel side has written.
func events(b *testing.B, p *Probe) uint64 {
	st, err := p.Stats(false)
	if err != nil {
		b.Fatal(err)
	}
	return st.Events
}

type progStats struct{ ns, count uint64 }

func runStats(b *testing.B, prog *ebpf.Program) progStats {
	if prog == nil {
		return progStats{}
	}
	st, err := prog.Stats()
	if err != nil {
		b.Fatal(err)
	}
	return progStats{uint64(st.Runtime / time.Nanosecond), st.RunCount}
}

// listen serves each connection on loopback with serve.
func listen(b *testing.B, serve func(net.Conn)) net.Listener {
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
				serve(c)
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
	empty := returnOnly(b)
	unwatched := bpftest.Segment{Src: bpftest.Cli4, Dst: netip.MustParseAddrPort("192.0.2.2:443"), Seq: 1, Ack: 1,
		Flags: bpftest.ACK | bpftest.PSH, Payload: bpftest.TLSRecord(0x17, 100)}
	// An ACK on a known flow: no event.
	watched := bpftest.Segment{Src: bpftest.Cli4, Dst: bpftest.Srv4, Seq: 1, Ack: 1, Flags: bpftest.ACK}
	for _, c := range []struct {
		name string
		prog *ebpf.Program
		seg  bpftest.Segment
	}{
		{"return_only", empty, unwatched},
		{"unwatched", p.objs.IcapwatchEgress, unwatched},
		{"watched_no_event", p.objs.IcapwatchEgress, watched},
	} {
		b.Run(c.name, func(b *testing.B) {
			_, per, err := c.prog.Benchmark(c.seg.Frame(), b.N, nil)
			if err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(per.Nanoseconds()), "ns/run")
		})
	}
}

// returnOnly is a TC program that returns TC_ACT_UNSPEC (TCX_NEXT) at once.
func returnOnly(b *testing.B) *ebpf.Program {
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.SchedCLS, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, -1), asm.Return()}})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { prog.Close() })
	return prog
}

// BenchmarkStatsCountFlows is Stats(true) on a full default flow table
// (65536 entries), in batches and one entry a call: what the agent pays
// each time it reads the eviction estimate.
func BenchmarkStatsCountFlows(b *testing.B) {
	p := loadForRun(b, OutputPerf)
	flows := p.objs.Flows
	n := int(flows.MaxEntries())
	keys := make([]icapwatchFlowKey, n)
	vals := make([]icapwatchFlow, n)
	for i := range keys {
		keys[i].Family = unix.AF_INET
		keys[i].Client = [16]uint8{192, 0, 2, 1}
		keys[i].Server = [16]uint8{192, 0, 2, 2}
		keys[i].ClientPort = uint16(i)
		keys[i].ServerPort = uint16(i >> 16)
	}
	if _, err := flows.BatchUpdate(keys, vals, nil); err != nil {
		b.Fatal(err)
	}
	// The LRU keeps some free entries on each CPU's list: it evicts a few
	// before it is full.
	full, err := p.Stats(true)
	if err != nil {
		b.Fatal(err)
	}
	if full.Flows < n*99/100 {
		b.Fatalf("%d flows in the table, want about %d", full.Flows, n)
	}
	for _, mode := range []struct {
		name    string
		noBatch bool
	}{{"batch", false}, {"iterate", true}} {
		b.Run(mode.name, func(b *testing.B) {
			p.noBatch = mode.noBatch
			for i := 0; i < b.N; i++ {
				s, err := p.Stats(true)
				if err != nil {
					b.Fatal(err)
				}
				if s.Flows != full.Flows {
					b.Fatalf("counted %d flows, want %d", s.Flows, full.Flows)
				}
			}
		})
	}
}
