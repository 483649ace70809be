package analyze

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"
	"github.com/icapwatch/icapwatch/agent/correlate"
	"github.com/icapwatch/icapwatch/internal/synth"
)

// BenchmarkAnalyze reads a synthetic capture of 200,000 packets over 500
// pooled connections; make bench reports its packets per second.
func BenchmarkAnalyze(b *testing.B) {
	const packets = 200000
	var buf bytes.Buffer
	if err := synth.Write(&buf, packets, 500, netip.MustParseAddrPort("192.0.2.1:11344")); err != nil {
		b.Fatal(err)
	}
	data := buf.Bytes()
	cfg := Config{Ports: []uint16{11344}, Correlator: correlate.DefaultConfig()}
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		a, err := Run(bytes.NewReader(data), cfg)
		if n := len(a.Gaps[GapKey{"192.0.2.1:11344", "request"}]); err != nil || n != packets/4 {
			b.Fatalf("%v: %d request gaps", err, n)
		}
	}
	b.ReportMetric(float64(packets*b.N)/b.Elapsed().Seconds(), "packets/s")
}

// BenchmarkAnalyzeOpenConns reads 1,000,000 packets over 500,000
// connections that never close, five times max-flows: each new one
// evicts the least recently seen. It reports packets per second and the
// most heap in use while reading, beyond the capture itself: bounded by
// max-flows, not by the connections of the capture.
func BenchmarkAnalyzeOpenConns(b *testing.B) {
	const conns = 500000
	data := openConns(b, conns)
	cfg := Config{Ports: []uint16{11344}, Correlator: correlate.DefaultConfig(), Every: 100000}
	var base, m runtime.MemStats
	var peak uint64
	cfg.Progress = func(uint64, uint64) {
		b.StopTimer()
		runtime.GC()
		runtime.ReadMemStats(&m)
		peak = max(peak, m.HeapAlloc-min(m.HeapAlloc, base.HeapAlloc))
		b.StartTimer()
	}
	runtime.GC()
	runtime.ReadMemStats(&base)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		a, err := Run(bytes.NewReader(data), cfg)
		if err != nil || a.Err != nil || a.Wire.Packets != 2*conns {
			b.Fatalf("%v, %v: %d packets", err, a.Err, a.Wire.Packets)
		}
		if limit := cfg.Correlator.MaxFlows; a.Wire.Flows > limit || a.Wire.Evictions != uint64(conns-limit) {
			b.Fatalf("%d flows (limit %d), %d evicted", a.Wire.Flows, limit, a.Wire.Evictions)
		}
	}
	b.ReportMetric(float64(2*conns*b.N)/b.Elapsed().Seconds(), "packets/s")
	b.ReportMetric(float64(peak)/(1<<20), "heap_MiB")
}

// openConns writes a capture of conns connections, each one request and
// its answer 100 µs apart, cut as tcpdump -s 96 would: headers and the
// TLS record header.
func openConns(tb testing.TB, conns int) []byte {
	tb.Helper()
	var buf bytes.Buffer
	w := pcapgo.NewWriter(&buf)
	if err := w.WriteFileHeader(96, layers.LinkTypeEthernet); err != nil {
		tb.Fatal(err)
	}
	server := netip.MustParseAddrPort("192.0.2.1:11344")
	at := time.Date(2026, 11, 23, 7, 0, 0, 0, time.UTC)
	frame := make([]byte, 14+40+5)
	for i := range conns {
		// 198.51.100.0/24 and 192.0.2.0/24 give 512 addresses, 1000 ports each.
		client := netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 51, 100, byte(i / 1000)}), uint16(30000+i%1000))
		if i/1000 > 255 {
			client = netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 0, 2, byte(i/1000 - 256)}), uint16(30000+i%1000))
		}
		for _, p := range []struct {
			src, dst netip.AddrPort
			payload  int
		}{{client, server, 600}, {server, client, 300}} {
			b := frame[14:]
			binary.BigEndian.PutUint16(frame[12:], 0x0800)
			b[0], b[8], b[9] = 0x45, 64, 6
			binary.BigEndian.PutUint16(b[2:], uint16(40+p.payload))
			s4, d4 := p.src.Addr().As4(), p.dst.Addr().As4()
			copy(b[12:], s4[:])
			copy(b[16:], d4[:])
			binary.BigEndian.PutUint16(b[20:], p.src.Port())
			binary.BigEndian.PutUint16(b[22:], p.dst.Port())
			binary.BigEndian.PutUint32(b[24:], 1)
			binary.BigEndian.PutUint32(b[28:], 1)
			b[32], b[33] = 5<<4, 0x18
			copy(b[40:], []byte{0x17, 3, 3, byte((p.payload - 5) >> 8), byte(p.payload - 5)})
			at = at.Add(100 * time.Microsecond)
			ci := gopacket.CaptureInfo{Timestamp: at, CaptureLength: len(frame), Length: 14 + 40 + p.payload}
			if err := w.WritePacket(ci, frame); err != nil {
				tb.Fatal(err)
			}
		}
	}
	return buf.Bytes()
}
