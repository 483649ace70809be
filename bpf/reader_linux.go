package bpf

import (
	"errors"
	"fmt"
	"os"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf/perf"
	"github.com/cilium/ebpf/ringbuf"
	"golang.org/x/sys/unix"
)

func (p *Probe) openReader(cfg Config) error {
	var err error
	if p.output == OutputRing {
		p.ring, err = ringbuf.NewReader(p.objs.Events)
	} else {
		p.perf, err = perf.NewReaderWithOptions(p.objs.Events, cfg.PerCPUBuffer,
			perf.ReaderOptions{Watermark: cfg.PerCPUBuffer / 2})
	}
	if err != nil {
		return fmt.Errorf("open %s event buffer: %w", p.output, err)
	}
	// A deadline in the past: reads never block in the kernel (see Read).
	past := time.Unix(1, 0)
	if p.ring != nil {
		p.ring.SetDeadline(past)
		p.events = newEventReader(cfg)
		p.events.ring = p.ring
	} else {
		p.perf.SetDeadline(past)
		// The perf event array has one entry a possible CPU.
		p.events = NewPerfEventReader(p.perf, int(p.objs.Events.MaxEntries()), cfg)
	}
	return nil
}

// PerfRecords is what an EventReader takes from cilium/ebpf's perf reader
// with a deadline in the past: ReadInto fills in the next record of any
// CPU's buffer, one buffer after another, and returns an error that wraps
// os.ErrDeadlineExceeded once it has read every buffer up to where the
// kernel had written when it began, or later.
type PerfRecords interface {
	ReadInto(*perf.Record) error
}

// EventReader reads the events of the kernel's buffer; a probe's Read,
// ReadBatch and SetDeadline are its. NewPerfEventReader makes one over
// samples given as the perf reader gives them, for the tests of what reads
// them.
type EventReader struct {
	perf    PerfRecords
	ring    *ringbuf.Reader
	perfRec perf.Record // reused by each read
	ringRec ringbuf.Record
	order   *reorder // the perf buffer's events, merged
	// inRound: a pass over the perf buffers has begun, at roundStart;
	// drained: the last one ended and what it released has been taken
	// (the next read says none is waiting).
	inRound, drained bool
	roundStart       time.Duration

	poll time.Duration // how often Read looks for events without a wakeup
	lost atomic.Uint64 // samples the perf reader reported lost
	// deadline is the caller's, set by SetDeadline; Read polls until then.
	deadline atomic.Pointer[time.Time]
	wallOff  time.Duration        // wall clock minus monotonic clock
	mono     func() time.Duration // CLOCK_MONOTONIC now
}

// perfSampleSize is the least room a sample takes in a perf buffer: a
// struct perf_event_header, the u32 size of the raw data and the event,
// rounded up to 8 bytes (kernel/events/core.c, perf_prepare_sample).
const perfSampleSize = (8 + 4 + EventSize + 7) &^ 7

// maxHeld bounds the events held for the merge: about 13 MB of them.
const maxHeld = 1 << 16

func newEventReader(cfg Config) *EventReader {
	return &EventReader{poll: cfg.Poll, wallOff: wallOffset(), mono: monotonic}
}

// NewPerfEventReader reads the samples of cpus per-CPU buffers from src,
// with cfg's Poll and PerCPUBuffer, as a probe reads its perf buffer: in
// the order of the events' kernel time (see Read).
//
// The merge holds each event for one poll interval, the window, past the
// point where every buffer had been read: the reader passes every buffer
// at least once a poll, and a program takes microseconds from reading the
// clock to writing its event, so one poll leaves the order to chance only
// for a program stopped that long in between, at the cost of events
// reaching the caller at most one poll later. It holds at most what two
// full passes over every buffer bring (a pass reads at most a buffer's
// worth from each CPU at a time), up to maxHeld events.
func NewPerfEventReader(src PerfRecords, cpus int, cfg Config) *EventReader {
	r := newEventReader(cfg)
	r.perf = src
	r.order = newReorder(cfg.Poll, min(2*max(cpus, 1)*cfg.PerCPUBuffer/perfSampleSize, maxHeld))
	return r
}

// Read blocks until the next event. The kernel does not wake the reader
// for each event: when none is waiting, Read sleeps for Config.Poll and
// looks again, so the buffers must hold what comes in one poll. After
// Close it returns an error that wraps os.ErrClosed; after a deadline set
// by SetDeadline, one that wraps os.ErrDeadlineExceeded. One goroutine
// reads.
//
// Events come in the order of their kernel time. The perf buffer is one
// buffer a CPU, read one after another: there each event is held until
// every buffer has been read past it by a poll interval (ReorderWindow),
// and an event that still comes after a later one is counted in
// Stats.EventsLate. The ring buffer keeps the order in which the programs
// wrote.
//
// The sleep is the runtime's, not a blocking epoll_wait: a thread blocked
// in a system call for long makes the Go scheduler's monitor wake every
// 20 µs for a while after taking its processor back, which on a virtual
// machine cost more than reading the events.
func (r *EventReader) Read() (Event, error) {
	for {
		ev, err := r.readOne()
		if err == nil {
			return ev, nil
		}
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			return Event{}, readError(err)
		}
		wait := r.poll
		if user := r.deadline.Load(); user != nil {
			left := time.Until(*user)
			if left <= 0 {
				return Event{}, fmt.Errorf("read events: %w", err)
			}
			wait = min(wait, left)
		}
		time.Sleep(wait)
	}
}

// ReadBatch is Read, then the events already waiting behind the first, up
// to len(buf) in all: a burst costs its reader one hand-over. It returns how
// many events it put in buf.
func (r *EventReader) ReadBatch(buf []Event) (int, error) {
	if len(buf) == 0 {
		return 0, nil
	}
	ev, err := r.Read()
	if err != nil {
		return 0, err
	}
	buf[0] = ev
	n := 1
	for ; n < len(buf); n++ {
		if buf[n], err = r.readOne(); err != nil {
			break // none waiting, or closed: the next Read says
		}
	}
	return n, nil
}

// SetDeadline makes a blocked Read return os.ErrDeadlineExceeded at t; the
// zero time removes the deadline.
func (r *EventReader) SetDeadline(t time.Time) {
	if t.IsZero() {
		r.deadline.Store(nil)
		return
	}
	r.deadline.Store(&t)
}

// ReorderWindow is how long past the reading of every buffer an event is
// held to be merged in time order: a poll interval on the perf buffer, 0
// on the ring buffer.
func (r *EventReader) ReorderWindow() time.Duration {
	if r.order == nil {
		return 0
	}
	return r.order.window
}

// Lost counts the samples the perf reader reported lost and those that
// did not decode.
func (r *EventReader) Lost() uint64 { return r.lost.Load() }

// Late counts the events that came after a later event had been returned.
func (r *EventReader) Late() uint64 {
	if r.order == nil {
		return 0
	}
	return r.order.Late()
}

// readOne reads the next event if one is waiting, and returns an error
// that wraps os.ErrDeadlineExceeded if none is. The records are reused:
// events are decoded out of them.
func (r *EventReader) readOne() (Event, error) {
	if r.order != nil {
		return r.readMerged()
	}
	for {
		if err := r.ring.ReadInto(&r.ringRec); err != nil {
			return Event{}, err
		}
		if ev, ok := r.decode(r.ringRec.RawSample); ok {
			return ev, nil
		}
	}
}

// readMerged is readOne on the perf buffer. A pass over the buffers
// begins with the first read after the last pass ended; when the perf
// reader says it has read them all, what the pass made due is released,
// and once that has been taken, readMerged says none is waiting, so that
// Read polls.
func (r *EventReader) readMerged() (Event, error) {
	for {
		if ev, ok := r.order.next(); ok {
			return ev, nil
		}
		if r.drained {
			r.drained = false
			return Event{}, os.ErrDeadlineExceeded
		}
		if !r.inRound {
			// Before the reader looks at the buffers: it reads each to
			// where the kernel had written then, or later.
			r.roundStart, r.inRound = r.mono(), true
		}
		err := r.perf.ReadInto(&r.perfRec)
		switch {
		case errors.Is(err, os.ErrDeadlineExceeded):
			r.inRound, r.drained = false, true
			r.order.drained(r.roundStart)
			continue
		case err != nil:
			return Event{}, err
		case r.perfRec.LostSamples > 0:
			r.lost.Add(r.perfRec.LostSamples)
			continue
		}
		if ev, ok := r.decode(r.perfRec.RawSample); ok {
			r.order.add(ev)
		}
	}
}

// decode decodes a sample and dates it on the wall clock; one that does
// not decode is counted lost.
func (r *EventReader) decode(raw []byte) (Event, bool) {
	ev, err := DecodeEvent(raw)
	if err != nil {
		r.lost.Add(1)
		return Event{}, false
	}
	ev.Time = time.Unix(0, 0).Add(ev.Mono + r.wallOff)
	return ev, true
}

func readError(err error) error {
	if errors.Is(err, perf.ErrClosed) || errors.Is(err, ringbuf.ErrClosed) {
		return fmt.Errorf("read events: %w", os.ErrClosed)
	}
	return fmt.Errorf("read events: %w", err)
}

// wallOffset is the wall clock minus CLOCK_MONOTONIC, the clock of
// bpf_ktime_get_ns.
func wallOffset() time.Duration {
	var ts unix.Timespec
	before := time.Now()
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return 0
	}
	return time.Duration(before.UnixNano() - ts.Nano())
}

// monotonic is CLOCK_MONOTONIC now, the clock of bpf_ktime_get_ns.
func monotonic() time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return 0
	}
	return time.Duration(ts.Nano())
}
