package bpf

import (
	"errors"
	"fmt"
	"os"
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
	} else {
		p.perf.SetDeadline(past)
	}
	return nil
}

// Read blocks until the next event. The kernel does not wake the reader
// for each event: when none is waiting, Read sleeps for Config.Poll and
// looks again, so the buffers must hold what comes in one poll. After
// Close it returns an error that wraps os.ErrClosed; after a deadline set
// by SetDeadline, one that wraps os.ErrDeadlineExceeded. One goroutine
// reads.
//
// The sleep is the runtime's, not a blocking epoll_wait: a thread blocked
// in a system call for long makes the Go scheduler's monitor wake every
// 20 µs for a while after taking its processor back, which on a virtual
// machine cost more than reading the events.
func (p *Probe) Read() (Event, error) {
	for {
		ev, err := p.readOne()
		if err == nil {
			return ev, nil
		}
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			return Event{}, readError(err)
		}
		wait := p.poll
		if user := p.deadline.Load(); user != nil {
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
func (p *Probe) ReadBatch(buf []Event) (int, error) {
	if len(buf) == 0 {
		return 0, nil
	}
	ev, err := p.Read()
	if err != nil {
		return 0, err
	}
	buf[0] = ev
	n := 1
	for ; n < len(buf); n++ {
		if buf[n], err = p.readOne(); err != nil {
			break // none waiting, or closed: the next Read says
		}
	}
	return n, nil
}

// readOne reads the next event if one is waiting, and returns an error
// that wraps os.ErrDeadlineExceeded if none is. The records are reused:
// events are decoded out of them.
func (p *Probe) readOne() (Event, error) {
	for {
		var raw []byte
		var err error
		if p.ring != nil {
			err = p.ring.ReadInto(&p.ringRec)
			raw = p.ringRec.RawSample
		} else {
			err = p.perf.ReadInto(&p.perfRec)
			if err == nil && p.perfRec.LostSamples > 0 {
				p.lost.Add(p.perfRec.LostSamples)
				continue
			}
			raw = p.perfRec.RawSample
		}
		if err != nil {
			return Event{}, err
		}
		ev, err := DecodeEvent(raw)
		if err != nil {
			p.lost.Add(1)
			continue
		}
		ev.Time = time.Unix(0, 0).Add(ev.Mono + p.wallOff)
		return ev, nil
	}
}

// SetDeadline makes a blocked Read return os.ErrDeadlineExceeded at t; the
// zero time removes the deadline.
func (p *Probe) SetDeadline(t time.Time) {
	if t.IsZero() {
		p.deadline.Store(nil)
		return
	}
	p.deadline.Store(&t)
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
