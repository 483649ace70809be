package agent

import (
	"errors"
	"io"
	"net/netip"
	"time"

	"github.com/icapwatch/icapwatch/agent/wire"
	"github.com/icapwatch/icapwatch/exporter"
)

// AnalyzeConfig is `icapwatch analyze`'s setting.
type AnalyzeConfig struct {
	Ports      []uint16
	Correlator Config
	// Server keeps only this server's events and gaps (zero: all).
	Server netip.AddrPort
	// Progress, when set, is called about every Every packets.
	Progress func(packets uint64, bytes uint64)
	Every    uint64
}

// GapKey groups gaps as the gap histogram does.
type GapKey struct{ Server, Phase string }

// Analysis is what a capture gave.
type Analysis struct {
	Format      string
	Capture     wire.CaptureStats
	Wire        wire.Stats
	First, Last time.Time
	Events      []Event
	// Gaps are the answered exchanges' gaps by server and phase, in the
	// order of their answers: eight bytes an exchange, so that a capture
	// of millions of exchanges stays cheap to hold.
	Gaps map[GapKey][]time.Duration
	Open []OpenExchange // exchanges still open at the end of the capture
	// Err is the damage that ended reading early, if any: what came
	// before it is analyzed.
	Err error
}

// Analyze runs a capture through the same rules as the kernel and the
// same correlator as the agent, on the capture's clock.
func Analyze(r io.Reader, cfg AnalyzeConfig) (Analysis, error) {
	a := Analysis{Gaps: map[GapKey][]time.Duration{}}
	capture, err := wire.OpenCapture(r)
	if err != nil {
		return a, err
	}
	a.Format = capture.Format
	keep := func(server string) bool { return !cfg.Server.IsValid() || server == cfg.Server.String() }
	corr, err := New(cfg.Correlator, exporter.NewMetrics(nil), func(e Event) {
		if keep(e.Server) {
			a.Events = append(a.Events, e)
		}
	})
	if err != nil {
		return a, err
	}
	corr.OnGap = func(g Gap) {
		if keep(g.Server) {
			k := GapKey{g.Server, g.Phase}
			a.Gaps[k] = append(a.Gaps[k], g.Gap)
		}
	}
	tracker := wire.NewTracker(cfg.Ports, cfg.Correlator.MaxFlows)
	feed := corr.Observe // one func value, not one per packet
	var nextSweep time.Time
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
		// through quiet stretches: a stall is found when it crosses the
		// threshold, not at the next packet. After a day of quiet it jumps.
		if nextSweep.IsZero() {
			nextSweep = p.Time.Add(time.Second)
		}
		if p.Time.Sub(nextSweep) > 24*time.Hour {
			nextSweep = p.Time
		}
		for !p.Time.Before(nextSweep) {
			corr.Sweep(nextSweep)
			nextSweep = nextSweep.Add(time.Second)
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
	for _, ex := range corr.OpenExchanges(a.Last) {
		if keep(ex.Server) {
			a.Open = append(a.Open, ex)
		}
	}
	a.Capture, a.Wire = capture.Stats(), tracker.Stats()
	return a, nil
}
