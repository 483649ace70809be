// Package analyze is `icapwatch analyze`: the agent's diagnosis from a
// capture file. Packets go through agent/wire (the kernel classifier's
// rules in Go) into the same correlator as the live agent, driven by the
// capture's clock through the same Advance, so a capture and a live run
// give the same events. It reads files only; it needs no privileges and
// imports correlate, wire and observe, never the daemon.
package analyze

import (
	"errors"
	"io"
	"net/netip"
	"time"

	"github.com/icapwatch/icapwatch/agent/correlate"
	"github.com/icapwatch/icapwatch/agent/wire"
)

// Config is `icapwatch analyze`'s setting.
type Config struct {
	Ports      []uint16
	Correlator correlate.Config
	// Server keeps only this server's events and gaps (zero: all).
	Server netip.AddrPort
	// Progress, when set, is called about every Every packets.
	Progress func(packets uint64, bytes uint64)
	Every    uint64
}

// GapKey groups gaps as the gap histogram does.
type GapKey struct{ Server, Phase string }

// ConnKey is one connection of the report: its server and client address.
type ConnKey struct {
	Server string // ip:port, as events name it
	Client netip.AddrPort
}

// Exchange is one answered exchange on a connection's timeline, or, when
// Count is more than one, a run of ordinary exchanges folded into one entry.
type Exchange struct {
	Start  time.Time     // the request's first byte (a run's first request)
	Span   time.Duration // a run: from its first request to its last
	Phase  string        // a run: "" when it mixes phases
	Gap    time.Duration // a run: its smallest gap
	MaxGap time.Duration // a run: its largest gap
	Count  int
}

// The timelines' bounds, so that a capture of millions of exchanges gives
// a report of pages, not of millions of lines, in bounded memory.
const (
	// timelineHead: a connection's first answered exchanges are listed.
	timelineHead = 8
	// timelineSlow: an exchange whose gap is at least this part of the
	// stall threshold is listed (a near-stall is worth a line).
	timelineSlow = 10
	// timelineCap: entries a timeline holds; past it everything folds.
	timelineCap = 200
	// timelineConns: connections with a timeline; the exchanges of later
	// ones are in the gaps and the summary only.
	timelineConns = 10000
)

// Timeline is what a connection's answered exchanges leave for the
// report. The first ones, slow ones, and the exchanges just before and
// just after an event on the connection are listed one by one; ordinary
// exchanges between them fold into runs.
type Timeline struct {
	Exchanges []Exchange // in the order of their requests
	Answered  int        // every answered exchange, listed or folded

	tail     Exchange // the latest ordinary exchange: listed if an event follows
	haveTail bool
	listNext bool // an event came: the next exchange is listed
	runOpen  bool // the last entry is a run that may grow
}

func (t *Timeline) add(x Exchange, slow bool) {
	t.Answered++
	if t.haveTail {
		t.fold(t.tail)
		t.haveTail = false
	}
	switch {
	case len(t.Exchanges) >= timelineCap:
		t.fold(x)
	case t.Answered <= timelineHead || slow || t.listNext:
		t.list(x)
		t.listNext = false
	default:
		t.tail, t.haveTail = x, true
	}
}

// event lists the exchange before it and the one after it.
func (t *Timeline) event() {
	if len(t.Exchanges) >= timelineCap {
		return
	}
	if t.haveTail {
		t.list(t.tail)
		t.haveTail = false
	}
	t.listNext = true
}

// end lists the connection's last exchange.
func (t *Timeline) end() {
	if t.haveTail {
		t.list(t.tail)
		t.haveTail = false
	}
}

func (t *Timeline) list(x Exchange) {
	t.Exchanges = append(t.Exchanges, x)
	t.runOpen = false
}

func (t *Timeline) fold(x Exchange) {
	if !t.runOpen {
		t.Exchanges = append(t.Exchanges, x)
		t.runOpen = true
		return
	}
	r := &t.Exchanges[len(t.Exchanges)-1]
	r.Span = x.Start.Sub(r.Start)
	r.Gap, r.MaxGap = min(r.Gap, x.Gap), max(r.MaxGap, x.Gap)
	if r.Phase != x.Phase {
		r.Phase = ""
	}
	r.Count++
}

// Analysis is what a capture gave.
type Analysis struct {
	Format      string
	Capture     wire.CaptureStats
	Wire        wire.Stats
	First, Last time.Time
	Events      []correlate.Event
	// Tally sums up the events and gaps per server.
	Tally correlate.Tally
	// Gaps are the answered exchanges' gaps by server and phase, in the
	// order of their answers: eight bytes an exchange, so that a capture
	// of millions of exchanges stays cheap to hold.
	Gaps map[GapKey][]time.Duration
	// Timelines are the connections' answered exchanges for the report.
	Timelines map[ConnKey]*Timeline
	// Untimed counts the answered exchanges of connections beyond the
	// timelines' bound: they are in Gaps only.
	Untimed int
	// OtherLinks name the unsupported link types of pcapng interfaces
	// whose frames were passed over ("220 (USB)").
	OtherLinks []string
	Open       []correlate.OpenExchange // exchanges still open at the end of the capture
	// MaxFlows is the flow limit the connections were followed under:
	// past it the least recently seen were evicted (Wire.Evictions).
	MaxFlows int
	// Err is the damage that ended reading early, if any: what came
	// before it is analyzed.
	Err error
}

// Analyze runs a capture through the same rules as the kernel and the
// same correlator as the agent, on the capture's clock.
func Run(r io.Reader, cfg Config) (Analysis, error) {
	a := Analysis{Gaps: map[GapKey][]time.Duration{}, Timelines: map[ConnKey]*Timeline{}, MaxFlows: cfg.Correlator.MaxFlows}
	capture, err := wire.OpenCapture(r)
	if err != nil {
		return a, err
	}
	a.Format = capture.Format
	keep := func(server string) bool { return !cfg.Server.IsValid() || server == cfg.Server.String() }
	corr, err := correlate.New(cfg.Correlator, nil, func(e correlate.Event) {
		if !keep(e.Server) {
			return
		}
		a.Events = append(a.Events, e)
		a.Tally.Event(e)
		if t := a.Timelines[ConnKey{e.Server, e.ClientAddr}]; t != nil {
			t.event()
		}
	})
	if err != nil {
		return a, err
	}
	slow := cfg.Correlator.StallThreshold / timelineSlow
	corr.OnGap = func(g correlate.Gap) {
		if !keep(g.Server) {
			return
		}
		a.Tally.Gap(g)
		k := GapKey{g.Server, g.Phase}
		a.Gaps[k] = append(a.Gaps[k], g.Gap)
		ck := ConnKey{g.Server, g.Client}
		t := a.Timelines[ck]
		if t == nil {
			if len(a.Timelines) >= timelineConns {
				a.Untimed++
				return
			}
			t = &Timeline{}
			a.Timelines[ck] = t
		}
		t.add(Exchange{Start: g.At.Add(-g.Gap), Phase: g.Phase, Gap: g.Gap, MaxGap: g.Gap, Count: 1}, g.Gap >= slow)
	}
	tracker := wire.NewTracker(cfg.Ports, cfg.Correlator.MaxFlows)
	feed := corr.Observe // one func value, not one per packet
	for n := uint64(1); ; n++ {
		p, err := capture.Next()
		if err != nil {
			if !errors.Is(err, io.EOF) {
				a.Err = err
			}
			break
		}
		if a.First.IsZero() {
			a.First = p.Time
		}
		if p.Time.After(a.Last) {
			a.Last = p.Time
		}
		// The sweeps run on the capture's clock, as the agent's run on its
		// own: once a second of it, and when an exchange crosses the stall
		// threshold.
		corr.Advance(p.Time)
		tracker.Packet(p, feed)
		if cfg.Progress != nil && cfg.Every > 0 && n%cfg.Every == 0 {
			cfg.Progress(n, capture.Stats().Bytes)
		}
	}
	if !a.Last.IsZero() {
		// Settle what the last second left (tickets, pending closes),
		// without counting the end of the capture as time passing.
		corr.Sweep(a.Last)
		corr.Flush()
	}
	for _, t := range a.Timelines {
		t.end()
	}
	for _, ex := range corr.OpenExchanges(a.Last) {
		if keep(ex.Server) {
			a.Open = append(a.Open, ex)
		}
	}
	a.Capture, a.Wire = capture.Stats(), tracker.Stats()
	other := capture.OtherLinks()
	for _, l := range other {
		a.OtherLinks = append(a.OtherLinks, wire.LinkName(l))
	}
	if a.Wire.Packets == 0 && len(other) > 0 {
		// Every frame was on an interface of a link type not read here.
		return a, &wire.LinkTypeError{Links: other}
	}
	return a, nil
}
