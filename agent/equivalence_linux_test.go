package agent

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/icapwatch/icapwatch/agent/observe"
	"github.com/icapwatch/icapwatch/agent/wire"
	"github.com/icapwatch/icapwatch/bpf"
	"github.com/icapwatch/icapwatch/bpf/bpftest"
	"github.com/icapwatch/icapwatch/internal/testutil"
)

// TestCaptureParserMatchesKernel: for the same packets, the capture
// parser (agent/wire) and the kernel classifier, through
// kernelObservation, give the same observations, apart from their times.
func TestCaptureParserMatchesKernel(t *testing.T) {
	for _, tc := range bpftest.ClassifierCases() {
		t.Run(tc.Name, func(t *testing.T) {
			p := loadClassifier(t)
			bpftest.RunSteps(t, p, tc.Steps)
			var fromKernel []string
			for _, e := range bpftest.Drain(t, p, func(e bpf.Event) time.Duration { return e.Mono }) {
				fromKernel = append(fromKernel, sameness(kernelObservation(e)))
			}

			tr := wire.NewTracker([]uint16{11344, 1344}, 1024)
			var fromWire []string
			at := time.Unix(0, 0)
			for _, s := range tc.Steps {
				hook := wire.HookIngress
				if s.Egress {
					hook = wire.HookEgress
				}
				at = at.Add(time.Millisecond)
				// RunClassifier runs the programs on loopback: ifindex 1.
				tr.Packet(wire.Packet{Time: at, Ifindex: 1, Hook: hook, IP: s.Seg.Frame()[14:]},
					func(o observe.Observation) { fromWire = append(fromWire, sameness(o)) })
			}
			if fmt.Sprint(fromKernel) != fmt.Sprint(fromWire) {
				t.Errorf("kernel and capture parser differ:\nkernel:\n%s\ncapture:\n%s", lines(fromKernel), lines(fromWire))
			}
		})
	}
}

// loadClassifier loads the kernel side without attaching it: the test
// hands it frames.
func loadClassifier(t *testing.T) *bpf.Probe {
	t.Helper()
	testutil.RequireRoot(t)
	cfg := bpf.DefaultConfig()
	cfg.Output = bpf.OutputPerf
	cfg.Kprobes = bpf.KprobesOff
	p, err := bpf.Load(cfg)
	if err != nil {
		if errors.Is(err, ebpf.ErrNotSupported) {
			testutil.SkipOrFail(t, "%v", err)
		}
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// sameness is what both must agree on: everything but times.
func sameness(o observe.Observation) string {
	return fmt.Sprintf("%s dir=%d phase=%s flags=%#x seq=%d ack=%d len=%d bytes=%d %s->%s ref=%v",
		o.Kind, o.Dir, o.Phase, uint16(o.Flags), o.Seq, o.Ack, o.Len, o.Bytes, o.Flow.Client, o.Flow.Server, !o.Ref.IsZero())
}

func lines(s []string) string {
	var b strings.Builder
	for _, l := range s {
		b.WriteString("  " + l + "\n")
	}
	return b.String()
}
