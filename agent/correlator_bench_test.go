package agent

import (
	"net/netip"
	"testing"
	"time"

	"github.com/icapwatch/icapwatch/agent/observe"
	"github.com/icapwatch/icapwatch/exporter"
	"github.com/prometheus/client_golang/prometheus"
)

// BenchmarkCorrelator feeds answered exchanges over 1000 pooled flows:
// three observations an exchange, as the kernel sends them.
func BenchmarkCorrelator(b *testing.B) {
	c, err := New(DefaultConfig(), exporter.NewMetrics(prometheus.NewRegistry()), nil)
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
}
