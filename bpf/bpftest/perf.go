package bpftest

import (
	"os"
	"time"

	"github.com/cilium/ebpf/perf"
)

// PerfPasses gives records as cilium/ebpf's perf reader gives them with a
// deadline in the past: in passes over the per-CPU buffers, each buffer's
// pending records in turn, a pass ending in os.ErrDeadlineExceeded; after
// the last, perf.ErrClosed. Each pass begins at its time in Starts, which
// Now gives: the monotonic clock of a test.
type PerfPasses struct {
	Passes [][]perf.Record
	Starts []time.Duration
	pass   int
	next   int
}

// Now is the start of the pass being read, or the next to begin; 0
// without Starts.
func (p *PerfPasses) Now() time.Duration {
	if len(p.Starts) == 0 {
		return 0
	}
	return p.Starts[min(p.pass, len(p.Starts)-1)]
}

func (p *PerfPasses) ReadInto(rec *perf.Record) error {
	if p.pass == len(p.Passes) {
		return perf.ErrClosed
	}
	if p.next == len(p.Passes[p.pass]) {
		p.pass, p.next = p.pass+1, 0
		return os.ErrDeadlineExceeded
	}
	*rec = p.Passes[p.pass][p.next]
	p.next++
	return nil
}
