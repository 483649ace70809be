package analyze

import (
	"bytes"
	"net/netip"
	"testing"

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
