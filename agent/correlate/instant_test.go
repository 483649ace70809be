package correlate

import (
	"math"
	"testing"
	"time"
	"unsafe"

	"github.com/icapwatch/icapwatch/agent/observe"
)

func TestInstant(t *testing.T) {
	if i := instantOf(time.Time{}); i != 0 || !i.IsZero() || !i.Time(time.UTC).IsZero() {
		t.Errorf("the zero time is instant %d, back %v: want zero both ways", i, i.Time(time.UTC))
	}
	now := time.Now() // with a monotonic reading, which the instant drops
	if back := instantOf(now).Time(time.Local); !back.Equal(now) || back.Location() != time.Local {
		t.Errorf("%v came back as %v", now, back)
	}
	if i := instantOf(time.Unix(0, 0)); i.IsZero() {
		t.Error("the Unix epoch reads as no time")
	}
	a, b := instantOf(t0), instantOf(t0.Add(1500*time.Millisecond))
	if d := b.Sub(a); d != 1500*time.Millisecond || !a.Before(b) || !b.After(a) || a.Add(d) != b {
		t.Errorf("b-a = %v, want 1.5s", d)
	}
	far := instantOf(time.Date(3000, 1, 1, 0, 0, 0, 0, time.UTC))
	past := instantOf(time.Date(1000, 1, 1, 0, 0, 0, 0, time.UTC))
	if far != math.MaxInt64 || past != math.MinInt64 {
		t.Errorf("years 3000 and 1000: %d, %d; want held at the bounds", far, past)
	}
	// As time.Time.Sub, differences too large for a Duration saturate.
	if far.Sub(past) != math.MaxInt64 || past.Sub(far) != math.MinInt64 || far.Add(time.Hour) != far || past.Add(-time.Hour) != past {
		t.Errorf("far-past %v, past-far %v, far+1h %d, past-1h %d: want saturated", far.Sub(past), past.Sub(far), far.Add(time.Hour), past.Add(-time.Hour))
	}
}

// TestTimesKeepTheirLocation: events and gaps carry their times in the
// location of the times the correlator was given.
func TestTimesKeepTheirLocation(t *testing.T) {
	zone := time.FixedZone("UTC+2", 2*3600)
	var events []Event
	var gaps []Gap
	cfg := DefaultConfig()
	c, err := New(cfg, nil, func(e Event) { events = append(events, e) })
	if err != nil {
		t.Fatal(err)
	}
	c.OnGap = func(g Gap) { gaps = append(gaps, g) }
	o := observe.Observation{Kind: observe.ExchangeStart, Source: observe.SourceKernel, Time: at(0).In(zone), Flow: flowA, Phase: observe.PhaseRequest}
	c.Observe(o)
	c.Advance(at(0).In(zone))
	if next := c.NextSweep(); next.Location() != zone || !next.Equal(at(1)) {
		t.Errorf("next sweep %v, want %v", next, at(1).In(zone))
	}
	c.Advance(at(10).In(zone))
	o.Kind, o.Dir, o.Time = observe.Answer, observe.ToClient, at(12).In(zone)
	c.Observe(o)
	if len(events) != 2 || len(gaps) != 1 {
		t.Fatalf("%d events, %d gaps: want a stall and its end, and a gap", len(events), len(gaps))
	}
	for _, tm := range []time.Time{events[0].Time, events[1].Time, gaps[0].At} {
		if tm.Location() != zone {
			t.Errorf("%v: want it in %v", tm, zone)
		}
	}
	if !events[0].Time.Equal(at(10)) || !gaps[0].At.Equal(at(12)) || gaps[0].Gap != 12*time.Second {
		t.Errorf("stall at %v, answer at %v after %v; want 10 s, 12 s, 12 s", events[0].Time, gaps[0].At, gaps[0].Gap)
	}
}

// TestFlowSize holds a flow to the allocator's 256-byte size class: the
// correlator keeps up to --max-flows of them.
func TestFlowSize(t *testing.T) {
	if n := unsafe.Sizeof(flow{}); n > 256 {
		t.Errorf("a flow is %d bytes, over the 256-byte size class", n)
	}
}

// TestAdvanceToTheEndOfTime: a capture's packet dated past 2262 is held
// at the last instant, where the next sweep is the same instant; Advance
// must still return (it looped for ever: a hang of analyze on a capture
// the fuzzer wrote), and the open exchange stalls once.
func TestAdvanceToTheEndOfTime(t *testing.T) {
	h := newHarness(t, nil)
	h.obs(observe.ExchangeStart, flowA, 0)
	h.c.Advance(at(1))
	far := time.Date(3000, 1, 1, 0, 0, 0, 0, time.UTC)
	h.c.Advance(far)
	h.c.Advance(far)
	h.wantKinds("stall:unacked")
}
