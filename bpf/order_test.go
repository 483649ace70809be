package bpf

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

// at is an event of the given kernel time in milliseconds; Seq tells
// events of the same time apart.
func at(ms int, seq uint32) Event {
	return Event{Mono: time.Duration(ms) * time.Millisecond, Seq: seq}
}

// taken is what reorder has released, as "ms" or "ms/seq".
func taken(r *reorder) []string {
	var out []string
	for ev, ok := r.next(); ok; ev, ok = r.next() {
		s := fmt.Sprint(ev.Mono.Milliseconds())
		if ev.Seq != 0 {
			s += fmt.Sprintf("/%d", ev.Seq)
		}
		out = append(out, s)
	}
	return out
}

func wantTaken(t *testing.T, r *reorder, want ...string) {
	t.Helper()
	if got := taken(r); !slices.Equal(got, want) {
		t.Errorf("released %q, want %q", got, want)
	}
}

func TestReorderMergesCPUsInTimeOrder(t *testing.T) {
	r := newReorder(50*time.Millisecond, 100)
	// One pass: CPU 1's pending events, then CPU 0's.
	for _, ms := range []int{100, 130, 160, 110, 120, 140} {
		r.add(at(ms, 0))
	}
	wantTaken(t, r) // nothing before the pass ends
	r.drained(200 * time.Millisecond)
	wantTaken(t, r, "100", "110", "120", "130", "140")
	// 160 is within the window of the pass's start: it waits for the
	// next pass, which brings one older still from another CPU.
	r.add(at(155, 0))
	r.drained(260 * time.Millisecond)
	wantTaken(t, r, "155", "160")
	if late := r.Late(); late != 0 {
		t.Errorf("%d late", late)
	}
}

func TestReorderKeepsArrivalOrderOfEqualTimes(t *testing.T) {
	r := newReorder(0, 100)
	for seq := uint32(1); seq <= 5; seq++ {
		r.add(at(10, seq))
	}
	r.add(at(5, 9))
	r.drained(10 * time.Millisecond)
	wantTaken(t, r, "5/9", "10/1", "10/2", "10/3", "10/4", "10/5")
}

// An event that comes after a later one was released is delivered at
// once, not dropped, and counted.
func TestReorderCountsLateEvents(t *testing.T) {
	r := newReorder(50*time.Millisecond, 100)
	r.add(at(100, 0))
	r.add(at(120, 0))
	r.drained(200 * time.Millisecond)
	wantTaken(t, r, "100", "120")
	r.add(at(110, 0)) // its program wrote it long after its time
	r.add(at(120, 1)) // the same time as the last released: in order
	r.add(at(130, 0))
	wantTaken(t, r, "110")
	if late := r.Late(); late != 1 {
		t.Errorf("%d late, want 1", late)
	}
	r.drained(300 * time.Millisecond)
	wantTaken(t, r, "120/1", "130")
}

// Beyond its capacity, reorder releases the oldest without waiting.
func TestReorderIsBounded(t *testing.T) {
	r := newReorder(time.Hour, 3)
	for _, ms := range []int{40, 10, 30, 20} {
		r.add(at(ms, 0))
	}
	wantTaken(t, r, "10")
	r.add(at(50, 0))
	r.add(at(5, 0)) // older than what went: late
	wantTaken(t, r, "20", "5")
	if late := r.Late(); late != 1 {
		t.Errorf("%d late, want 1", late)
	}
	if len(r.held) != 3 {
		t.Errorf("%d held, want the capacity, 3", len(r.held))
	}
}

// Many CPUs' events, each CPU's in time order, read a CPU's run of them
// after another's, come out in time order.
func TestReorderHeap(t *testing.T) {
	rnd := rand.New(rand.NewPCG(1, 2))
	const cpus, each = 7, 500
	var queues [cpus][]Event
	for cpu := range queues {
		ms := 0
		for range each {
			ms += rnd.IntN(5)
			queues[cpu] = append(queues[cpu], at(ms, uint32(cpu+1)))
		}
	}
	r := newReorder(0, 1<<20)
	for left := cpus * each; left > 0; {
		q := &queues[rnd.IntN(cpus)]
		run := min(len(*q), 1+rnd.IntN(50))
		for _, ev := range (*q)[:run] {
			r.add(ev)
		}
		*q, left = (*q)[run:], left-run
	}
	r.drained(time.Hour)
	var last time.Duration
	n := 0
	for ev, ok := r.next(); ok; ev, ok = r.next() {
		if ev.Mono < last {
			t.Fatalf("event %d at %v after one at %v", n, ev.Mono, last)
		}
		last = ev.Mono
		n++
	}
	if n != cpus*each {
		t.Errorf("%d events out, %d in", n, cpus*each)
	}
}

func BenchmarkReorder(b *testing.B) {
	r := newReorder(0, 1<<16)
	ev := Event{}
	for i := range b.N {
		ev.Mono = time.Duration(i ^ 7)
		r.add(ev)
		if i%256 == 255 {
			r.drained(time.Duration(i))
			for _, ok := r.next(); ok; _, ok = r.next() {
			}
		}
	}
}
