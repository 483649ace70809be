package analyze

import (
	"errors"
	"github.com/icapwatch/icapwatch/agent/correlate"
	"io"
	"net/netip"
	"time"

	"github.com/icapwatch/icapwatch/agent/observe"
	"github.com/icapwatch/icapwatch/agent/wire"
	"github.com/icapwatch/icapwatch/exporter"
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
	// Err is the damage that ended reading early, if any: what came
	// before it is analyzed.
	Err error
}

// Analyze runs a capture through the same rules as the kernel and the
// same correlator as the agent, on the capture's clock.
func Run(r io.Reader, cfg Config) (Analysis, error) {
	a := Analysis{Gaps: map[GapKey][]time.Duration{}, Timelines: map[ConnKey]*Timeline{}}
	capture, err := wire.OpenCapture(r)
	if err != nil {
		return a, err
	}
	a.Format = capture.Format
	keep := func(server string) bool { return !cfg.Server.IsValid() || server == cfg.Server.String() }
	corr, err := correlate.New(cfg.Correlator, exporter.NewMetrics(nil), func(e correlate.Event) {
		if !keep(e.Server) {
			return
		}
		a.Events = append(a.Events, e)
		if client, err := netip.ParseAddrPort(e.ClientAddr); err == nil {
			if t := a.Timelines[ConnKey{e.Server, client}]; t != nil {
				t.event()
			}
		}
	})
	if err != nil {
		return a, err
	}
	slow := cfg.Correlator.StallThreshold / timelineSlow
	var open openExchanges
	corr.OnGap = func(g correlate.Gap) {
		open.end(g.Client, g.At.Add(-g.Gap))
		if !keep(g.Server) {
			return
		}
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
	feed := func(o observe.Observation) { // one func value, not one per packet
		if o.Kind == observe.ExchangeStart {
			open.begin(o.Flow.Client, o.Time)
		}
		corr.Observe(o)
	}
	threshold := cfg.Correlator.StallThreshold
	var nextSweep, swept time.Time
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
		// The sweep runs on the capture's clock, once a second of it, also
		// through quiet stretches, and at the moment an open exchange
		// crosses the stall threshold, as the agent's timer does: a stall
		// is found when it crosses, not at the next packet or second.
		// After a day of quiet the periodic sweep jumps.
		if nextSweep.IsZero() {
			nextSweep = p.Time.Add(time.Second)
		}
		if p.Time.Sub(nextSweep) > 24*time.Hour {
			nextSweep = p.Time
		}
		for {
			at := nextSweep
			if due := stallDue(corr.NextStall(), &open, threshold); !due.IsZero() && due.Before(at) && due.After(swept) {
				at = due
			}
			if p.Time.Before(at) {
				break
			}
			corr.Sweep(at)
			swept = at
			open.expire(at.Add(-threshold))
			if at.Equal(nextSweep) {
				nextSweep = nextSweep.Add(time.Second)
			}
		}
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

// stallDue is when the next sweep may find a stall. The correlator's
// NextStall is exact after a sweep, but an exchange answered since keeps
// it: sweeping then, for every such exchange, would walk all flows
// hundreds of times a capture second. open, which sees exchanges end,
// gives another bound: both are never later than the true time, the later
// of the two is the better one. Zero when nothing is due.
func stallDue(next time.Time, open *openExchanges, threshold time.Duration) time.Time {
	start, ok := open.earliest()
	if next.IsZero() || !ok {
		return time.Time{} // the correlator or open knows nothing is open
	}
	return later(next, start.Add(threshold))
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// openExchanges is the correlator's open exchanges as Analyze sees them:
// started by an ExchangeStart, ended by the correlator's OnGap. It keeps
// some the correlator ended otherwise (reset, closed) until they are due,
// which costs a needless sweep, never a late one. A min-heap on the start,
// one entry per client address: a flow's next exchange replaces its last.
// (OnGap names the server by its label, which may be "other". A client
// port open to two servers at once can hide the first one's exchange:
// its stall then waits for the periodic sweep, as before.)
type openExchanges struct {
	heap  []openStart
	index map[netip.AddrPort]int // position in heap
}

type openStart struct {
	client netip.AddrPort
	start  time.Time
}

func (o *openExchanges) begin(client netip.AddrPort, start time.Time) {
	if o.index == nil {
		o.index = map[netip.AddrPort]int{}
	}
	if i, ok := o.index[client]; ok {
		o.heap[i].start = start
		o.down(o.up(i))
		return
	}
	o.heap = append(o.heap, openStart{client, start})
	o.index[client] = len(o.heap) - 1
	o.up(len(o.heap) - 1)
}

// end forgets the client's exchange if it is the one that started then.
func (o *openExchanges) end(client netip.AddrPort, start time.Time) {
	if i, ok := o.index[client]; ok && o.heap[i].start.Equal(start) {
		o.remove(i)
	}
}

func (o *openExchanges) earliest() (time.Time, bool) {
	if len(o.heap) == 0 {
		return time.Time{}, false
	}
	return o.heap[0].start, true
}

// expire forgets the exchanges started by then: a sweep has seen them
// cross the threshold, stalled or not.
func (o *openExchanges) expire(by time.Time) {
	for len(o.heap) > 0 && !o.heap[0].start.After(by) {
		o.remove(0)
	}
}

func (o *openExchanges) remove(i int) {
	last := len(o.heap) - 1
	delete(o.index, o.heap[i].client)
	if i != last {
		o.heap[i] = o.heap[last]
		o.index[o.heap[i].client] = i
	}
	o.heap = o.heap[:last]
	if i != last {
		o.down(o.up(i))
	}
}

func (o *openExchanges) swap(i, j int) {
	o.heap[i], o.heap[j] = o.heap[j], o.heap[i]
	o.index[o.heap[i].client], o.index[o.heap[j].client] = i, j
}

func (o *openExchanges) up(i int) int {
	for i > 0 {
		parent := (i - 1) / 2
		if !o.heap[i].start.Before(o.heap[parent].start) {
			break
		}
		o.swap(i, parent)
		i = parent
	}
	return i
}

func (o *openExchanges) down(i int) {
	for {
		least := i
		if c := 2*i + 1; c < len(o.heap) && o.heap[c].start.Before(o.heap[least].start) {
			least = c
		}
		if c := 2*i + 2; c < len(o.heap) && o.heap[c].start.Before(o.heap[least].start) {
			least = c
		}
		if least == i {
			return
		}
		o.swap(i, least)
		i = least
	}
}
