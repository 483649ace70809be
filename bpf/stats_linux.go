package bpf

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
)

// counters are the fields the kernel's counters fill, indexed by enum
// counter.
func (s *Stats) counters() [icapwatchCounterCNT_MAX]*uint64 {
	return [icapwatchCounterCNT_MAX]*uint64{
		icapwatchCounterCNT_WATCHED:       &s.Watched,
		icapwatchCounterCNT_DUPLICATE:     &s.Duplicates,
		icapwatchCounterCNT_MALFORMED:     &s.Malformed,
		icapwatchCounterCNT_FLOWS_CREATED: &s.FlowsCreated,
		icapwatchCounterCNT_FLOWS_DELETED: &s.FlowsDeleted,
		icapwatchCounterCNT_FLOW_FULL:     &s.FlowsFull,
		icapwatchCounterCNT_EVENTS:        &s.Events,
		icapwatchCounterCNT_EVENTS_LOST:   &s.EventsLost,
		icapwatchCounterCNT_TRACEPOINT:    &s.Tracepoint,
		icapwatchCounterCNT_KPROBE:        &s.Kprobe,
		icapwatchCounterCNT_OTHER_NETNS:   &s.OtherNetns,
	}
}

// Stats reads the kernel counters. With countFlows it also counts the
// flow table's entries, for Flows and FlowEvictions: in batches of
// flowBatch entries a system call (kernels 5.6+), else one entry a call.
// A full default table (65536 flows) takes a few milliseconds in batches:
// cheap enough every few seconds, not for every event.
func (p *Probe) Stats(countFlows bool) (Stats, error) {
	var s Stats
	var perCPU []uint64
	for i, f := range s.counters() {
		if err := p.objs.Counters.Lookup(uint32(i), &perCPU); err != nil {
			return s, fmt.Errorf("read counters: %w", err)
		}
		for _, v := range perCPU {
			*f += v
		}
	}
	s.EventsLost += p.events.Lost()
	s.EventsLate = p.events.Late()
	if !countFlows {
		return s, nil
	}
	n, err := p.countFlows()
	if err != nil {
		return s, fmt.Errorf("count flows: %w", err)
	}
	s.Flows = n
	// Flows created while we counted make this an underestimate, never
	// an overestimate.
	if gone := s.FlowsDeleted + uint64(s.Flows); s.FlowsCreated > gone {
		s.FlowEvictions = s.FlowsCreated - gone
	}
	return s, nil
}

// flowBatch is how many flow entries one batch lookup returns at most.
const flowBatch = 1024

// countFlows counts the flow table, one caller at a time (the buffers are
// reused).
func (p *Probe) countFlows() (int, error) {
	p.statsMu.Lock()
	defer p.statsMu.Unlock()
	m := p.objs.Flows
	if !p.noBatch {
		if p.batchKeys == nil {
			p.batchKeys = make([]icapwatchFlowKey, flowBatch)
			p.batchVals = make([]icapwatchFlow, flowBatch)
		}
		var cursor ebpf.MapBatchCursor
		total := 0
		for {
			n, err := m.BatchLookup(&cursor, p.batchKeys, p.batchVals, nil)
			total += n
			if errors.Is(err, ebpf.ErrKeyNotExist) {
				return total, nil // the end
			}
			if err == nil {
				continue
			}
			if errors.Is(err, ebpf.ErrNotSupported) {
				p.noBatch = true
				p.batchKeys, p.batchVals = nil, nil
				p.log.Debug("no batch lookups on this kernel: counting flows one by one")
			} else {
				// ENOSPC: a hash bucket larger than the batch.
				p.log.Debug("batch lookup failed: counting flows one by one", "error", err)
			}
			break
		}
	}
	var key icapwatchFlowKey
	var val icapwatchFlow
	n := 0
	it := m.Iterate()
	for it.Next(&key, &val) {
		n++
	}
	return n, it.Err()
}
