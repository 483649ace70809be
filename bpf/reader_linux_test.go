package bpf

import (
	"errors"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/cilium/ebpf/perf"
	"github.com/icapwatch/icapwatch/bpf/bpftest"
)

func sampleAt(cpu, ms int) perf.Record {
	return perf.Record{CPU: cpu, RawSample: EncodeEvent(at(ms, 0))}
}

// testPerfReader reads the passes, each starting at its time in ms.
func testPerfReader(passes [][]perf.Record, starts ...int) *EventReader {
	src := &bpftest.PerfPasses{Passes: passes}
	for _, ms := range starts {
		src.Starts = append(src.Starts, time.Duration(ms)*time.Millisecond)
	}
	cfg := DefaultConfig()
	cfg.Poll = time.Millisecond
	r := NewPerfEventReader(src, 2, cfg)
	r.mono = src.Now
	return r
}

// readAll reads until the reader is closed, in batches of 4, and returns
// the events' times in ms, batch by batch.
func readAll(t *testing.T, r *EventReader) [][]int {
	t.Helper()
	var out [][]int
	buf := make([]Event, 4)
	for {
		n, err := r.ReadBatch(buf)
		if errors.Is(err, os.ErrClosed) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		var batch []int
		for _, ev := range buf[:n] {
			batch = append(batch, int(ev.Mono.Milliseconds()))
		}
		out = append(out, batch)
	}
}

// The perf path holds an event until a pass that began a poll interval
// (the window, 1 ms here) after it: the events of a pass that began
// within the window of their time wait for the next pass.
func TestPerfReaderHoldsEventsForTheWindow(t *testing.T) {
	r := testPerfReader([][]perf.Record{
		{sampleAt(1, 30), sampleAt(1, 100), sampleAt(0, 10), sampleAt(0, 20), sampleAt(0, 40), sampleAt(0, 101)},
		{sampleAt(0, 99)}, // stamped before 100, written after the first pass read CPU 0
		{},
	}, 100, 102, 103)
	got := readAll(t, r)
	want := [][]int{{10, 20, 30, 40}, {99, 100, 101}}
	if !slices.EqualFunc(got, want, slices.Equal) {
		t.Errorf("batches %v, want %v", got, want)
	}
	if r.Late() != 0 {
		t.Errorf("%d late", r.Late())
	}
	if w := r.ReorderWindow(); w != time.Millisecond {
		t.Errorf("window %v, want the poll interval", w)
	}
}

// An event written after its window had passed comes all the same, and
// is counted late; lost and undecodable samples are counted lost.
func TestPerfReaderCountsLateAndLost(t *testing.T) {
	r := testPerfReader([][]perf.Record{
		{sampleAt(0, 10), sampleAt(0, 20)},
		{sampleAt(1, 15), {CPU: 1, LostSamples: 3}, {CPU: 0, RawSample: []byte{1, 2, 3}}, sampleAt(0, 30)},
	}, 50, 60)
	got := readAll(t, r)
	want := [][]int{{10, 20}, {15, 30}}
	if !slices.EqualFunc(got, want, slices.Equal) {
		t.Errorf("batches %v, want %v", got, want)
	}
	if r.Late() != 1 || r.Lost() != 4 {
		t.Errorf("%d late and %d lost, want 1 and 4", r.Late(), r.Lost())
	}
}

// A read with a deadline gives up at the deadline while the events it
// holds are not due, and does not lose them.
func TestPerfReaderDeadline(t *testing.T) {
	ms := time.Millisecond
	// At most three passes before the deadline: at 0, 10 and 15 ms.
	src := &bpftest.PerfPasses{Passes: [][]perf.Record{{sampleAt(0, 10)}, {}, {}, {}, {}},
		Starts: []time.Duration{10 * ms, 10 * ms, 10 * ms, 20 * ms, 20 * ms}}
	cfg := DefaultConfig()
	cfg.Poll = 10 * ms
	r := NewPerfEventReader(src, 1, cfg)
	r.mono = src.Now
	r.SetDeadline(time.Now().Add(15 * ms))
	if _, err := r.Read(); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read before the window passed: %v, want the deadline", err)
	}
	r.SetDeadline(time.Time{})
	ev, err := r.Read()
	if err != nil || ev.Mono != 10*ms {
		t.Errorf("then %v, %v; want the event of 10 ms", ev.Mono, err)
	}
}
