// Package correlate turns observations from any source into icapwatch's
// diagnosis: exchanges and their gaps, stalls with where they are stuck
// and how they end, idle-close races, releases, TLS alerts and closes.
//
// It is pure Go and does no I/O: it keeps no clock of its own
// (observations carry their time, Advance and Sweep are given "now"), so
// recorded and synthetic streams replay exactly, and it needs no
// Prometheus: measurements go to a Meter, state is read by State, and
// events are typed values. It imports only agent/observe and the standard
// library (and internal/humanize for its summaries); the live agent and
// the offline analysis both drive it.
package correlate

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/icapwatch/icapwatch/agent/observe"
)

// Stall states, race kinds, outcomes: the contract's label values.
const (
	StateUnacked     = "unacked"
	StateAckedSilent = "acked_silent"
	StateUnread      = "unread"

	RaceReuseAfterClose  = "reuse_after_server_close"
	RaceCrossedClose     = "crossed_close"
	RaceCloseDuringReqst = "server_close_during_request"

	OutcomeAnswered     = "answered"
	OutcomeServerClosed = "server_closed"
	OutcomeReset        = "reset"
	OutcomeClientClosed = "client_closed"
	OutcomeEvicted      = "evicted"

	// ReleaseCause labels icapwatch_stall_releases_total.
	ReleaseCause = "sibling_close"

	ClientUnknown = "unknown"
	ClientCanary  = "icapwatch"
	ServerOther   = "other"
)

// Config holds the correlator's thresholds and bounds.
type Config struct {
	StallThreshold    time.Duration // an exchange open this long is a stall
	RaceWindow        time.Duration // a close this soon after a request crossed it
	ReleaseWindow     time.Duration // an answer this soon after a sibling's close was released by it
	ServerIdleTimeout time.Duration // until the canary observes the server's own
	// TicketWait is how long an answer that may be a TLS 1.3 session
	// ticket waits for a later answer before it counts.
	TicketWait time.Duration
	MaxFlows   int
	MaxServers int
	// SweepInterval is how often Advance sweeps on the source's clock.
	SweepInterval time.Duration
	// MaxCatchUp: when Advance is given a time further than this past its
	// last sweep, the periodic sweeps in between are skipped (a capture's
	// day of quiet, a host's suspend); due stalls are still found at their
	// time.
	MaxCatchUp time.Duration
}

// DefaultConfig returns DESIGN.md's defaults.
func DefaultConfig() Config {
	return Config{
		StallThreshold:    10 * time.Second,
		RaceWindow:        time.Second,
		ReleaseWindow:     2 * time.Second,
		ServerIdleTimeout: 5 * time.Minute,
		TicketWait:        time.Second,
		MaxFlows:          100000,
		MaxServers:        64,
		SweepInterval:     time.Second,
		MaxCatchUp:        24 * time.Hour,
	}
}

// Validate names the flag whose value is wrong.
func (c Config) Validate() error {
	for _, d := range []struct {
		flag string
		v    time.Duration
	}{{"stall-threshold", c.StallThreshold}, {"race-window", c.RaceWindow},
		{"release-window", c.ReleaseWindow}, {"server-idle-timeout", c.ServerIdleTimeout}} {
		if d.v <= 0 {
			return fmt.Errorf("--%s: must be positive, got %v", d.flag, d.v)
		}
	}
	if c.TicketWait <= 0 {
		return errors.New("ticket wait must be positive")
	}
	if c.SweepInterval <= 0 || c.MaxCatchUp <= 0 {
		return errors.New("sweep interval and catch-up must be positive")
	}
	if c.MaxFlows < 1 {
		return fmt.Errorf("--max-flows: must be at least 1, got %d", c.MaxFlows)
	}
	if c.MaxServers < 1 {
		return fmt.Errorf("--max-servers: must be at least 1, got %d", c.MaxServers)
	}
	return nil
}

// closeRecord is a connection's close (its first alert or FIN from
// either side), kept a while for release matching.
type closeRecord struct {
	client netip.AddrPort
	by     string // client or server: who closed first
	at     instant
}

// answerRecord is a stalled exchange's answer, kept a while: the close
// that released it may be reported after it (the kernel holds a TLS 1.3
// close_notify until its FIN).
type answerRecord struct {
	flow     *flow
	at       instant
	start    instant
	phase    observe.Phase
	released bool
}

type server struct {
	label       string
	closes      [8]closeRecord  // the latest closes, a ring
	answers     [8]answerRecord // the latest stalled answers, a ring
	nextClose   int
	nextAnswer  int
	open        int  // connections this host holds: flows not closed
	lateTickets bool // sends TLS 1.3 tickets after the client's Finished
	maxConns    int
	idleTimeout time.Duration
	aboveLimit  bool // said once each time it happens
}

type exchange struct {
	flow        *flow
	state       string
	start       instant
	ackedAt     instant
	tentative   instant // a MaybeTicket answer waiting to be confirmed
	idleAge     time.Duration
	due         int    // position in the correlator's stall heap, plus one; 0: not in it
	retransmits uint32 // request segments sent again while it is open
	phase       observe.Phase
	reused      bool
	stalled     bool
	raced       bool
}

// A flow is what the correlator holds of each connection, up to
// --max-flows of them, so it is kept small: its times are instants, its
// yes/no facts bits, and its fields are in order of size, which leaves no
// padding (256 bytes, a size class of the allocator).
type flow struct {
	key    observe.Flow
	srv    *server
	client string    // label
	meter  FlowMeter // for this flow's labels
	ex     *exchange
	unread *exchange // an unread stall, while it lasts
	// prev, next: the flows' order by their last observation, in the
	// ring of idle flows or in that of busy ones (flagBusy).
	prev, next *flow
	closeHow   string // fin or rst
	lastGap    time.Duration
	canaryGap  time.Duration // the canary's gap, with canaryAt

	lastSeen      instant
	lastData      instant
	serverCloseAt instant    // first server alert or FIN
	closeAt       [2]instant // first alert, FIN or RST by side: client, server
	answeredAt    instant
	readAt        instant // the application last read (or was seen to have nothing to read)
	unreadSince   instant
	canaryAt      instant // the canary's answer, waiting for the kernel's (zero: none)
	// endedAt: the shown end reached CLOSE. The flow stays a little so
	// that the other end's last packets do not make it anew.
	endedAt instant

	pid   uint32
	flags flowFlags
	// The TCP state shown for the connection (flagHaveState): which end's,
	// and the state.
	stateDir observe.Direction
	tcpState observe.TCPState
}

// flowFlags are a flow's yes/no facts.
type flowFlags uint16

const (
	flagCloseOpen     flowFlags = 1 << iota // an exchange was open at the first close
	flagServerFIN                           // the server's FIN was seen, or its end is in CLOSE_WAIT
	flagClosed                              // a FIN or RST was seen
	flagCloseReported                       // the close event is out: initiator decided
	flagTicketTaken                         // a possible ticket was taken as the answer after the wait
	flagFinClient                           // a FIN or RST seen from the client
	flagFinServer                           // a FIN or RST seen from the server: flagFinClient<<1
	flagHaveState                           // a TCP state is shown
	flagUnacked                             // request bytes the server has not ACKed, as sock_diag last read
	// flagSeeded: the connection was closing when the correlator first
	// saw it. Its close began unseen: it is neither counted nor reported,
	// and the FINs its first state implied (flagFinClient, flagFinServer)
	// are not closes of now.
	flagSeeded
	flagBusy       // in the ring of busy flows
	flagServerRST  // the server's first FIN or RST was a reset
	flagReuseRaced // a reuse_after_server_close race was reported: once per flow
)

// is says whether every flag of fl is set.
func (f *flow) is(fl flowFlags) bool { return f.flags&fl == fl }

// set sets or clears the flags of fl.
func (f *flow) set(fl flowFlags, on bool) {
	if on {
		f.flags |= fl
	} else {
		f.flags &^= fl
	}
}

// canaryMatch: the canary's and the kernel's view of one answer are this
// close in time (the clocks differ by the stack's latency only).
const canaryMatch = time.Second

// Flows leave the table this long after they end or close.
const (
	endedLinger = 5 * time.Second
	closedIdle  = time.Minute
)

// buriedLinger is how long a closed flow that left the table is
// remembered, so that the late signals of its connection do not make it
// anew and close it again: the other end's last packets, the state
// tracepoint, and sock_diag, which shows a TIME_WAIT socket for a minute
// (TCP_TIMEWAIT_LEN, include/net/tcp.h) and tells its queues once a
// minute, at one of its polls.
const buriedLinger = 70 * time.Second

// minBuried: a quarter of --max-flows closed flows are remembered, and
// at least this many; then the oldest is forgotten. A late signal of a
// forgotten one makes a flow seeded closed (see find), not a second close.
const minBuried = 1024

// Meter takes the measurements that are not events as they happen: the
// agent's Prometheus histograms and counters. Events carry the rest, and
// State the gauges.
type Meter interface {
	// Flow is the meter of one flow's labels; the flow keeps it until its
	// client label changes.
	Flow(server, client string) FlowMeter
	Observed(observe.Source)
	Retransmits(server string, n uint32)
	Skew(server string, d time.Duration) // the canary's gap minus the kernel's
	// FlowEvicted counts a flow evicted at max-flows; FlowEvictedOpen
	// also counts it when it was busy: an exchange open or an answer
	// waiting unread, which the agent stops following.
	FlowEvicted()
	FlowEvictedOpen()
}

// FlowMeter measures one flow's exchanges.
type FlowMeter interface {
	Gap(observe.Phase, time.Duration)
	IdleAge(time.Duration) // a request written after the connection was quiet this long
}

type noMeter struct{}

func (noMeter) Flow(string, string) FlowMeter    { return noMeter{} }
func (noMeter) Observed(observe.Source)          {}
func (noMeter) Retransmits(string, uint32)       {}
func (noMeter) Skew(string, time.Duration)       {}
func (noMeter) FlowEvicted()                     {}
func (noMeter) FlowEvictedOpen()                 {}
func (noMeter) Gap(observe.Phase, time.Duration) {}
func (noMeter) IdleAge(time.Duration)            {}

// Gap is one answered exchange.
type Gap struct {
	Server, Phase string
	Client        netip.AddrPort
	Gap           time.Duration
	At            time.Time // the answer
}

// Correlator is not safe for concurrent use: one goroutine feeds it.
type Correlator struct {
	// OnGap, when set, is told of every answered exchange (the offline
	// report's percentiles).
	OnGap func(Gap)

	cfg     Config
	m       Meter
	emit    func(Event)
	flows   map[observe.Flow]*flow
	servers map[netip.AddrPort]*server
	other   *server
	canary  map[netip.AddrPort]bool // local addresses of the canary's connections
	// idle and busy head two rings of the flows, least recently observed
	// first: those with an exchange open or an answer waiting unread are
	// busy, the others idle. At max-flows the quietest idle flow is
	// evicted, found without walking the table; a busy one only when no
	// flow is idle, so that the stalls this agent is for are the last
	// lost.
	idle, busy flow
	// buried remembers closed flows that left the table a moment ago, by
	// their place in graves, a ring that bounds them.
	buried map[observe.Flow]int32
	graves []grave
	grave  int // the next place in graves
	// pooled remembers the connections the server closed while they sat
	// idle, by their place in dead, a ring that bounds them: an
	// application that writes on one later, perhaps minutes later, races
	// the server's close though nothing reaches the wire.
	pooled   map[observe.Flow]int32
	dead     []deadFlow
	nextDead int // the next place in dead
	// due is a min-heap of the open exchanges not stalled yet, by start:
	// the next to cross the stall threshold is due[0]. Each entry holds
	// its start, so that the heap's comparisons stay in the slice.
	due []dueEntry
	// nextTick is Advance's next periodic sweep (zero before the first call).
	nextTick instant
	// loc is the location of the times last given (observations, Advance,
	// Sweep): the times of events and gaps are in it.
	loc *time.Location
	// The hot path reuses exchanges and flow meters: no allocation and no
	// label lookup per observation in the steady state.
	spare []*exchange
}

// New returns a correlator that measures into m (nil: nothing) and hands
// each event to emit.
func New(cfg Config, m Meter, emit func(Event)) (*Correlator, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if emit == nil {
		emit = func(Event) {}
	}
	if m == nil {
		m = noMeter{}
	}
	c := &Correlator{cfg: cfg, m: m, emit: emit, flows: map[observe.Flow]*flow{},
		servers: map[netip.AddrPort]*server{}, other: &server{label: ServerOther},
		canary: map[netip.AddrPort]bool{}, loc: time.Local, buried: map[observe.Flow]int32{},
		pooled: map[observe.Flow]int32{}}
	c.idle.prev, c.idle.next = &c.idle, &c.idle
	c.busy.prev, c.busy.next = &c.busy, &c.busy
	c.busy.flags = flagBusy
	return c, nil
}

func (c *Correlator) server(addr netip.AddrPort) *server {
	if s, ok := c.servers[addr]; ok {
		return s
	}
	if len(c.servers) >= c.cfg.MaxServers {
		return c.other
	}
	s := &server{label: addr.String()}
	c.servers[addr] = s
	return s
}

// lookup finds or makes the flow.
func (c *Correlator) lookup(key observe.Flow, now instant) *flow {
	if f, ok := c.flows[key]; ok {
		return f
	}
	return c.newFlow(key, now)
}

// newFlow makes a flow, evicting one at the limit: the quietest idle
// flow, or the quietest busy one when none is idle.
func (c *Correlator) newFlow(key observe.Flow, now instant) *flow {
	if len(c.flows) >= c.cfg.MaxFlows {
		victim := c.idle.next
		if victim == &c.idle {
			victim = c.busy.next
		}
		if victim.busy() {
			c.m.FlowEvictedOpen()
		}
		c.drop(victim, now)
		c.m.FlowEvicted()
	}
	f := &flow{key: key, srv: c.server(key.Server), client: ClientUnknown, lastSeen: now}
	if c.canary[key.Client] {
		f.client = ClientCanary
	}
	f.meter = c.m.Flow(f.srv.label, f.client)
	f.srv.open++
	c.flows[key] = f
	c.touch(f)
	return f
}

// busy: an exchange is open on the flow, or an answer waits unread in
// its socket: what evicting it would lose.
func (f *flow) busy() bool { return f.ex != nil || !f.unreadSince.IsZero() }

// touch moves f to the loud end of the ring it belongs in now.
func (c *Correlator) touch(f *flow) {
	if f.next != nil {
		f.prev.next, f.next.prev = f.next, f.prev
	}
	head := &c.idle
	if f.busy() {
		head = &c.busy
	}
	f.set(flagBusy, head == &c.busy)
	last := head.prev
	f.prev, f.next = last, head
	last.next, head.prev = f, f
}

// refile moves f to the other ring when it became busy or idle other
// than by an observation of its own (a sweep).
func (c *Correlator) refile(f *flow) {
	if f.is(flagBusy) != f.busy() {
		c.touch(f)
	}
}

// grave is a closed flow that left the table, and when.
type grave struct {
	key observe.Flow
	at  instant
}

// bury remembers a closed flow that leaves the table; the ring's oldest
// is forgotten when it is full.
func (c *Correlator) bury(key observe.Flow, now instant) {
	if i, ok := c.buried[key]; ok {
		c.graves[i].at = now
		return
	}
	i := c.grave
	if i < len(c.graves) {
		if old := c.graves[i].key; c.buried[old] == int32(i) {
			delete(c.buried, old)
		}
		c.graves[i] = grave{key, now}
	} else {
		c.graves = append(c.graves, grave{key, now})
	}
	c.buried[key] = int32(i)
	if c.grave = i + 1; c.grave == max(c.cfg.MaxFlows/4, minBuried) {
		c.grave = 0
	}
}

// isBuried says whether key is a closed flow that left the table less
// than buriedLinger before now, or that sock_diag told of since.
func (c *Correlator) isBuried(key observe.Flow, now instant) bool {
	i, ok := c.buried[key]
	if !ok {
		return false
	}
	if now.Sub(c.graves[i].at) >= buriedLinger {
		delete(c.buried, key)
		return false
	}
	return true
}

// stillThere: sock_diag tells of a buried flow's socket, which lingers
// closing (in CLOSE_WAIT until its application closes it, in TIME_WAIT):
// the flow is remembered as long. sock_diag tells an idle socket's queues
// once a minute; a closed flow, dropped after a minute's quiet, would
// come back with them, and the socket's last change would close it again.
func (c *Correlator) stillThere(key observe.Flow, now instant) {
	if g := &c.graves[c.buried[key]]; now.After(g.at) {
		g.at = now
	}
}

// closing says whether a TCP state is one of a connection's close.
func closing(s observe.TCPState) bool {
	switch s {
	case observe.TCPFinWait1, observe.TCPFinWait2, observe.TCPTimeWait, observe.TCPCloseWait,
		observe.TCPLastAck, observe.TCPClosing, observe.TCPClose:
		return true
	}
	return false
}

// finsOf are the FINs that one end's state says were sent: its own
// (FIN_WAIT, TIME_WAIT, CLOSING, LAST_ACK) and its peer's (CLOSE_WAIT,
// LAST_ACK, TIME_WAIT, CLOSING). dir is the end's, as State gives it:
// ToServer for the client end.
func finsOf(dir observe.Direction, s observe.TCPState) flowFlags {
	own, peer := flagFinClient<<(dir&1), flagFinClient<<(1-dir&1)
	switch s {
	case observe.TCPFinWait1, observe.TCPFinWait2:
		return own
	case observe.TCPTimeWait, observe.TCPClosing, observe.TCPLastAck:
		return own | peer
	case observe.TCPCloseWait:
		return peer
	}
	return 0
}

// opens says whether an observation is of a connection that begins: a
// new connection on the addresses of a closed flow makes it anew.
func opens(o *observe.Observation) bool {
	switch o.Kind {
	case observe.State:
		switch o.NewState {
		case observe.TCPSynSent, observe.TCPSynRecv, observe.TCPNewSynRecv, observe.TCPEstablished:
			return true
		}
	case observe.ExchangeStart:
		return o.Phase == observe.PhaseHandshake
	case observe.CanaryConn:
		return true
	}
	return false
}

// closes says whether an observation is of a connection's close: a
// FIN, a reset, a TLS alert (a close_notify begins a close), or a
// closing state.
func closes(o *observe.Observation) bool {
	switch o.Kind {
	case observe.FIN, observe.RST, observe.TLSAlert:
		return true
	case observe.State:
		return closing(o.NewState)
	}
	return false
}

// find is the flow an observation is of, made when it is new; nil when
// the observation makes none: a late signal of a closed flow that left
// the table, or a socket gone that was never followed. A live source's
// flow whose first signal is its close was closing before the correlator
// saw it: sock_diag found it so at the start, or the flow was dropped
// and this is its connection's late signal; it is seeded closed, and its
// close is not counted. A capture's flow is not: a capture sees what
// happens from its start, and a connection that was idle then shows
// first with its close.
func (c *Correlator) find(o *observe.Observation, now instant) *flow {
	if f, ok := c.flows[o.Flow]; ok {
		return f
	}
	if o.Kind == observe.State && o.NewState == observe.TCPClose {
		return nil
	}
	if opens(o) {
		c.forgetDead(o.Flow) // a new connection on the addresses
	}
	if c.isBuried(o.Flow, now) {
		if !opens(o) {
			if o.Source == observe.SourceSockDiag {
				c.stillThere(o.Flow, now)
			}
			return nil
		}
		delete(c.buried, o.Flow)
	}
	f := c.newFlow(o.Flow, now)
	if o.Source != observe.SourceCapture && closes(o) {
		f.set(flagClosed|flagCloseReported|flagSeeded, true)
		f.srv.open--
		if o.Kind == observe.State && o.OldState == 0 {
			// sock_diag's first sight: the FINs its state implies were
			// sent before; a state change (the tracepoint) is of now.
			f.flags |= finsOf(o.Dir, o.NewState)
		}
	}
	return f
}

func firstOf(t [2]instant) instant {
	if t[0].IsZero() || !t[1].IsZero() && t[1].Before(t[0]) {
		return t[1]
	}
	return t[0]
}

// drop forgets a flow; what is still open on it ends as evicted: the
// agent no longer follows it.
func (c *Correlator) drop(f *flow, now instant) {
	if f.is(flagClosed) {
		c.reportClose(f)
	}
	if f.ex != nil {
		c.finish(f, now, OutcomeEvicted)
	}
	c.endUnread(f, now, OutcomeEvicted)
	if !f.is(flagClosed) {
		f.srv.open--
	}
	if f.is(flagClosed) || f.is(flagHaveState) && closing(f.tcpState) {
		c.bury(f.key, now)
	}
	if d, ok := c.deadOf(f); ok {
		c.rememberDead(d)
	}
	delete(c.flows, f.key)
	delete(c.canary, f.key.Client)
	f.prev.next, f.next.prev = f.next, f.prev
	f.prev, f.next = nil, nil
}

// instant converts a time given to the correlator and keeps its
// location, in which the correlator gives its times back.
func (c *Correlator) instant(t time.Time) instant {
	if loc := t.Location(); loc != c.loc && !t.IsZero() {
		c.loc = loc
	}
	return instantOf(t)
}

// Observe takes one observation.
func (c *Correlator) Observe(o observe.Observation) {
	c.m.Observed(o.Source)
	now := c.instant(o.Time)
	switch o.Kind {
	case observe.CanaryConn:
		// The flow is made now, so that the mark leaves with it even when
		// the kernel never shows the connection (a failed handshake).
		c.canary[o.Flow.Client] = true
		delete(c.buried, o.Flow) // a new connection
		c.forgetDead(o.Flow)
		c.relabel(c.lookup(o.Flow, now), ClientCanary)
		return
	case observe.ServerOptions:
		s := c.server(o.Flow.Server)
		s.maxConns = o.MaxConnections
		c.checkPool(s, o)
		return
	case observe.ServerIdle:
		s := c.server(o.Flow.Server)
		s.idleTimeout = o.IdleTimeout
		return
	case observe.AppWriteFailed:
		// Of a connection that is gone: it makes no flow.
		c.writeFailed(o, now)
		return
	case observe.CanaryAnswer:
		// The canary and the kernel report the same answer in either order;
		// the canary's often comes first, before the kernel has shown the flow.
		f := c.find(&o, now)
		if f == nil {
			return
		}
		if f.lastGap > 0 && now.Sub(f.answeredAt).Abs() <= canaryMatch {
			c.m.Skew(f.srv.label, o.Gap-f.lastGap)
		} else {
			f.canaryAt, f.canaryGap = now, o.Gap
		}
		return
	}

	f := c.find(&o, now)
	if f == nil {
		return
	}
	f.lastSeen = now
	switch o.Kind {
	case observe.ExchangeStart:
		c.start(f, o, now)
	case observe.Acked:
		if f.ex != nil && f.ex.ackedAt.IsZero() {
			f.ex.ackedAt = now
		}
	case observe.Answer:
		c.answer(f, o, now)
	case observe.TLSAlert:
		c.alert(f, o, now)
	case observe.FIN, observe.RST:
		c.close(f, o, now)
	case observe.Retransmit:
		n := max(o.Retrans, 1)
		c.m.Retransmits(f.srv.label, n)
		if f.ex != nil && o.Dir == observe.ToServer {
			f.ex.retransmits += n
		}
	case observe.State:
		if f.is(flagSeeded) && o.OldState == 0 {
			// sock_diag's first sight of the flow's other end (loopback):
			// the FINs its state implies came before the flow was seen.
			f.flags |= finsOf(o.Dir, o.NewState)
		}
		c.state(f, o, now)
	case observe.AppRead:
		c.read(f, now)
	case observe.SocketInfo:
		if o.Dir != observe.ToServer {
			// The server end's queues (the host is both ends on loopback)
			// say nothing of the client's request or its reading.
			break
		}
		f.set(flagUnacked, o.Unacked != 0)
		if o.RQueue == 0 {
			c.read(f, now)
		} else if f.ex == nil && f.unreadSince.IsZero() {
			// Waiting since the answer, or since the last read of a part of it.
			f.unreadSince = f.answeredAt
			if f.readAt.After(f.unreadSince) {
				f.unreadSince = f.readAt
			}
			if f.unreadSince.IsZero() { // answered before we knew the flow
				f.unreadSince = now
			}
		}
	}
	c.touch(f) // after the observation: it may have made the flow busy or idle
}

func (c *Correlator) start(f *flow, o observe.Observation, now instant) {
	if f.ex != nil {
		// The client speaks again: an answer held as a possible ticket was
		// the answer after all. Without one, the answer was not seen (a
		// lost event): the exchange's end is unknown.
		if !f.ex.tentative.IsZero() {
			c.finish(f, f.ex.tentative, OutcomeAnswered)
		} else {
			c.finish(f, now, OutcomeEvicted)
		}
	}
	c.read(f, now)
	ex := c.newExchange()
	ex.start, ex.phase, ex.flow = now, o.Phase, f
	prev := instantOf(o.Ref)
	if prev.IsZero() {
		prev = f.lastData
	}
	if !prev.IsZero() {
		ex.idleAge, ex.reused = now.Sub(prev), true
		f.meter.IdleAge(ex.idleAge)
	}
	f.lastData = now
	f.ex = ex
	c.pushDue(ex)
	if f.is(flagServerFIN) {
		c.race(f, ex, RaceReuseAfterClose, now, f.serverCloseAt.Sub(now))
	}
}

func (c *Correlator) answer(f *flow, o observe.Observation, now instant) {
	f.lastData = now
	ex := f.ex
	if ex == nil {
		if o.Flags&observe.AfterTicket != 0 && f.is(flagTicketTaken) {
			// The answer taken after the ticket wait was a ticket: this
			// server sends them late; its next fresh connections wait.
			f.srv.lateTickets = true
		}
		return
	}
	switch {
	case o.Flags&observe.MaybeTicket != 0:
		if !f.srv.lateTickets {
			ex.tentative = now
		}
		return
	case o.Flags&observe.AfterTicket != 0 && !ex.tentative.IsZero():
		// A second answer to the same request: the first was a ticket.
		f.srv.lateTickets = true
	}
	c.finish(f, now, OutcomeAnswered)
}

// finish ends the open exchange at the given time.
func (c *Correlator) finish(f *flow, at instant, outcome string) {
	ex := f.ex
	f.ex = nil
	c.removeDue(ex)
	defer c.recycle(ex)
	if outcome == OutcomeAnswered {
		gap := at.Sub(ex.start)
		f.lastGap, f.answeredAt = gap, at
		f.meter.Gap(ex.phase, gap)
		if c.OnGap != nil {
			c.OnGap(Gap{Server: f.srv.label, Client: f.key.Client, Phase: ex.phase.String(), Gap: gap, At: at.Time(c.loc)})
		}
		if !f.canaryAt.IsZero() && f.canaryAt.Sub(at).Abs() <= canaryMatch {
			c.m.Skew(f.srv.label, f.canaryGap-gap)
		}
		f.canaryAt = 0
	}
	if !ex.stalled {
		return
	}
	c.endStall(f, ex, at, outcome)
	if outcome != OutcomeAnswered {
		return
	}
	// Released: answered right after another connection to the server
	// closed. The close may be reported later: keep the answer a while.
	rec := answerRecord{at: at, flow: f, start: ex.start, phase: ex.phase}
	for _, r := range f.srv.closes {
		if c.releases(r, &rec) {
			break
		}
	}
	f.srv.answers[f.srv.nextAnswer] = rec
	f.srv.nextAnswer = (f.srv.nextAnswer + 1) % len(f.srv.answers)
}

// releases reports a release when the server closed another connection
// (r) within the release window before the stalled answer a: closing it
// freed the worker that answered.
func (c *Correlator) releases(r closeRecord, a *answerRecord) bool {
	if a.released || r.at.IsZero() || a.at.IsZero() || r.by != "server" || r.client == a.flow.key.Client ||
		r.at.After(a.at) || a.at.Sub(r.at) > c.cfg.ReleaseWindow {
		return false
	}
	a.released = true
	c.event(a.flow, a.at, &Release{Phase: a.phase, Sibling: r.client, SiblingClosedBy: r.by,
		AfterClose: a.at.Sub(r.at), Stalled: a.at.Sub(a.start)})
	return true
}

func (c *Correlator) endStall(f *flow, ex *exchange, at instant, outcome string) {
	c.event(f, at, &StallEnd{State: ex.state, Phase: ex.phase, Outcome: outcome, Duration: at.Sub(ex.start)})
	if f.unread == ex {
		f.unread = nil
	}
}

func (c *Correlator) alert(f *flow, o observe.Observation, now instant) {
	// A probable TLS 1.3 close_notify comes with the FIN or reset that
	// proved it; its record, in Ref, is when that side began to close.
	if o.Flags&observe.Probable != 0 && !o.Ref.IsZero() {
		now = instantOf(o.Ref)
	}
	dir, version := "client", "1.2"
	if o.Dir == observe.ToClient {
		dir = "server"
		if f.serverCloseAt.IsZero() || now.Before(f.serverCloseAt) {
			f.serverCloseAt = now
		}
	}
	// An alert starts a close (close_notify), or ends the connection.
	c.noteClose(f, o.Dir, now)
	if o.Flags&observe.Probable != 0 {
		version = "1.3?"
	}
	c.event(f, now, &TLSAlert{Direction: dir, TLSVersion: version})
}

// settle takes an answer held as a possible ticket as the answer: nothing
// more can come on the flow.
func (c *Correlator) settle(f *flow) {
	if f.ex != nil && !f.ex.tentative.IsZero() {
		c.finish(f, f.ex.tentative, OutcomeAnswered)
	}
}

func (c *Correlator) close(f *flow, o observe.Observation, now instant) {
	c.settle(f)
	how, side := "fin", "client"
	if o.Kind == observe.RST {
		how = "rst"
	}
	if o.Dir == observe.ToClient {
		side = "server"
		if f.serverCloseAt.IsZero() {
			f.serverCloseAt = now
		}
		f.set(flagServerFIN, true)
	}
	if !f.is(flagClosed) {
		f.set(flagClosed, true)
		f.set(flagCloseOpen, f.ex != nil)
		f.srv.open--
	}
	if f.closeHow == "" {
		f.closeHow = how // a reset after the FINs (unread bytes) does not change how it closed
	}
	fin := flagFinClient << (o.Dir & 1)
	if side == "server" && !f.is(flagFinServer) {
		f.set(flagServerRST, how == "rst")
	}
	if !f.is(flagSeeded | fin) { // else a FIN sent before the flow was seen, told now
		c.noteClose(f, o.Dir, now)
	}
	// Both sides have spoken, or a reset ended it: who closed first is
	// known. Otherwise Sweep decides after the race window, as the other
	// side's close_notify may still be on its way.
	f.set(fin, true)
	if how == "rst" || f.is(flagFinClient|flagFinServer) {
		c.reportClose(f)
	}
	if ex := f.ex; ex != nil && side == "server" && !ex.raced {
		d := f.serverCloseAt.Sub(ex.start)
		kind := RaceCloseDuringReqst
		switch {
		case d < 0: // the server's close (its alert) was here before the request
			kind = RaceReuseAfterClose
		case d <= c.cfg.RaceWindow || c.idleClose(f, ex):
			kind = RaceCrossedClose
		}
		c.race(f, ex, kind, now, d)
	}
	outcome := OutcomeClientClosed
	switch {
	case how == "rst":
		outcome = OutcomeReset
	case side == "server":
		outcome = OutcomeServerClosed
	}
	if f.ex != nil {
		c.finish(f, now, outcome)
	}
	// An unread answer stays readable after the server's FIN; the
	// client's own close or a reset ends it unread.
	if outcome != OutcomeServerClosed {
		c.endUnread(f, now, outcome)
	}
	if how == "rst" && f.endedAt.IsZero() {
		f.endedAt = now // more resets may follow: the flow lingers to absorb them
	}
}

// noteClose keeps the first close signal of each side; the first signal
// of the connection is a close other stalled exchanges may have waited for.
func (c *Correlator) noteClose(f *flow, dir observe.Direction, at instant) {
	side := 0
	if dir == observe.ToClient {
		side = 1
	}
	if !f.closeAt[side].IsZero() && !f.closeAt[side].After(at) {
		return
	}
	prev := firstOf(f.closeAt)
	f.closeAt[side] = at
	if !prev.IsZero() && !at.Before(prev) {
		return
	}
	r := closeRecord{at: at, client: f.key.Client, by: [2]string{"client", "server"}[side]}
	f.srv.closes[f.srv.nextClose] = r
	f.srv.nextClose = (f.srv.nextClose + 1) % len(f.srv.closes)
	for i := range f.srv.answers {
		c.releases(r, &f.srv.answers[i])
	}
}

// reportClose emits the close event once: the side whose close signal
// (alert, FIN or RST) came first closed the connection. A flow closed
// without one (its socket's CLOSE, which on loopback comes before the
// reset it sends) is not reported yet: its close signal may still be on
// its way, and reports it; if none comes, who closed is unknown.
func (c *Correlator) reportClose(f *flow) {
	if f.is(flagCloseReported) || firstOf(f.closeAt).IsZero() {
		return
	}
	f.set(flagCloseReported, true)
	side, at := "client", f.closeAt[0]
	if at.IsZero() || !f.closeAt[1].IsZero() && f.closeAt[1].Before(at) {
		side, at = "server", f.closeAt[1]
	}
	c.event(f, at, &Close{Initiator: side, How: f.closeHow, OpenExchange: f.is(flagCloseOpen)})
}

// idleClose: the server closed when the connection, counted from its
// last data before the request, had been quiet for the server's idle
// timeout: its idle timer fired and crossed the request, however late
// the close arrived. The canary's observed timeout replaces the default.
func (c *Correlator) idleClose(f *flow, ex *exchange) bool {
	if !ex.reused {
		return false
	}
	idle := c.cfg.ServerIdleTimeout
	if f.srv.idleTimeout > 0 {
		idle = f.srv.idleTimeout
	}
	quiet := f.serverCloseAt.Sub(ex.start.Add(-ex.idleAge))
	return (quiet - idle).Abs() <= c.cfg.RaceWindow
}

func (c *Correlator) race(f *flow, ex *exchange, kind string, at instant, requestToClose time.Duration) {
	ex.raced = true // one race per exchange
	if kind == RaceReuseAfterClose {
		f.set(flagReuseRaced, true)
	}
	c.event(f, at, &Race{RaceKind: kind, IdleAge: ex.idleAge, RequestToClose: requestToClose, ServerClose: serverHow(f)})
}

// serverHow is how the server closed the flow: rst when its first FIN or
// RST was a reset, else fin (its FIN, or its end in CLOSE_WAIT).
func serverHow(f *flow) string {
	if f.is(flagServerRST) {
		return "rst"
	}
	return "fin"
}

// deadFlow is a connection the server closed while it sat idle in the
// application's pool: what a failed write on it later reports.
type deadFlow struct {
	key                     observe.Flow
	srv                     *server
	client                  string
	pid                     uint32
	lastData, serverCloseAt instant
	how                     string // fin or rst
}

// deadOf says whether the server closed f while it was idle (no exchange
// open, the client had not begun to close), with no race reported on it
// yet: a write on it now, which fails, raced the server's close.
func (c *Correlator) deadOf(f *flow) (deadFlow, bool) {
	if !f.is(flagServerFIN) || f.is(flagSeeded) || f.is(flagReuseRaced) || f.is(flagCloseOpen) || f.ex != nil ||
		f.serverCloseAt.IsZero() || !f.closeAt[0].IsZero() && f.closeAt[0].Before(f.serverCloseAt) {
		return deadFlow{}, false
	}
	return deadFlow{key: f.key, srv: f.srv, client: f.client, pid: f.pid, lastData: f.lastData,
		serverCloseAt: f.serverCloseAt, how: serverHow(f)}, true
}

// rememberDead keeps d until its connection is written on, or a new
// connection takes its addresses; the ring's oldest is forgotten when it
// is full.
func (c *Correlator) rememberDead(d deadFlow) {
	if i, ok := c.pooled[d.key]; ok {
		c.dead[i] = d
		return
	}
	i := c.nextDead
	if i < len(c.dead) {
		if old := c.dead[i].key; c.pooled[old] == int32(i) {
			delete(c.pooled, old)
		}
		c.dead[i] = d
	} else {
		c.dead = append(c.dead, d)
	}
	c.pooled[d.key] = int32(i)
	if c.nextDead = i + 1; c.nextDead == max(c.cfg.MaxFlows/4, minBuried) {
		c.nextDead = 0
	}
}

func (c *Correlator) forgetDead(key observe.Flow) {
	if i, ok := c.pooled[key]; ok {
		delete(c.pooled, key)
		c.dead[i] = deadFlow{}
	}
}

// writeFailed: the client's application wrote on a connection whose
// socket is in CLOSE, and the write failed with nothing on the wire.
// When the server had closed the connection while it sat idle in the
// pool, the write raced the server's idle close: with a FIN the request
// shows on the wire (start), with a reset only here. Once per flow; a
// write failure on a connection the client closed itself is no race.
func (c *Correlator) writeFailed(o observe.Observation, now instant) {
	if o.Dir != observe.ToServer {
		return // the server end's write (the host is both ends on loopback)
	}
	var d deadFlow
	if f, ok := c.flows[o.Flow]; ok {
		var dead bool
		if d, dead = c.deadOf(f); !dead {
			return
		}
		f.set(flagReuseRaced, true)
		if o.PID != 0 && d.pid == 0 {
			d.pid = o.PID // the writer is the owner
		}
	} else if i, ok := c.pooled[o.Flow]; ok {
		d = c.dead[i]
		c.forgetDead(o.Flow)
	} else {
		return
	}
	r := &Race{RaceKind: RaceReuseAfterClose, RequestToClose: d.serverCloseAt.Sub(now), ServerClose: d.how}
	if !d.lastData.IsZero() {
		r.IdleAge = now.Sub(d.lastData)
		c.m.Flow(d.srv.label, d.client).IdleAge(r.IdleAge)
	}
	c.emit(Event{Time: now.Time(c.loc), Server: d.srv.label, ClientAddr: d.key.Client, Client: d.client, PID: d.pid, Detail: r})
}

// state follows the TCP state of one end of the flow: the client's where
// this host has it, else the server's.
func (c *Correlator) state(f *flow, o observe.Observation, now instant) {
	if !f.endedAt.IsZero() {
		return
	}
	if f.lastData.IsZero() && !o.Ref.IsZero() {
		f.lastData = instantOf(o.Ref) // a flow found by sock_diag, with its last data time
	}
	// The client is the process that owns the client end: on loopback the
	// server's process owns the other end of the same flow.
	if o.PID != 0 && f.pid == 0 && f.client != ClientCanary && o.Dir == observe.ToServer {
		f.pid = o.PID
		if o.Comm != "" {
			c.relabel(f, o.Comm)
		}
	}
	if f.is(flagHaveState) && o.Dir != f.stateDir && f.stateDir == observe.ToServer {
		return // the server end's state, while the client end's is shown
	}
	f.set(flagHaveState, true)
	f.stateDir, f.tcpState = o.Dir, o.NewState
	if o.NewState == observe.TCPCloseWait && !f.is(flagServerFIN) {
		f.set(flagServerFIN, true)
		if f.serverCloseAt.IsZero() {
			f.serverCloseAt = now
		}
	}
	if o.NewState == observe.TCPClose {
		c.settle(f)
		f.set(flagHaveState, false)
		f.endedAt = now
		outcome, unread := OutcomeClientClosed, OutcomeClientClosed // the socket is gone with the answer unread
		if f.is(flagServerFIN) {
			outcome = OutcomeServerClosed
		}
		if o.Flags&observe.Lost != 0 {
			outcome, unread = OutcomeEvicted, OutcomeEvicted // the agent lost how it ended
		}
		if f.ex != nil {
			c.finish(f, now, outcome)
		}
		c.endUnread(f, now, unread)
		if !f.is(flagClosed) {
			f.set(flagClosed, true)
			f.srv.open--
		}
		return
	}
	if o.NewState == observe.TCPEstablished {
		c.checkPool(f.srv, o)
	}
}

func (c *Correlator) newExchange() *exchange {
	if n := len(c.spare); n > 0 {
		ex := c.spare[n-1]
		c.spare = c.spare[:n-1]
		return ex
	}
	return &exchange{}
}

// recycle keeps an ended exchange for the next one (a few hundred at most).
func (c *Correlator) recycle(ex *exchange) {
	if len(c.spare) < 256 {
		*ex = exchange{}
		c.spare = append(c.spare, ex)
	}
}

// relabel gives the flow a new client label, and its meter.
func (c *Correlator) relabel(f *flow, client string) {
	if f.client == client {
		return
	}
	f.client = client
	f.meter = c.m.Flow(f.srv.label, client)
}

// overLimit says how many connections this host holds to a server beyond
// the Max-Connections it advertises (0 when none is known).
func (s *server) overLimit() int {
	if s.maxConns <= 0 {
		return 0
	}
	return max(s.open-s.maxConns, 0)
}

// checkPool tells, once each time it happens, that this host holds more
// connections to a server than its Max-Connections.
func (c *Correlator) checkPool(s *server, o observe.Observation) {
	if s.overLimit() == 0 || s.aboveLimit {
		return
	}
	s.aboveLimit = true
	ev := Event{Time: o.Time, Server: s.label, Client: ClientUnknown,
		Detail: &PoolAboveLimit{Connections: s.open, MaxConnections: s.maxConns}}
	if f, ok := c.flows[o.Flow]; ok {
		ev.ClientAddr, ev.Client, ev.PID = f.key.Client, f.client, f.pid
	}
	c.emit(ev)
}

// read: the application read what was waiting; an unread stall ends.
func (c *Correlator) read(f *flow, at instant) {
	f.readAt = at
	c.endUnread(f, at, OutcomeAnswered)
}

// endUnread: nothing waits unread any more; a stall for it ends.
func (c *Correlator) endUnread(f *flow, at instant, outcome string) {
	f.unreadSince = 0
	if f.unread != nil {
		c.endStall(f, f.unread, at, outcome)
	}
}

func (c *Correlator) event(f *flow, at instant, d Detail) {
	c.emit(Event{Time: at.Time(c.loc), Server: f.srv.label, ClientAddr: f.key.Client, Client: f.client, PID: f.pid, Detail: d})
}

// Sweep settles answers that waited for a possible ticket, reports
// closes whose other side stayed silent, finds unread answers, drops
// flows that are gone or idle, and stalls the exchanges that crossed the
// stall threshold by now. Advance calls it at the right times; a caller
// with a clock of its own may call it directly.
func (c *Correlator) Sweep(now time.Time) { c.sweep(c.instant(now)) }

func (c *Correlator) sweep(now instant) {
	for _, f := range c.flows {
		if f.is(flagClosed) && !f.is(flagCloseReported) && now.Sub(firstOf(f.closeAt)) >= c.cfg.RaceWindow {
			c.reportClose(f)
		}
		if !f.endedAt.IsZero() && now.Sub(f.endedAt) >= endedLinger ||
			f.is(flagClosed) && f.ex == nil && f.unreadSince.IsZero() && now.Sub(f.lastSeen) >= closedIdle ||
			f.ex == nil && f.unreadSince.IsZero() && now.Sub(f.lastSeen) >= 2*c.cfg.ServerIdleTimeout {
			c.drop(f, now)
			continue
		}
		if ex := f.ex; ex != nil && !ex.tentative.IsZero() && now.Sub(ex.tentative) >= c.cfg.TicketWait {
			c.finish(f, ex.tentative, OutcomeAnswered)
			f.set(flagTicketTaken, true)
			c.refile(f)
		}
		if !f.unreadSince.IsZero() && f.unread == nil && now.Sub(f.unreadSince) >= c.cfg.StallThreshold {
			f.unread = &exchange{start: f.unreadSince, ackedAt: f.unreadSince, phase: observe.PhaseRequest, flow: f}
			c.stall(f.unread, now, StateUnread)
		}
	}
	for stall := now.Add(-c.cfg.StallThreshold); len(c.due) > 0 && !c.due[0].start.After(stall); {
		ex := c.popDue()
		// sock_diag, where it runs, has the last word on the ACK.
		state := StateUnacked
		if !ex.ackedAt.IsZero() && !ex.flow.is(flagUnacked) {
			state = StateAckedSilent
		}
		c.stall(ex, now, state)
	}
	for _, s := range c.servers {
		if s.overLimit() == 0 {
			s.aboveLimit = false // said again when it happens again
		}
	}
	if c.other.overLimit() == 0 {
		c.other.aboveLimit = false
	}
}

// NextStall is when the earliest open exchange will cross the stall
// threshold (zero when none is open): a sweep then finds it at once.
func (c *Correlator) NextStall() time.Time { return c.nextStall().Time(c.loc) }

func (c *Correlator) nextStall() instant {
	if len(c.due) == 0 {
		return 0
	}
	return c.due[0].start.Add(c.cfg.StallThreshold)
}

// NextSweep is when Advance will sweep next: the next periodic sweep, or
// the moment an open exchange crosses the stall threshold if that comes
// first. Zero before the first Advance.
func (c *Correlator) NextSweep() time.Time { return c.nextSweep().Time(c.loc) }

func (c *Correlator) nextSweep() instant {
	if due := c.nextStall(); !due.IsZero() && (c.nextTick.IsZero() || due.Before(c.nextTick)) {
		return due
	}
	return c.nextTick
}

// Advance brings the correlator to now on its source's clock: it sweeps
// every SweepInterval, also through quiet stretches, and at the moment an
// open exchange crosses the stall threshold, so a stall is found when it
// crosses, not at the next observation or second. The live agent calls it
// when NextSweep comes; the offline analysis before each packet.
func (c *Correlator) Advance(t time.Time) {
	now := c.instant(t)
	if c.nextTick.IsZero() {
		c.nextTick = now.Add(c.cfg.SweepInterval)
	}
	if now.Sub(c.nextTick) > c.cfg.MaxCatchUp {
		c.nextTick = now // a long quiet: the periodic sweeps in between have nothing to do
	}
	for {
		at := c.nextSweep()
		if now.Before(at) {
			return
		}
		c.sweep(at)
		if !at.Before(c.nextTick) {
			next := c.nextTick.Add(c.cfg.SweepInterval)
			if next == c.nextTick {
				return // held at the last instant (a capture's absurd time): no later sweep
			}
			c.nextTick = next
		}
	}
}

// Flush settles what waits for time to pass: answers held as possible
// tickets count, and closes are reported. For the end of a capture, where
// no more time will pass.
func (c *Correlator) Flush() {
	for _, f := range c.flows {
		c.settle(f)
		c.refile(f)
		if f.is(flagClosed) {
			c.reportClose(f)
		}
	}
}

func (c *Correlator) stall(ex *exchange, now instant, state string) {
	ex.stalled, ex.state = true, state
	d := &Stall{State: state, Phase: ex.phase, Age: now.Sub(ex.start), IdleAge: ex.idleAge, Retransmits: ex.retransmits}
	if !ex.ackedAt.IsZero() {
		d.Acked, d.AckedAfter = true, ex.ackedAt.Sub(ex.start)
	}
	c.event(ex.flow, now, d)
}

// The stall heap: open exchanges not stalled yet, earliest start first.

// dueEntry is an exchange in the heap with its start.
type dueEntry struct {
	start instant
	ex    *exchange
}

func (c *Correlator) pushDue(ex *exchange) {
	c.due = append(c.due, dueEntry{})
	c.dueUp(len(c.due)-1, dueEntry{ex.start, ex})
}

func (c *Correlator) popDue() *exchange {
	ex := c.due[0].ex
	c.removeDue(ex)
	return ex
}

// removeDue takes ex out of the heap, if it is in it: the last entry
// fills its place.
func (c *Correlator) removeDue(ex *exchange) {
	i := ex.due - 1
	if i < 0 {
		return
	}
	last := len(c.due) - 1
	e := c.due[last]
	c.due[last] = dueEntry{}
	c.due = c.due[:last]
	ex.due = 0
	if i < last && c.dueUp(i, e) == i {
		c.dueDown(i, e)
	}
}

// put places e at i.
func (c *Correlator) put(i int, e dueEntry) {
	c.due[i] = e
	e.ex.due = i + 1
}

// dueUp moves e from the free place i up to where it belongs, and says
// where.
func (c *Correlator) dueUp(i int, e dueEntry) int {
	for i > 0 {
		parent := (i - 1) / 2
		if !e.start.Before(c.due[parent].start) {
			break
		}
		c.put(i, c.due[parent])
		i = parent
	}
	c.put(i, e)
	return i
}

// dueDown moves e from the place i down to where it belongs.
func (c *Correlator) dueDown(i int, e dueEntry) {
	for {
		least := 2*i + 1
		if least >= len(c.due) {
			break
		}
		if r := least + 1; r < len(c.due) && c.due[r].start.Before(c.due[least].start) {
			least = r
		}
		if !c.due[least].start.Before(e.start) {
			break
		}
		c.put(i, c.due[least])
		i = least
	}
	c.put(i, e)
}

// OpenExchange is one exchange waiting for its answer, for the API.
type OpenExchange struct {
	Server     string  `json:"server"`
	ClientAddr string  `json:"client_addr"`
	Client     string  `json:"client"`
	PID        uint32  `json:"pid,omitempty"`
	Phase      string  `json:"phase"`
	AgeSeconds float64 `json:"age_seconds"`
	State      string  `json:"state"` // open, or the stall state
	Acked      bool    `json:"acked"`
}

// OpenExchanges lists the open exchanges at now.
func (c *Correlator) OpenExchanges(t time.Time) []OpenExchange {
	now := instantOf(t)
	var out []OpenExchange
	for _, f := range c.flows {
		for _, ex := range []*exchange{f.ex, f.unread} {
			if ex == nil {
				continue
			}
			state := "open"
			if ex.stalled {
				state = ex.state
			}
			out = append(out, OpenExchange{Server: f.srv.label, ClientAddr: f.key.Client.String(),
				Client: f.client, PID: f.pid, Phase: ex.phase.String(), AgeSeconds: seconds(now.Sub(ex.start)),
				State: state, Acked: !ex.ackedAt.IsZero()})
		}
	}
	return out
}

// Labels are the label values of a per-connection gauge: the server, the
// client and a state (a TCP state, or a stall state).
type Labels struct{ Server, Client, State string }

// ServerState is what the correlator knows of one server label.
type ServerState struct {
	Server string // the label: ip:port, or "other"
	// Oldest is the age of the oldest open exchange to it (0: none).
	Oldest time.Duration
	// Open is how many connections this host holds to it.
	Open int
	// MaxConnections it advertises (0: not known), and AboveLimit the
	// connections held beyond that.
	MaxConnections, AboveLimit int
	// IdleTimeout is the server's own, as the canary observed it (0: not yet).
	IdleTimeout time.Duration
}

// State is the correlator's state at one moment: what the gauges show,
// computed when they are read so that they cannot drift, and labels of
// connections that are gone are gone from it.
type State struct {
	Flows       int            // flows tracked
	Connections map[Labels]int // by TCP state
	Stalled     map[Labels]int // stalled now, by stall state
	Servers     []ServerState  // every server label in use
}

// State walks the flows at now.
func (c *Correlator) State(t time.Time) State {
	now := instantOf(t)
	st := State{Flows: len(c.flows), Connections: map[Labels]int{}, Stalled: map[Labels]int{}}
	oldest := make(map[*server]time.Duration, len(c.servers)+1)
	for _, f := range c.flows {
		if f.is(flagHaveState) {
			st.Connections[Labels{f.srv.label, f.client, f.tcpState.String()}]++
		}
		for _, ex := range [...]*exchange{f.ex, f.unread} {
			if ex == nil {
				continue
			}
			if ex.stalled {
				st.Stalled[Labels{f.srv.label, f.client, ex.state}]++
			}
			if ex == f.ex {
				oldest[f.srv] = max(oldest[f.srv], now.Sub(ex.start))
			}
		}
	}
	servers := make([]*server, 0, len(c.servers)+1)
	for _, s := range c.servers {
		servers = append(servers, s)
	}
	if len(c.servers) >= c.cfg.MaxServers { // the overflow label may be in use
		servers = append(servers, c.other)
	}
	for _, s := range servers {
		st.Servers = append(st.Servers, ServerState{Server: s.label, Oldest: oldest[s], Open: s.open,
			MaxConnections: s.maxConns, AboveLimit: s.overLimit(), IdleTimeout: s.idleTimeout})
	}
	return st
}
