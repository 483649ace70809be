package correlate

import (
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"

	"github.com/icapwatch/icapwatch/agent/observe"
)

// The properties every stream must keep, whatever order and timing its
// observations come in:
//   - the correlator does not panic;
//   - every stall ends exactly once, with one outcome, and ends only
//     after it began;
//   - once every flow has closed and time has passed, the gauges are back
//     at zero and no flow is left.

// fuzzFlows: three clients of two servers, so that flow eviction
// (max-flows 3) and the server label overflow (max-servers 1) happen.
var fuzzFlows = [4]observe.Flow{flowA, flowB, flowC, flowA2}

// stream turns bytes into observations, three bytes each: what, which
// flow and direction, and how much time passes first.
func stream(t testing.TB, data []byte, c *Correlator) time.Time {
	now := t0
	for ; len(data) >= 3; data = data[3:] {
		op, sel, dt := data[0], data[1], data[2]
		now = now.Add(time.Duration(dt) * 50 * time.Millisecond)
		o := observe.Observation{Source: observe.SourceKernel, Time: now, Flow: fuzzFlows[sel&3],
			Dir: observe.Direction(sel >> 2 & 1), Phase: observe.Phase(1 + sel>>3&1)}
		switch op % 16 {
		case 0:
			c.Sweep(now)
			checkDue(t, c)
			continue
		case 1:
			o.Kind = observe.ExchangeStart
		case 2:
			o.Kind = observe.Acked
		case 3:
			o.Kind, o.Flags = observe.Answer, observe.Flags(sel>>4&3)*observe.MaybeTicket
		case 4:
			o.Kind, o.Flags = observe.TLSAlert, observe.Flags(sel>>4&1)*observe.Probable
		case 5:
			o.Kind = observe.FIN
		case 6:
			o.Kind = observe.RST
		case 7:
			o.Kind, o.Retrans = observe.Retransmit, uint32(sel>>4)
		case 8:
			o.Kind, o.NewState = observe.State, observe.TCPState(sel>>4)%13
			if sel&0x80 != 0 {
				o.PID, o.Comm = 100+uint32(sel&3), "app"
			}
		case 9:
			o.Kind = observe.AppRead
		case 10:
			o.Kind, o.RQueue, o.Unacked = observe.SocketInfo, uint32(sel>>4&1)*100, uint32(sel>>5&1)*100
		case 11:
			o.Kind, o.Source = observe.CanaryConn, observe.SourceCanary
		case 12:
			o.Kind, o.Source, o.MaxConnections = observe.ServerOptions, observe.SourceCanary, int(sel>>4)
		case 13:
			o.Kind, o.Source, o.IdleTimeout = observe.ServerIdle, observe.SourceCanary, time.Duration(1+sel>>4)*time.Second
		case 14:
			o.Kind, o.Source, o.Gap = observe.CanaryAnswer, observe.SourceCanary, time.Duration(dt)*time.Millisecond
		default:
			o.Kind = observe.TCPRetransmit
		}
		c.Observe(o)
		checkDue(t, c)
	}
	return now
}

// checkDue holds the stall heap to the flows: NextStall is the earliest
// start of an open exchange not stalled yet, plus the threshold.
func checkDue(t testing.TB, c *Correlator) {
	var want time.Time
	n := 0
	for _, f := range c.flows {
		if ex := f.ex; ex != nil && !ex.stalled {
			n++
			if at := ex.start.Add(c.cfg.StallThreshold).Time(c.loc); want.IsZero() || at.Before(want) {
				want = at
			}
		}
	}
	if got := c.NextStall(); !got.Equal(want) || len(c.due) != n {
		t.Fatalf("next stall %v, want %v; %d exchanges in the heap, %d open", got, want, len(c.due), n)
	}
}

// checkStream feeds a stream, closes every flow, lets time pass and
// checks the properties.
func checkStream(t *testing.T, data []byte) {
	open := map[netip.AddrPort]int{} // stalls not ended yet, by client address
	stalls, ends := 0, 0
	cfg := DefaultConfig()
	cfg.StallThreshold, cfg.TicketWait, cfg.MaxFlows, cfg.MaxServers = time.Second, 300*time.Millisecond, 3, 1
	c, err := New(cfg, nil, func(e Event) {
		addr := e.ClientAddr
		switch e.Kind() {
		case KindStall:
			stalls++
			open[addr]++
		case KindStallEnd:
			ends++
			if open[addr]--; open[addr] < 0 {
				t.Fatalf("a stall of %s ended that had not begun", addr)
			}
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	now := stream(t, data, c)
	for _, f := range fuzzFlows {
		now = now.Add(time.Millisecond)
		c.Observe(observe.Observation{Kind: observe.RST, Source: observe.SourceKernel, Time: now, Flow: f})
		c.Observe(observe.Observation{Kind: observe.State, Source: observe.SourceKernel, Time: now, Flow: f,
			NewState: observe.TCPClose})
	}
	c.Sweep(now.Add(time.Hour))
	c.Sweep(now.Add(2 * time.Hour))
	if stalls != ends {
		t.Fatalf("%d stalls, %d stall ends", stalls, ends)
	}
	end := now.Add(2 * time.Hour)
	st := c.State(end)
	for l, n := range st.Stalled {
		t.Fatalf("stalled_exchanges %v = %d after every flow closed", l, n)
	}
	for l, n := range st.Connections {
		t.Fatalf("connections %v = %d after every flow closed", l, n)
	}
	if st.Flows != 0 {
		t.Fatalf("flows_tracked = %d after every flow closed", st.Flows)
	}
	for _, s := range st.Servers {
		if s.Oldest != 0 || s.AboveLimit != 0 {
			t.Fatalf("server %s: oldest open exchange %v, %d above its limit after every flow closed", s.Server, s.Oldest, s.AboveLimit)
		}
	}
	if next := c.NextStall(); !next.IsZero() {
		t.Fatalf("a stall is due at %v after every flow closed", next)
	}
}

func FuzzCorrelator(f *testing.F) {
	f.Add([]byte{1, 0, 0, 2, 4, 1, 0, 0, 30, 3, 4, 1})                      // a stall, answered
	f.Add([]byte{1, 0, 0, 3, 4, 2, 10, 16, 1, 0, 0, 30, 9, 0, 40})          // unread, then read
	f.Add([]byte{1, 0, 0, 1, 1, 1, 1, 2, 1, 1, 3, 1, 0, 0, 40})             // evictions at max-flows
	f.Add([]byte{3, 16, 0, 1, 0, 1, 3, 20, 1, 0, 0, 10, 3, 52, 5})          // tickets
	f.Add([]byte{5, 4, 0, 1, 0, 1, 6, 4, 1, 8, 0x10, 1, 1, 0, 1, 0, 0, 40}) // close races
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > 3000 {
			return
		}
		checkStream(t, data)
	})
}

// TestCorrelatorProperties runs the properties on random streams in
// every test run; the fuzzer searches further.
func TestCorrelatorProperties(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for range 500 {
		data := make([]byte, 3*(1+rng.IntN(150)))
		for i := range data {
			data[i] = byte(rng.Uint32())
		}
		// Mostly short steps: stalls need exchanges that stay open a while,
		// not a second between every two observations.
		for i := 2; i < len(data); i += 3 {
			data[i] %= 24
		}
		checkStream(t, data)
	}
}
