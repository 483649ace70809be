package bpftest

import (
	"errors"
	"os"
	"testing"
	"time"
)

// Classifier is what RunSteps needs of a loaded probe: bpf.Probe has it.
type Classifier interface {
	RunClassifier(egress bool, frame []byte) (uint32, error)
}

// tcActUnspec is TC_ACT_UNSPEC (include/uapi/linux/pkt_cls.h): carry on
// with the next filter. The classifier only watches, so it returns this
// for every packet.
const tcActUnspec = -1

// RunSteps runs each step's frame through the TC program of its hook.
func RunSteps(t testing.TB, p Classifier, steps []Step) {
	t.Helper()
	for i, s := range steps {
		ret, err := p.RunClassifier(s.Egress, s.Seg.Frame())
		if err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		if int32(ret) != tcActUnspec {
			t.Fatalf("step %d: returned %d, want TC_ACT_UNSPEC (-1)", i, int32(ret))
		}
	}
}

// Reader is what Drain needs of a loaded probe: bpf.Probe is a
// Reader[bpf.Event].
type Reader[E any] interface {
	ReadBatch(buf []E) (int, error)
	SetDeadline(t time.Time)
	// ReorderWindow is how long the reader holds an event to put the
	// per-CPU perf buffers' events back in kernel-time order.
	ReorderWindow() time.Duration
}

// Drain reads what the runs wrote, in batches of three as the agent reads
// in batches: the samples are in the buffer already, so every batch but
// the last is full. It waits out the reader's reorder window first, so
// that every event is due. The perf buffer is one per CPU, and the test's
// thread may move between CPUs from one run to the next: the reader must
// give the events back in the order of their kernel time, which mono
// gives, and Drain fails the test where it does not.
func Drain[E any](t testing.TB, p Reader[E], mono func(E) time.Duration) []E {
	t.Helper()
	time.Sleep(p.ReorderWindow())
	var out []E
	buf := make([]E, 3)
	short := 0
	for {
		p.SetDeadline(time.Now().Add(100 * time.Millisecond))
		n, err := p.ReadBatch(buf)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			for i := 1; i < len(out); i++ {
				if mono(out[i]) < mono(out[i-1]) {
					t.Errorf("event %d of %d, at %v, came after one at %v: not in kernel-time order",
						i, len(out), mono(out[i]), mono(out[i-1]))
				}
			}
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		if short > 0 {
			t.Errorf("a batch of %d events, then one of %d: the first left waiting events behind", short, n)
		}
		if n < len(buf) {
			short = n
		}
		out = append(out, buf[:n]...)
	}
}
