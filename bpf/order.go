package bpf

import (
	"sync/atomic"
	"time"
)

// reorder puts the events of the per-CPU perf buffers back in the order of
// their kernel time.
//
// The perf reader empties one CPU's buffer after another. Without this, a
// client's next request, sent from one CPU, could come out before the
// server's answer that another CPU had written earlier, and the correlator
// would read the answer as belonging to the next request. The ring buffer
// is one buffer in the order the programs wrote to it, and needs none of
// this.
//
// The reader tells reorder when it has read every CPU's buffer up to where
// the kernel had written when it began reading (drained). An event stamped
// before then on any CPU can still be missing only if its program was
// interrupted between reading the clock and writing the event, which takes
// microseconds. So an event is held until every buffer has been read from a
// start at least the window later than its time, then released in time
// order. An event that arrives older than one already released is
// delivered at once all the same and counted late: the order could not be
// kept for it.
//
// Memory is bounded: beyond capacity held events, the oldest is released
// without waiting.
type reorder struct {
	window   time.Duration
	capacity int
	held     []heldEvent // a min-heap by time, then arrival
	arrivals uint64
	ready    []Event // released and not yet taken: ready[head:]
	head     int
	last     time.Duration // the time of the last event released
	released bool          // whether any was
	late     atomic.Uint64 // read by Stats from another goroutine
}

type heldEvent struct {
	ev      Event
	arrival uint64 // keeps events of the same time in the order they came
}

func newReorder(window time.Duration, capacity int) *reorder {
	return &reorder{window: window, capacity: max(capacity, 1)}
}

// add takes an event as the reader found it, from any CPU's buffer.
func (r *reorder) add(ev Event) {
	if r.released && ev.Mono < r.last {
		r.late.Add(1)
		r.ready = append(r.ready, ev)
		return
	}
	r.push(heldEvent{ev: ev, arrival: r.arrivals})
	r.arrivals++
	if len(r.held) > r.capacity {
		r.release(r.pop())
	}
}

// drained says that every CPU's buffer has been read from a start at
// start (CLOCK_MONOTONIC) to where the kernel had written by then, or
// later: the events stamped at least the window before start are released.
func (r *reorder) drained(start time.Duration) {
	until := start - r.window
	for len(r.held) > 0 && r.held[0].ev.Mono <= until {
		r.release(r.pop())
	}
}

func (r *reorder) release(ev Event) {
	r.ready = append(r.ready, ev)
	r.last, r.released = ev.Mono, true
}

// next returns the oldest released event not yet taken.
func (r *reorder) next() (Event, bool) {
	if r.head == len(r.ready) {
		r.ready, r.head = r.ready[:0], 0
		return Event{}, false
	}
	ev := r.ready[r.head]
	r.ready[r.head] = Event{} // its strings go with it
	r.head++
	return ev, true
}

// Late counts the events that came after a later one had been released.
func (r *reorder) Late() uint64 { return r.late.Load() }

func (r *reorder) less(i, j int) bool {
	a, b := &r.held[i], &r.held[j]
	if a.ev.Mono != b.ev.Mono {
		return a.ev.Mono < b.ev.Mono
	}
	return a.arrival < b.arrival
}

// push and pop keep held a binary min-heap. container/heap would box
// each event in an interface: an allocation per event.
func (r *reorder) push(h heldEvent) {
	r.held = append(r.held, h)
	for i := len(r.held) - 1; i > 0; {
		parent := (i - 1) / 2
		if !r.less(i, parent) {
			break
		}
		r.held[i], r.held[parent] = r.held[parent], r.held[i]
		i = parent
	}
}

func (r *reorder) pop() Event {
	top := r.held[0].ev
	n := len(r.held) - 1
	r.held[0] = r.held[n]
	r.held[n] = heldEvent{}
	r.held = r.held[:n]
	for i := 0; ; {
		small, left, right := i, 2*i+1, 2*i+2
		if left < n && r.less(left, small) {
			small = left
		}
		if right < n && r.less(right, small) {
			small = right
		}
		if small == i {
			break
		}
		r.held[i], r.held[small] = r.held[small], r.held[i]
		i = small
	}
	return top
}
