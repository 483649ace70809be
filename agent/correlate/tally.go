package correlate

import (
	"sort"
	"time"
)

// ServerTally is what a run said of one server: its answered exchanges
// and their gaps, and its events by kind.
type ServerTally struct {
	Server                             string
	Answered                           int           // exchanges answered, TLS handshakes and requests
	GapSum                             time.Duration // their gaps added up
	Stalls, Releases, Races, TLSAlerts int
	Closes, ServerCloses               int // every close, and those the server began
}

// MeanGap is the answered exchanges' mean gap (0 when none was answered).
func (s ServerTally) MeanGap() time.Duration {
	if s.Answered == 0 {
		return 0
	}
	return s.GapSum / time.Duration(s.Answered)
}

// Tally sums up a run per server, for the summaries that the demo and
// the offline analysis print. Feed it the events and the gaps.
type Tally struct {
	servers map[string]*ServerTally
}

func (t *Tally) server(label string) *ServerTally {
	if t.servers == nil {
		t.servers = map[string]*ServerTally{}
	}
	s := t.servers[label]
	if s == nil {
		s = &ServerTally{Server: label}
		t.servers[label] = s
	}
	return s
}

// Event counts an event.
func (t *Tally) Event(e Event) {
	s := t.server(e.Server)
	switch d := e.Detail.(type) {
	case *Stall:
		s.Stalls++
	case *Release:
		s.Releases++
	case *Race:
		s.Races++
	case *TLSAlert:
		s.TLSAlerts++
	case *Close:
		s.Closes++
		if d.Initiator == "server" {
			s.ServerCloses++
		}
	}
}

// Gap counts an answered exchange.
func (t *Tally) Gap(g Gap) {
	s := t.server(g.Server)
	s.Answered++
	s.GapSum += g.Gap
}

// Servers are the servers' tallies, by server.
func (t *Tally) Servers() []ServerTally {
	out := make([]ServerTally, 0, len(t.servers))
	for _, s := range t.servers {
		out = append(out, *s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Server < out[j].Server })
	return out
}
