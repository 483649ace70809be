package correlate

import (
	"encoding/json"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/icapwatch/icapwatch/agent/observe"
)

var (
	t0     = time.Date(2026, 11, 23, 7, 20, 46, 426e6, time.UTC)
	srvA   = netip.MustParseAddrPort("192.0.2.1:11344")
	srvB   = netip.MustParseAddrPort("198.51.100.7:11344")
	cliA   = netip.MustParseAddrPort("192.0.2.10:40001")
	cliB   = netip.MustParseAddrPort("192.0.2.10:40002")
	cliC   = netip.MustParseAddrPort("192.0.2.10:40003")
	flowA  = observe.Flow{Client: cliA, Server: srvA}
	flowB  = observe.Flow{Client: cliB, Server: srvA}
	flowC  = observe.Flow{Client: cliC, Server: srvA}
	flowA2 = observe.Flow{Client: cliA, Server: srvB}
)

// harness feeds a correlator and keeps what it said and measured.
type harness struct {
	t      *testing.T
	c      *Correlator
	m      *testMeter
	events []Event
	now    time.Time // the latest time fed: State is read then
}

func newHarness(t *testing.T, mod func(*Config)) *harness {
	t.Helper()
	cfg := DefaultConfig()
	if mod != nil {
		mod(&cfg)
	}
	h := &harness{t: t, m: newTestMeter()}
	c, err := New(cfg, h.m, func(e Event) { h.events = append(h.events, e) })
	if err != nil {
		t.Fatal(err)
	}
	h.c = c
	return h
}

// at is t0 plus a duration given in seconds.
func at(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }

func (h *harness) obs(kind observe.Kind, f observe.Flow, s float64, opts ...func(*observe.Observation)) *harness {
	o := observe.Observation{Kind: kind, Source: observe.SourceKernel, Time: at(s), Flow: f, Phase: observe.PhaseRequest}
	switch kind {
	case observe.Answer, observe.Acked:
		o.Dir = observe.ToClient
	}
	for _, opt := range opts {
		opt(&o)
	}
	h.now = o.Time
	h.c.Observe(o)
	return h
}

func fromServer(o *observe.Observation) { o.Dir = observe.ToClient }
func fromClient(o *observe.Observation) { o.Dir = observe.ToServer }
func flags(fl observe.Flags) func(*observe.Observation) {
	return func(o *observe.Observation) { o.Flags |= fl }
}
func state(old, new observe.TCPState) func(*observe.Observation) {
	return func(o *observe.Observation) { o.OldState, o.NewState = old, new }
}
func owner(pid uint32, comm string) func(*observe.Observation) {
	return func(o *observe.Observation) { o.PID, o.Comm = pid, comm }
}

func (h *harness) sweep(s float64) *harness { h.now = at(s); h.c.Sweep(h.now); return h }

// kinds lists the events said so far, "kind:detail" each.
func (h *harness) kinds() string {
	var parts []string
	for _, e := range h.events {
		d := ""
		for _, k := range []string{"state", "outcome", "race_kind", "initiator", "direction"} {
			if v, ok := e.Field(k).(string); ok {
				d += ":" + v
			}
		}
		parts = append(parts, string(e.Kind())+d)
	}
	return strings.Join(parts, " ")
}

func (h *harness) wantKinds(want string) {
	h.t.Helper()
	if got := h.kinds(); got != want {
		h.t.Errorf("events:\n got  %s\n want %s", got, want)
	}
}

func (h *harness) field(kind Kind, name string) any {
	h.t.Helper()
	for _, e := range h.events {
		if e.Kind() == kind {
			return e.Field(name)
		}
	}
	h.t.Fatalf("no %s event", kind)
	return nil
}

// count is how many events of a kind have these field values (by the
// JSON names: server and client too).
func (h *harness) count(kind Kind, match map[string]string) float64 {
	n := 0.0
	for _, e := range h.events {
		ok := e.Kind() == kind
		for k, v := range match {
			switch k {
			case "server":
				ok = ok && e.Server == v
			case "client":
				ok = ok && e.Client == v
			default:
				ok = ok && e.Field(k) == v
			}
		}
		if ok {
			n++
		}
	}
	return n
}

// metric is the value the agent exports for a metric of the contract
// (named without icapwatch_ and _total): counters follow the events,
// gauges the correlator's State, the rest the Meter.
func (h *harness) metric(name string, l ...string) float64 {
	h.t.Helper()
	label := func(i int) string {
		if i >= len(l) {
			h.t.Fatalf("%s needs label %d", name, i+1)
		}
		return l[i]
	}
	st := h.c.State(h.now)
	server := func() (ServerState, bool) {
		for _, s := range st.Servers {
			if s.Server == label(0) {
				return s, true
			}
		}
		return ServerState{}, false
	}
	switch name {
	case "stalls":
		return h.count(KindStall, map[string]string{"server": label(0), "client": label(1), "state": label(2)})
	case "stall_outcomes":
		return h.count(KindStallEnd, map[string]string{"server": label(0), "client": label(1), "outcome": label(2)})
	case "stall_releases":
		if label(1) != ReleaseCause {
			return 0
		}
		return h.count(KindRelease, map[string]string{"server": label(0)})
	case "idle_close_races":
		return h.count(KindRace, map[string]string{"server": label(0), "client": label(1), "race_kind": label(2)})
	case "connection_closes":
		return h.count(KindClose, map[string]string{"server": label(0), "client": label(1), "initiator": label(2), "how": label(3)})
	case "tls_alerts":
		return h.count(KindTLSAlert, map[string]string{"server": label(0), "direction": label(1)})
	case "stalled_exchanges":
		return float64(st.Stalled[Labels{label(0), label(1), label(2)}])
	case "connections":
		return float64(st.Connections[Labels{label(0), label(1), label(2)}])
	case "oldest_open_exchange_seconds":
		s, _ := server()
		return s.Oldest.Seconds()
	case "pool_above_server_limit":
		s, _ := server()
		return float64(s.AboveLimit)
	case "flows_tracked":
		return float64(st.Flows)
	case "retransmits":
		return float64(h.m.retransmits[label(0)])
	case "flow_evictions":
		return float64(h.m.evictions)
	case "flow_evictions_open_exchange":
		return float64(h.m.evictedOpen)
	}
	h.t.Fatalf("no metric %s", name)
	return 0
}

func (h *harness) wantMetric(name string, want float64, labels ...string) {
	h.t.Helper()
	if got := h.metric(name, labels...); got != want {
		h.t.Errorf("%s %v = %v, want %v", name, labels, got, want)
	}
}

// testMeter keeps what the correlator measured.
type testMeter struct {
	gaps        map[[3]string][]time.Duration // server, client, phase
	idleAges    map[[2]string]int
	retransmits map[string]uint32
	skews       map[string][]time.Duration
	observed    map[observe.Source]int
	evictions   int
	evictedOpen int
}

func newTestMeter() *testMeter {
	return &testMeter{gaps: map[[3]string][]time.Duration{}, idleAges: map[[2]string]int{},
		retransmits: map[string]uint32{}, skews: map[string][]time.Duration{}, observed: map[observe.Source]int{}}
}

type testFlowMeter struct {
	m              *testMeter
	server, client string
}

func (m *testMeter) Flow(server, client string) FlowMeter { return testFlowMeter{m, server, client} }
func (m *testMeter) Observed(s observe.Source)            { m.observed[s]++ }
func (m *testMeter) Retransmits(server string, n uint32)  { m.retransmits[server] += n }
func (m *testMeter) Skew(server string, d time.Duration) {
	m.skews[server] = append(m.skews[server], d)
}
func (m *testMeter) FlowEvicted()     { m.evictions++ }
func (m *testMeter) FlowEvictedOpen() { m.evictedOpen++ }
func (f testFlowMeter) Gap(p observe.Phase, d time.Duration) {
	k := [3]string{f.server, f.client, p.String()}
	f.m.gaps[k] = append(f.m.gaps[k], d)
}
func (f testFlowMeter) IdleAge(time.Duration) { f.m.idleAges[[2]string{f.server, f.client}]++ }

// sum is how many durations there are and their sum in seconds.
func sum(ds []time.Duration) (uint64, float64) {
	var s time.Duration
	for _, d := range ds {
		s += d
	}
	return uint64(len(ds)), s.Seconds()
}

func TestAnsweredExchange(t *testing.T) {
	h := newHarness(t, nil)
	h.obs(observe.ExchangeStart, flowA, 0).obs(observe.Acked, flowA, 0.04).obs(observe.Answer, flowA, 0.1).sweep(20)
	h.wantKinds("")
	n, sum := sum(h.m.gaps[[3]string{srvA.String(), ClientUnknown, "request"}])
	if n != 1 || sum < 0.0999 || sum > 0.1001 {
		t.Errorf("gap histogram: %d observations, sum %v; want 1, 0.1", n, sum)
	}
}

func TestStallStatesAndOutcomes(t *testing.T) {
	for _, tc := range []struct {
		name   string
		feed   func(h *harness)
		events string
		state  string
		out    string
	}{
		{"unacked then answered", func(h *harness) {
			h.obs(observe.ExchangeStart, flowA, 0).sweep(9).sweep(10).sweep(11).obs(observe.Answer, flowA, 12)
		}, "stall:unacked stall_end:unacked:answered", StateUnacked, OutcomeAnswered},
		{"acked_silent then server close", func(h *harness) {
			h.obs(observe.ExchangeStart, flowA, 0).obs(observe.Acked, flowA, 0.05).sweep(10).
				obs(observe.FIN, flowA, 30, fromServer).sweep(32)
		}, "stall:acked_silent race:server_close_during_request stall_end:acked_silent:server_closed close:server",
			StateAckedSilent, OutcomeServerClosed},
		{"reset", func(h *harness) {
			h.obs(observe.ExchangeStart, flowA, 0).sweep(10).obs(observe.RST, flowA, 15, fromServer)
		}, "stall:unacked close:server race:server_close_during_request stall_end:unacked:reset", StateUnacked, OutcomeReset},
		{"the application gives up", func(h *harness) {
			h.obs(observe.ExchangeStart, flowA, 0).obs(observe.Acked, flowA, 0.05).sweep(10).
				obs(observe.FIN, flowA, 60, fromClient).sweep(62)
		}, "stall:acked_silent stall_end:acked_silent:client_closed close:client", StateAckedSilent, OutcomeClientClosed},
		{"evicted", func(h *harness) {
			h.obs(observe.ExchangeStart, flowA, 0).sweep(10).obs(observe.ExchangeStart, flowB, 11)
		}, "stall:unacked stall_end:unacked:evicted", StateUnacked, OutcomeEvicted},
		{"unread", func(h *harness) {
			h.obs(observe.ExchangeStart, flowA, 0).obs(observe.Answer, flowA, 0.2).
				obs(observe.SocketInfo, flowA, 1, func(o *observe.Observation) { o.RQueue = 500 }).
				sweep(10).sweep(10.3).obs(observe.AppRead, flowA, 14)
		}, "stall:unread stall_end:unread:answered", StateUnread, OutcomeAnswered},
		{"the next request without the answer seen", func(h *harness) {
			h.obs(observe.ExchangeStart, flowA, 0).sweep(10).obs(observe.ExchangeStart, flowA, 12)
		}, "stall:unacked stall_end:unacked:evicted", StateUnacked, OutcomeEvicted},
		{"unread, the application closes", func(h *harness) {
			unreadStall(h).obs(observe.FIN, flowA, 14, fromClient).sweep(16)
		}, "stall:unread stall_end:unread:client_closed close:client", StateUnread, OutcomeClientClosed},
		{"unread, reset", func(h *harness) {
			unreadStall(h).obs(observe.RST, flowA, 14, fromClient)
		}, "stall:unread close:client stall_end:unread:reset", StateUnread, OutcomeReset},
		{"unread outlives the server's close", func(h *harness) {
			unreadStall(h).obs(observe.FIN, flowA, 14, fromServer).sweep(16).obs(observe.AppRead, flowA, 17)
		}, "stall:unread close:server stall_end:unread:answered", StateUnread, OutcomeAnswered},
		{"unread, the socket is gone", func(h *harness) {
			unreadStall(h).obs(observe.State, flowA, 14, fromClient, state(observe.TCPEstablished, observe.TCPClose))
		}, "stall:unread stall_end:unread:client_closed", StateUnread, OutcomeClientClosed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, func(c *Config) { c.MaxFlows = 1 })
			tc.feed(h)
			h.wantKinds(tc.events)
			h.wantMetric("stalls", 1, srvA.String(), ClientUnknown, tc.state)
			h.wantMetric("stalled_exchanges", 0, srvA.String(), ClientUnknown, tc.state)
			h.wantMetric("stall_outcomes", 1, srvA.String(), ClientUnknown, tc.out)
		})
	}
}

// unreadStall: an answer stays in the receive queue past the threshold.
func unreadStall(h *harness) *harness {
	return h.obs(observe.ExchangeStart, flowA, 0).obs(observe.Answer, flowA, 0.2).
		obs(observe.SocketInfo, flowA, 1, rqueue(500)).sweep(10.3)
}

func rqueue(n uint32) func(*observe.Observation) {
	return func(o *observe.Observation) { o.RQueue = n }
}

// A partial read ends an unread stall; what is left is unread from then
// on, not from the answer.
func TestPartialRead(t *testing.T) {
	h := newHarness(t, nil)
	unreadStall(h).obs(observe.AppRead, flowA, 14).obs(observe.SocketInfo, flowA, 15, rqueue(200)).sweep(16)
	h.wantKinds("stall:unread stall_end:unread:answered")
	h.sweep(24.5)
	h.wantKinds("stall:unread stall_end:unread:answered stall:unread")
	if got := h.field(KindStall, "age_seconds"); got != 10.1 {
		t.Errorf("first stall's age %v", got)
	}
	h.wantMetric("stalls", 2, srvA.String(), ClientUnknown, StateUnread)
}

// The owner learnt during an unread stall takes its gauge along.
func TestRelabelMovesUnreadGauge(t *testing.T) {
	h := newHarness(t, nil)
	unreadStall(h).obs(observe.State, flowA, 12, fromClient, state(0, observe.TCPEstablished), owner(9, "scanapp"))
	h.wantMetric("stalled_exchanges", 0, srvA.String(), ClientUnknown, StateUnread)
	h.wantMetric("stalled_exchanges", 1, srvA.String(), "scanapp", StateUnread)
	h.obs(observe.AppRead, flowA, 13)
	h.wantMetric("stalled_exchanges", 0, srvA.String(), "scanapp", StateUnread)
}

// Retransmitted request segments count, and the stall says how many it
// had: retransmits while unacked point at the path, not the server.
func TestRetransmits(t *testing.T) {
	h := newHarness(t, nil)
	h.obs(observe.ExchangeStart, flowA, 0).obs(observe.Retransmit, flowA, 0.3, fromClient).
		obs(observe.Retransmit, flowA, 1, fromClient, func(o *observe.Observation) { o.Retrans = 3 }).
		obs(observe.TCPRetransmit, flowA, 1, fromClient). // the same segments, seen by the stack
		sweep(10)
	if got := h.field(KindStall, "retransmits"); got != uint32(4) {
		t.Errorf("stall retransmits %v, want 4", got)
	}
	h.wantMetric("retransmits", 4, srvA.String())
}

func TestStallEventFields(t *testing.T) {
	h := newHarness(t, nil)
	h.obs(observe.ExchangeStart, flowA, 0).sweep(10.5)
	b, err := json.Marshal(h.events[0])
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	json.Unmarshal(b, &m)
	v, present := m["acked_after_seconds"]
	if !present || v != nil {
		t.Errorf("an unacked stall needs acked_after_seconds: null, got %s", b)
	}
	if m["time"] != "2026-11-23T07:20:56.926Z" || m["age_seconds"] != 10.5 || m["kind"] != "stall" ||
		m["server"] != "192.0.2.1:11344" || m["client_addr"] != "192.0.2.10:40001" || m["client"] != "unknown" {
		t.Errorf("stall event: %s", b)
	}
	if _, ok := m["pid"]; ok {
		t.Errorf("pid written while unknown: %s", b)
	}
	h.wantMetric("oldest_open_exchange_seconds", 10.5, srvA.String())
	if open := h.c.OpenExchanges(at(11)); len(open) != 1 || open[0].State != StateUnacked || open[0].AgeSeconds != 11 {
		t.Errorf("open exchanges: %+v", open)
	}
}

func TestRaces(t *testing.T) {
	h := newHarness(t, nil)
	// B: the server's FIN arrived before the request was written.
	h.obs(observe.ExchangeStart, flowB, 0).obs(observe.Answer, flowB, 0.01).
		obs(observe.FIN, flowB, 300, fromServer).obs(observe.ExchangeStart, flowB, 300.005)
	// C: request and close crossed.
	h.obs(observe.ExchangeStart, flowC, 0).obs(observe.Answer, flowC, 0.01).
		obs(observe.ExchangeStart, flowC, 299.8).obs(observe.FIN, flowC, 300.1, fromServer).sweep(302)
	h.wantKinds("race:reuse_after_server_close race:crossed_close close:server close:server")
	if got := h.events[0].Field("request_to_close_seconds"); got != -0.005 {
		t.Errorf("reuse after close: request_to_close_seconds %v, want -0.005", got)
	}
	if got := h.events[1].Field("idle_age_seconds"); got != 299.79 {
		t.Errorf("crossed close: idle_age_seconds %v, want 299.79", got)
	}
	for _, kind := range []string{RaceReuseAfterClose, RaceCrossedClose} {
		h.wantMetric("idle_close_races", 1, srvA.String(), ClientUnknown, kind)
	}
	// The server's reset after the reused request is the same race.
	h.obs(observe.RST, flowB, 300.01, fromServer)
	h.wantMetric("idle_close_races", 1, srvA.String(), ClientUnknown, RaceCrossedClose)
	h.wantMetric("idle_close_races", 1, srvA.String(), ClientUnknown, RaceReuseAfterClose)
	n := h.m.idleAges[[2]string{srvA.String(), ClientUnknown}]
	if n != 2 {
		t.Errorf("reuse idle age: %d observations, want 2", n)
	}
}

// A request written after the server's close_notify, before its FIN:
// reused after the close, not crossed.
func TestReuseAfterCloseNotify(t *testing.T) {
	h := newHarness(t, nil)
	h.obs(observe.ExchangeStart, flowA, 0).obs(observe.Answer, flowA, 0.01).
		obs(observe.TLSAlert, flowA, 300, fromServer).obs(observe.ExchangeStart, flowA, 300.005).
		obs(observe.FIN, flowA, 300.01, fromServer)
	h.wantKinds("tls_alert:server race:reuse_after_server_close")
	if got := h.field(KindRace, "request_to_close_seconds"); got != -0.005 {
		t.Errorf("request_to_close_seconds %v", got)
	}
}

// A close that comes later than the race window after the request, but
// when the connection had been quiet for the server's idle timeout (as
// the canary observed it), crossed the request too.
func TestIdleTimeoutClassifiesRaces(t *testing.T) {
	for _, tc := range []struct {
		observed time.Duration
		want     string
	}{{20 * time.Second, RaceCrossedClose}, {0, RaceCloseDuringReqst}} {
		h := newHarness(t, nil)
		if tc.observed > 0 {
			h.c.Observe(observe.Observation{Kind: observe.ServerIdle, Source: observe.SourceCanary,
				Flow: observe.Flow{Server: srvA}, IdleTimeout: tc.observed})
		}
		h.obs(observe.ExchangeStart, flowA, 0).obs(observe.Answer, flowA, 0.01).
			obs(observe.ExchangeStart, flowA, 19.5).obs(observe.FIN, flowA, 20.7, fromServer)
		if got := h.field(KindRace, "race_kind"); got != tc.want {
			t.Errorf("idle timeout %v: race %v, want %s", tc.observed, got, tc.want)
		}
	}
}

func TestRelease(t *testing.T) {
	for _, tc := range []struct {
		name    string
		answer  float64
		release bool
		by      func(*observe.Observation)
	}{{"answered 8 ms after a sibling's close", 40.008, true, fromServer},
		{"answered 3 s after", 43, false, fromServer},
		{"the client closed the sibling", 40.008, false, fromClient}} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, nil)
			h.obs(observe.ExchangeStart, flowB, 0).obs(observe.Answer, flowB, 0.01) // B goes idle
			h.obs(observe.ExchangeStart, flowA, 1).obs(observe.Acked, flowA, 1.04).sweep(11)
			h.obs(observe.TLSAlert, flowB, 40, tc.by).obs(observe.FIN, flowB, 40.0001, tc.by)
			h.obs(observe.Answer, flowA, tc.answer)
			want := 0.0
			if tc.release {
				want = 1
				if got := h.field(KindRelease, "after_close_seconds"); got != 0.008 {
					t.Errorf("after_close_seconds %v", got)
				}
				if got := h.field(KindRelease, "sibling_client_addr"); got != cliB.String() {
					t.Errorf("sibling %v", got)
				}
			}
			h.wantMetric("stall_releases", want, srvA.String(), ReleaseCause)
		})
	}
}

func TestResetsAfterCloseCountOnce(t *testing.T) {
	h := newHarness(t, nil)
	h.obs(observe.State, flowA, 0, fromClient, state(observe.TCPSynSent, observe.TCPEstablished)) // seen from its connect
	h.obs(observe.FIN, flowA, 1, fromClient).obs(observe.RST, flowA, 1.1, fromClient).
		obs(observe.RST, flowA, 1.2, fromClient).sweep(3).obs(observe.RST, flowA, 3.5, fromClient)
	h.wantKinds("close:client")
	h.sweep(10)
	h.wantMetric("flows_tracked", 0)
}

// The sibling's close_notify reaches the correlator after the answer it
// released (the kernel holds it until the FIN), with its own time.
func TestReleaseReportedLate(t *testing.T) {
	h := newHarness(t, nil)
	h.obs(observe.ExchangeStart, flowA, 1).obs(observe.Acked, flowA, 1.04).sweep(11)
	h.obs(observe.State, flowB, 2, fromClient, state(observe.TCPSynSent, observe.TCPEstablished)) // an idle sibling
	h.obs(observe.Answer, flowA, 40.008)
	h.obs(observe.FIN, flowB, 40.009, fromClient) // the client answers the close_notify first
	h.obs(observe.TLSAlert, flowB, 40, fromServer, flags(observe.Probable)).obs(observe.FIN, flowB, 40.01, fromServer)
	h.wantKinds("stall:acked_silent stall_end:acked_silent:answered release tls_alert:server close:server")
	if got := h.field(KindRelease, "sibling_closed_by"); got != "server" {
		t.Errorf("sibling closed by %v", got)
	}
	if got := h.field(KindRelease, "after_close_seconds"); got != 0.008 {
		t.Errorf("after_close_seconds %v", got)
	}
}

func TestTLSAlerts(t *testing.T) {
	h := newHarness(t, nil)
	h.obs(observe.TLSAlert, flowA, 1, fromServer).obs(observe.TLSAlert, flowB, 2, fromClient, flags(observe.Probable))
	if h.events[0].Field("tls_version") != "1.2" || h.events[1].Field("tls_version") != "1.3?" {
		t.Errorf("versions: %v %v", h.events[0].Field("tls_version"), h.events[1].Field("tls_version"))
	}
	h.wantMetric("tls_alerts", 1, srvA.String(), "server")
	h.wantMetric("tls_alerts", 1, srvA.String(), "client")
}

func TestSessionTickets(t *testing.T) {
	h := newHarness(t, nil)
	// A server that sends its ticket after the client's Finished: the
	// second answer is the real one, and the server is remembered.
	h.obs(observe.ExchangeStart, flowA, 0).obs(observe.Answer, flowA, 0.001, flags(observe.MaybeTicket)).
		obs(observe.Answer, flowA, 0.5, flags(observe.AfterTicket))
	h.obs(observe.ExchangeStart, flowB, 1).obs(observe.Answer, flowB, 1.001, flags(observe.MaybeTicket)).
		sweep(5).sweep(11)
	h.wantKinds("stall:unacked")
	// A server whose ticket came with its handshake: the flagged answer is
	// the answer, once no second one follows.
	h2 := newHarness(t, nil)
	h2.obs(observe.ExchangeStart, flowA, 0).obs(observe.Answer, flowA, 0.002, flags(observe.MaybeTicket)).sweep(1.5).sweep(20)
	h2.wantKinds("")
	// ... and when the client closes before the wait is over.
	h2.obs(observe.ExchangeStart, flowB, 30).obs(observe.Answer, flowB, 30.003, flags(observe.MaybeTicket)).
		obs(observe.FIN, flowB, 30.1, fromClient).sweep(32)
	h2.wantKinds("close:client")
	if e := h2.events[0]; e.Field("open_exchange") != false {
		t.Errorf("close with the answered exchange still open: %+v", e)
	}
	n, sum := sum(h2.m.gaps[[3]string{srvA.String(), ClientUnknown, "request"}])
	if n != 2 || sum > 0.0051 {
		t.Errorf("gap: %d, %v; want 2 ms and 3 ms", n, sum)
	}
}

// An answer taken after the ticket wait, then a second answer to the same
// request: the first was a ticket. The server is learnt, and its next
// fresh connection's stall is not missed.
func TestLateTicketLearntAfterTheWait(t *testing.T) {
	h := newHarness(t, nil)
	h.obs(observe.ExchangeStart, flowA, 0).obs(observe.Answer, flowA, 0.001, flags(observe.MaybeTicket)).
		sweep(1.5).obs(observe.Answer, flowA, 5, flags(observe.AfterTicket))
	h.obs(observe.ExchangeStart, flowB, 10).obs(observe.Answer, flowB, 10.001, flags(observe.MaybeTicket)).sweep(20.5)
	h.wantKinds("stall:unacked")
}

func TestConnectionsOwnersAndBounds(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.MaxServers = 1 })
	h.obs(observe.State, flowA, 0, fromClient, state(observe.TCPSynSent, observe.TCPEstablished), owner(4121, "scanapp"))
	h.wantMetric("connections", 1, srvA.String(), "scanapp", "established")
	h.obs(observe.ExchangeStart, flowA, 1).sweep(11)
	if e := h.events[0]; e.PID != 4121 || e.Client != "scanapp" {
		t.Errorf("stall event owner: %+v", e)
	}
	// The server end's states do not replace the client end's.
	h.obs(observe.State, flowA, 12, fromServer, state(observe.TCPEstablished, observe.TCPCloseWait))
	h.wantMetric("connections", 1, srvA.String(), "scanapp", "established")
	h.obs(observe.State, flowA, 13, fromClient, state(observe.TCPEstablished, observe.TCPClose))
	h.wantMetric("connections", 0, srvA.String(), "scanapp", "established")
	h.wantKinds("stall:unacked stall_end:unacked:client_closed")
	// One server label allowed: another server is "other".
	h.obs(observe.ExchangeStart, flowA2, 20).obs(observe.Answer, flowA2, 20.1)
	if n, _ := sum(h.m.gaps[[3]string{ServerOther, ClientUnknown, "request"}]); n != 1 {
		t.Errorf("second server not counted as other")
	}
	h.sweep(30)
	h.wantMetric("flows_tracked", 1)
	// The overflow label's oldest open exchange returns to zero too.
	h.obs(observe.ExchangeStart, flowA2, 31).sweep(33)
	h.wantMetric("oldest_open_exchange_seconds", 2, ServerOther)
	h.obs(observe.Answer, flowA2, 34).sweep(35)
	h.wantMetric("oldest_open_exchange_seconds", 0, ServerOther)
}

func TestPoolAboveServerLimitAndCanary(t *testing.T) {
	h := newHarness(t, nil)
	h.c.Observe(observe.Observation{Kind: observe.CanaryConn, Source: observe.SourceCanary, Flow: flowC})
	for i, f := range []observe.Flow{flowA, flowB, flowC} {
		h.obs(observe.State, f, float64(i), fromClient, state(observe.TCPSynSent, observe.TCPEstablished))
	}
	h.c.Observe(observe.Observation{Kind: observe.ServerOptions, Source: observe.SourceCanary, Time: at(5),
		Flow: flowC, MaxConnections: 2})
	h.wantKinds(string(KindPoolAboveLimit))
	if h.events[0].Field("connections") != 3 || h.events[0].Client != ClientCanary {
		t.Errorf("pool event: %+v", h.events[0])
	}
	h.wantMetric("pool_above_server_limit", 1, srvA.String())
	h.wantMetric("connections", 1, srvA.String(), ClientCanary, "established")
	// The kernel's answer first, then the canary's; then the other way.
	h.obs(observe.ExchangeStart, flowC, 6).obs(observe.Answer, flowC, 6.010)
	h.c.Observe(observe.Observation{Kind: observe.CanaryAnswer, Source: observe.SourceCanary, Flow: flowC,
		Time: at(6.0103), Gap: 10*time.Millisecond + 300*time.Microsecond})
	h.obs(observe.ExchangeStart, flowC, 7)
	h.c.Observe(observe.Observation{Kind: observe.CanaryAnswer, Source: observe.SourceCanary, Flow: flowC,
		Time: at(7.0203), Gap: 20*time.Millisecond + 300*time.Microsecond})
	h.obs(observe.Answer, flowC, 7.020)
	if n, sum := sum(h.m.skews[srvA.String()]); n != 2 || sum < 0.00059 || sum > 0.00061 {
		t.Errorf("skew: %d observations, sum %v; want 2, 0.0006", n, sum)
	}
	// A connection closes: the next sweep sees the pool within the limit.
	h.obs(observe.FIN, flowA, 8, fromClient).sweep(8.5)
	h.wantMetric("pool_above_server_limit", 0, srvA.String())
}

func TestConfigValidateNamesFlag(t *testing.T) {
	cfg := DefaultConfig()
	cfg.RaceWindow = 0
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "--race-window") {
		t.Errorf("got %v", err)
	}
	cfg = DefaultConfig()
	cfg.MaxServers = 0
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "--max-servers") {
		t.Errorf("got %v", err)
	}
}

// TestEvictsTheQuietest: at max-flows the flow observed least recently
// goes, whatever order the flows came in.
func TestEvictsTheQuietest(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.MaxFlows = 2 })
	h.obs(observe.ExchangeStart, flowA, 0).obs(observe.ExchangeStart, flowB, 1).
		obs(observe.Acked, flowA, 2). // A is the loud one now
		obs(observe.ExchangeStart, flowC, 3)
	open := func() string {
		var s []string
		for _, ex := range h.c.OpenExchanges(at(4)) {
			s = append(s, ex.ClientAddr)
		}
		slices.Sort(s)
		return strings.Join(s, " ")
	}
	if got, want := open(), flowA.Client.String()+" "+flowC.Client.String(); got != want {
		t.Errorf("open after C came: %s, want %s (B evicted)", got, want)
	}
	// Evicted and dropped flows leave the order whole.
	h.obs(observe.ExchangeStart, flowB, 5)
	if got, want := open(), flowB.Client.String()+" "+flowC.Client.String(); got != want {
		t.Errorf("open after B came back: %s, want %s (A evicted)", got, want)
	}
	if got := h.metric("flow_evictions"); got != 2 {
		t.Errorf("evictions: %v, want 2", got)
	}
}

// Advance sweeps at the moment an exchange crosses the stall threshold,
// between its periodic sweeps, and an exchange answered before then
// leaves nothing due.
func TestAdvanceStallsAtTheThreshold(t *testing.T) {
	h := newHarness(t, nil)
	h.c.Advance(at(0))
	h.obs(observe.ExchangeStart, flowA, 0.3).obs(observe.ExchangeStart, flowB, 0.5).obs(observe.Answer, flowB, 0.6)
	if got := h.c.NextSweep(); !got.Equal(at(1)) {
		t.Errorf("next sweep %v, want the periodic one at 1 s", got)
	}
	h.c.Advance(at(10.2))
	if got, want := h.c.NextSweep(), at(10.3); !got.Equal(want) {
		t.Errorf("next sweep %v, want %v: when A crosses the threshold", got, want)
	}
	h.c.Advance(at(10.35))
	h.wantKinds("stall:unacked")
	if e := h.events[0]; !e.Time.Equal(at(10.3)) || e.Field("age_seconds") != 10.0 {
		t.Errorf("stall at %v, age %v: want it found at 10.3 s, 10 s old", e.Time, e.Field("age_seconds"))
	}
	if !h.c.NextStall().IsZero() {
		t.Errorf("a stall is still due at %v", h.c.NextStall())
	}
	// A day of quiet: the periodic sweeps jump, stalls are still on time.
	h.obs(observe.ExchangeStart, flowC, 11)
	h.c.Advance(at(11 + 48*3600))
	if n := len(h.events); n != 2 || !h.events[1].Time.Equal(at(21)) {
		t.Errorf("after a quiet day: %d events, the last at %v; want C's stall at 21 s", n, h.events[n-1].Time)
	}
}

// The client of a flow is the process that owns its client end: on
// loopback the server's process owns the other end, and says so first.
func TestOwnerIsTheClientEnd(t *testing.T) {
	h := newHarness(t, nil)
	h.obs(observe.State, flowA, 0, fromServer, state(0, observe.TCPEstablished), owner(9, "c-icap"))
	h.obs(observe.State, flowA, 0.1, fromClient, state(0, observe.TCPEstablished), owner(7, "squid"))
	h.obs(observe.ExchangeStart, flowA, 1).sweep(11)
	if e := h.events[0]; e.Client != "squid" || e.PID != 7 {
		t.Errorf("stall of %s (pid %d), want squid (pid 7)", e.Client, e.PID)
	}
	h.wantMetric("connections", 1, srvA.String(), "squid", "established")
}
