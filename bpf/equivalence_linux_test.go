package bpf

import (
	"fmt"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/icapwatch/icapwatch/agent/observe"
	"github.com/icapwatch/icapwatch/agent/wire"
)

// TestCaptureParserMatchesKernel: for the same packets, the capture
// parser (agent/wire) and the kernel classifier give the same events,
// apart from their times.
func TestCaptureParserMatchesKernel(t *testing.T) {
	for _, tc := range classifierCases() {
		t.Run(tc.name, func(t *testing.T) {
			p := loadForRun(t, OutputPerf)
			tr := wire.NewTracker([]uint16{11344, 1344}, 1024)
			var fromWire []string
			at := time.Unix(0, 0)
			for i, s := range tc.steps {
				frame := s.seg.frame()
				prog := p.coll.Programs["icapwatch_ingress"]
				if s.hook == HookEgress {
					prog = p.coll.Programs["icapwatch_egress"]
				}
				if _, err := prog.Run(&ebpf.RunOptions{Data: frame}); err != nil {
					t.Fatalf("step %d: %v", i, err)
				}
				// Program.Run runs on loopback: ifindex 1.
				at = at.Add(time.Millisecond)
				tr.Packet(wire.Packet{Time: at, Ifindex: 1, Hook: wire.Hook(s.hook), IP: frame[14:]},
					func(o observe.Observation) { fromWire = append(fromWire, sameness(o)) })
			}
			var fromKernel []string
			for _, e := range drain(t, p) {
				fromKernel = append(fromKernel, sameness(e.Observation()))
			}
			if fmt.Sprint(fromKernel) != fmt.Sprint(fromWire) {
				t.Errorf("kernel and capture parser differ:\nkernel:\n%s\ncapture:\n%s", lines(fromKernel), lines(fromWire))
			}
		})
	}
}

// sameness is what both must agree on: everything but times.
func sameness(o observe.Observation) string {
	return fmt.Sprintf("%s dir=%d phase=%s flags=%#x seq=%d ack=%d len=%d bytes=%d %s->%s ref=%v",
		o.Kind, o.Dir, o.Phase, uint16(o.Flags), o.Seq, o.Ack, o.Len, o.Bytes, o.Flow.Client, o.Flow.Server, !o.Ref.IsZero())
}

func lines(s []string) string {
	out := ""
	for _, l := range s {
		out += "  " + l + "\n"
	}
	return out
}
