package correlate

import (
	"net/netip"
	"runtime"
	"testing"
	"time"

	"github.com/icapwatch/icapwatch/agent/observe"
)

// BenchmarkCorrelator feeds answered exchanges over 1000 pooled flows:
// three observations an exchange, as the kernel sends them.
func BenchmarkCorrelator(b *testing.B) {
	c, err := New(DefaultConfig(), nil, nil)
	if err != nil {
		b.Fatal(err)
	}
	flows := make([]observe.Flow, 1000)
	for i := range flows {
		flows[i] = observe.Flow{Client: netip.AddrPortFrom(netip.MustParseAddr("192.0.2.10"), uint16(20000+i)), Server: srvA}
	}
	o := observe.Observation{Source: observe.SourceKernel, Phase: observe.PhaseRequest}
	now := t0
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		o.Flow = flows[i%len(flows)]
		now = now.Add(time.Millisecond)
		switch i % 3 {
		case 0:
			o.Kind, o.Dir = observe.ExchangeStart, observe.ToServer
		case 1:
			o.Kind, o.Dir = observe.Acked, observe.ToClient
		case 2:
			o.Kind, o.Dir = observe.Answer, observe.ToClient
		}
		o.Time = now
		c.Observe(o)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
}

// BenchmarkCorrelatorChurn opens a new connection an iteration with the
// table full at max-flows (100,000 by default), so that each one evicts
// the quietest flow. It also reports the heap a flow of the full table
// holds: memory is bounded by max-flows, however many connections come.
func BenchmarkCorrelatorChurn(b *testing.B) {
	cfg := DefaultConfig()
	c, err := New(cfg, nil, nil)
	if err != nil {
		b.Fatal(err)
	}
	flow := func(i int) observe.Flow { // 2001:db8::/32, room for 2^32 clients
		a := [16]byte{0x20, 0x01, 0x0d, 0xb8, 12: byte(i >> 24), 13: byte(i >> 16), 14: byte(i >> 8), 15: byte(i)}
		return observe.Flow{Client: netip.AddrPortFrom(netip.AddrFrom16(a), 40000), Server: srvA}
	}
	o := observe.Observation{Source: observe.SourceKernel, Phase: observe.PhaseRequest, Time: t0}
	var before, full runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for i := range cfg.MaxFlows { // idle pooled connections: one answered exchange each
		o.Flow, o.Kind, o.Dir = flow(i), observe.ExchangeStart, observe.ToServer
		c.Observe(o)
		o.Kind, o.Dir = observe.Answer, observe.ToClient
		c.Observe(o)
	}
	runtime.GC()
	runtime.ReadMemStats(&full)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		o.Flow, o.Kind, o.Dir = flow(cfg.MaxFlows+i), observe.ExchangeStart, observe.ToServer
		o.Time = o.Time.Add(time.Microsecond)
		c.Observe(o)
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
	if len(c.flows) != cfg.MaxFlows {
		b.Fatalf("%d flows, want %d", len(c.flows), cfg.MaxFlows)
	}
	b.ReportMetric(float64(full.HeapAlloc-before.HeapAlloc)/float64(cfg.MaxFlows), "heap_B/flow")
}
