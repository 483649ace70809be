// Package wire finds exchange boundaries in TCP segments, by the same
// rules as the kernel's TC classifier (bpf/icapwatch.c), for packets that
// come from a capture file. It produces the correlator's observations;
// a test holds it and the kernel program to the same events.
package wire

import (
	"encoding/binary"
	"net/netip"
	"time"

	"github.com/icapwatch/icapwatch/agent/observe"
)

// Hook is where a captured packet was seen, as far as the capture tells.
type Hook uint8

const (
	HookIngress Hook = 0
	HookEgress  Hook = 1
)

// Packet is one captured IP packet.
type Packet struct {
	Time    time.Time
	Ifindex uint32 // 0 when the capture does not say
	Hook    Hook
	IP      []byte // from the IP header on, as captured (may be cut short)
}

// Stats count what the tracker saw, as the kernel's counters do.
type Stats struct {
	Packets, Watched, Duplicates, Malformed uint64
	// Retransmits are segments (and SYNs) seen again on the interface
	// that carried them first, or after it fell silent: not duplicates.
	Retransmits uint64
	// Evictions are flows dropped, the least recently seen first, to
	// stay within the flow limit: what came after on them is read as a
	// connection joined midstream.
	Evictions uint64
	Flows     int
}

const (
	ownerSilence = time.Second // see OWNER_SILENCE_NS
	ackRearm     = time.Second // see ACK_REARM_NS

	tlsCCS       = 0x14
	tlsAlert     = 0x15
	tlsHandshake = 0x16
	tlsAppData   = 0x17
	tlsHeader    = 5
	tls13Alert   = 19

	thFIN = 0x01
	thSYN = 0x02
	thRST = 0x04
	thACK = 0x10
)

type exState uint8

const (
	exIdle exState = iota
	exOpen
	exTentative
)

// Handshake bits, as struct flow.hs.
const (
	hsFinalPending  = 0x01
	hsTicketPending = 0x02
	hsTLS13         = 0x04
)

type tlsKind uint8

const (
	tlsUnknown tlsKind = iota
	tlsYes
	tlsNo
)

// flow is one connection's state. A SYN from the client starts its
// flowState afresh; the links keep it in the tracker's order.
type flow struct {
	// older and newer link the flows by last packet (see Tracker.recent).
	older, newer *flow
	key          observe.Flow
	flowState
}

type flowState struct {
	exStart, lastData, ackedAt, serverData time.Time
	ownAt                                  [2]time.Time
	pendAt                                 [2]time.Time
	own                                    [2]uint32
	hi                                     [2]uint32
	pendEnd                                [2]uint32
	exSeq, exBytes                         uint32
	ex                                     exState
	phase                                  observe.Phase
	acked                                  bool
	tls                                    tlsKind
	hs                                     uint8
	known                                  [2]bool // hi[d] valid
	fin                                    [2]bool
	pend                                   [2]bool
	midstream                              bool
	reset                                  bool
}

// closedLinger: a flow that ended (FIN both ways, or RST) is forgotten
// after this long without packets; retransmitted FINs come sooner.
const closedLinger = time.Minute

// gcEvery packets, ended flows are forgotten.
const gcEvery = 1 << 16

// Tracker keeps per-flow state across packets. Not safe for concurrent use.
type Tracker struct {
	ports    map[uint16]bool
	maxFlows int
	flows    map[observe.Flow]*flow
	// recent heads a ring of the flows by last packet, least recent
	// first: at the limit the flow to evict is recent.newer, found
	// without walking the table (a walk per new flow made a capture of
	// many open connections quadratic).
	recent flow
	stats  Stats
	// visits counts the flows that evict and gc looked at: the cost of
	// keeping within the limit, held to a bound by a test.
	visits uint64
}

// NewTracker watches the given server ports, keeping at most maxFlows
// flows (the oldest go first, as from the kernel's LRU table).
func NewTracker(ports []uint16, maxFlows int) *Tracker {
	t := &Tracker{ports: map[uint16]bool{}, maxFlows: maxFlows, flows: map[observe.Flow]*flow{}}
	t.recent.older, t.recent.newer = &t.recent, &t.recent
	for _, p := range ports {
		t.ports[p] = true
	}
	return t
}

// Stats returns the counters.
func (t *Tracker) Stats() Stats {
	s := t.stats
	s.Flows = len(t.flows)
	return s
}

// segment is a parsed TCP segment.
type segment struct {
	seq, ack, len uint32
	payload       []byte // as captured: may be shorter than len
	flags         uint8
	rec           [5]byte
	have          int
}

func (s *segment) isTLSRecord() bool {
	return s.have >= 3 && s.rec[0] >= tlsCCS && s.rec[0] <= tlsAppData && s.rec[1] == 3 && s.rec[2] <= 4
}

func (s *segment) recordLen() uint16 {
	if s.have != 5 {
		return 0
	}
	return uint16(s.rec[3])<<8 | uint16(s.rec[4])
}

// recordAt reads the TLS record header at payload offset off: its type
// and length, or 0 when it is beyond the segment or the capture.
func (s *segment) recordAt(off uint32) (byte, uint16) {
	if off > 0xffff || off+tlsHeader > s.len || int(off)+tlsHeader > len(s.payload) {
		return 0, 0
	}
	h := s.payload[off : off+tlsHeader]
	return h[0], uint16(h[3])<<8 | uint16(h[4])
}

// byteAt is one payload byte, if captured within the segment.
func (s *segment) byteAt(off uint32) (byte, bool) {
	if off >= s.len || int(off) >= len(s.payload) {
		return 0, false
	}
	return s.payload[off], true
}

// Packet takes one packet and hands out the observations it makes.
func (t *Tracker) Packet(p Packet, out func(observe.Observation)) {
	t.stats.Packets++
	if t.stats.Packets%gcEvery == 0 {
		t.gc(p.Time)
	}
	key, s, dir, ok := t.parse(p.IP)
	if ok < 0 {
		t.stats.Malformed++
	}
	if ok <= 0 {
		return
	}
	t.stats.Watched++
	now := p.Time
	f := t.flows[key]
	if f == nil {
		if len(t.flows) >= t.maxFlows {
			t.evict()
		}
		f = &flow{key: key}
		f.midstream = s.flags&thSYN == 0
		t.flows[key] = f
	}
	d := int(dir)
	owner := (p.Ifindex<<1 | uint32(p.Hook)) + 1
	if f.own[d] != 0 && f.own[d] != owner && now.Sub(f.ownAt[d]) < ownerSilence {
		t.stats.Duplicates++
		return
	}
	f.own[d], f.ownAt[d] = owner, now
	t.touch(f)
	e := emitter{key: key, dir: dir, now: now, out: out}

	if s.flags&thRST != 0 {
		f.reset = true
		if dir == observe.ToClient && !f.midstream && !f.known[1] {
			return // a refused connect, no close (see classify)
		}
		// A reset right behind a held record ends that side's stream as
		// a FIN would, and proves a record the other side holds its
		// close_notify too (see classify).
		if other := 1 - d; f.pend[d] && f.pendEnd[d] == s.seq && f.pend[other] {
			oe := e
			oe.dir = observe.Direction(other)
			t.heldCloseNotify(f, &oe, f.pendEnd[other], 0)
		}
		t.heldCloseNotify(f, &e, s.seq, s.ack)
		e.emit(observe.RST, dir, now, s.seq, s.ack, s.len, t.flowFlags(f))
		return
	}
	if s.flags&thSYN != 0 {
		if f.known[d] && s.seq+1 == f.hi[d] && s.len == 0 {
			t.stats.Retransmits++
			e.emit(observe.Retransmit, dir, now, s.seq, s.ack, s.len, t.flowFlags(f)|observe.SYN)
			return
		}
		if dir == observe.ToServer {
			f.flowState = flowState{}
			f.own[0], f.ownAt[0] = owner, now
		}
		f.hi[d], f.known[d] = s.seq+1, true
		return
	}

	start := now
	if s.len > 0 {
		end := s.seq + s.len
		if f.known[d] && !seqAfter(end, f.hi[d]) {
			t.stats.Retransmits++
			e.emit(observe.Retransmit, dir, now, s.seq, s.ack, s.len, t.flowFlags(f))
			t.fin(f, &s, &e)
			return
		}
		f.hi[d], f.known[d] = end, true
		if f.tls == tlsUnknown && s.isTLSRecord() {
			f.tls = tlsYes
		} else if f.tls == tlsUnknown && !f.midstream {
			f.tls = tlsNo
		}
		if f.pend[d] {
			// The held record was data after all: the segment starts there.
			f.pend[d] = false
			if f.pendEnd[d] == s.seq {
				start = f.pendAt[d]
				s.seq -= tlsHeader + tls13Alert
				s.len += tlsHeader + tls13Alert
				s.rec[0], s.rec[3], s.rec[4] = tlsAppData, 0, tls13Alert
			}
		} else if f.tls == tlsYes && s.len == tlsHeader+tls13Alert && s.rec[0] == tlsAppData && s.recordLen() == tls13Alert {
			if s.flags&thFIN != 0 {
				o := e.emit(observe.TLSAlert, dir, now, s.seq, s.ack, s.len, t.flowFlags(f)|observe.Probable)
				_ = o
				t.fin(f, &s, &e)
				return
			}
			f.pend[d], f.pendAt[d], f.pendEnd[d] = true, now, end
			t.ack(f, &s, &e)
			t.fin(f, &s, &e)
			return
		}
		if dir == observe.ToServer {
			t.clientData(f, &s, &e, now, start)
		} else {
			t.serverData(f, &s, &e, now, start)
		}
		f.lastData = now
	}
	t.ack(f, &s, &e)
	t.fin(f, &s, &e)
}

func (t *Tracker) ack(f *flow, s *segment, e *emitter) {
	if e.dir == observe.ToClient && s.flags&thACK != 0 && f.ex == exOpen && !f.acked && f.known[0] &&
		!seqAfter(f.hi[0], s.ack) {
		o := e.emit(observe.Acked, e.dir, e.now, f.exSeq, s.ack, 0, t.flowFlags(f))
		o.Ref, o.Phase, o.Bytes = f.exStart, f.phase, f.exBytes
		e.send(o)
		f.acked, f.ackedAt = true, e.now
	}
}

func (t *Tracker) fin(f *flow, s *segment, e *emitter) {
	d := int(e.dir)
	if s.flags&thFIN == 0 || f.fin[d] {
		return
	}
	f.fin[d] = true
	t.heldCloseNotify(f, e, s.seq+s.len, s.ack)
	e.emit(observe.FIN, e.dir, e.now, s.seq, s.ack, s.len, t.flowFlags(f))
}

// heldCloseNotify: the direction's stream ends at end (its FIN, or a
// reset); a lone 19-byte record held right before it was that side's TLS
// 1.3 close_notify. The alert comes now, with the record's time as its
// Ref. See held_close_notify.
func (t *Tracker) heldCloseNotify(f *flow, e *emitter, end, ack uint32) {
	d := int(e.dir)
	if !f.pend[d] || f.pendEnd[d] != end {
		return
	}
	f.pend[d] = false
	o := e.observation(observe.TLSAlert, e.dir, e.now, end-tlsHeader-tls13Alert, ack, tlsHeader+tls13Alert,
		t.flowFlags(f)|observe.Probable)
	o.Ref = f.pendAt[d]
	e.send(o)
}

// finalFlightLen: see final_flight_len.
func finalFlightLen(s *segment) uint32 {
	n := uint32(tlsHeader) + uint32(s.recordLen())
	if s.rec[0] == tlsCCS {
		if typ, l := s.recordAt(n); typ == tlsAppData {
			n += tlsHeader + uint32(l)
		}
	}
	return n
}

func (t *Tracker) clientData(f *flow, s *segment, e *emitter, now, start time.Time) {
	tls := s.isTLSRecord()
	if tls && s.rec[0] == tlsAlert {
		e.emit(observe.TLSAlert, observe.ToServer, now, s.seq, s.ack, s.len, t.flowFlags(f))
		return
	}
	if f.ex == exOpen {
		f.exBytes += s.len
		if f.acked && now.Sub(f.ackedAt) >= ackRearm {
			f.acked = false
		}
		return
	}
	phase := observe.PhaseRequest
	if tls && (s.rec[0] == tlsHandshake || s.rec[0] == tlsCCS) {
		phase = observe.PhaseHandshake
	}
	if f.hs&hsFinalPending != 0 && tls && (s.rec[0] == tlsCCS || s.rec[0] == tlsAppData) {
		f.hs &^= hsFinalPending
		if f.hs&hsTLS13 != 0 {
			f.hs |= hsTicketPending
		}
		if s.len <= finalFlightLen(s) {
			f.ex = exIdle
			return
		}
		phase = observe.PhaseRequest
	}
	f.ex, f.phase, f.exStart, f.exSeq, f.exBytes, f.acked = exOpen, phase, start, s.seq, s.len, false
	o := e.emit(observe.ExchangeStart, observe.ToServer, start, s.seq, s.ack, s.len, t.flowFlags(f))
	o.Ref, o.Phase, o.Bytes = f.lastData, phase, s.len
	e.send(o)
}

// serverHello: see server_hello.
func (t *Tracker) serverHello(f *flow, s *segment) {
	const sidOff = tlsHeader + 4 + 2 + 32
	if msg, ok := s.byteAt(tlsHeader); !ok || msg != 0x02 {
		return
	}
	sidLen, ok := s.byteAt(sidOff)
	if s.len < sidOff+1 || !ok || sidLen > 32 {
		return
	}
	if c, ok := s.byteAt(sidOff + 1 + uint32(sidLen)); ok && s.len >= sidOff+1+uint32(sidLen)+2 && c == 0x13 {
		if _, ok2 := s.byteAt(sidOff + 2 + uint32(sidLen)); ok2 {
			f.hs |= hsTLS13
		}
	}
	next, _ := s.recordAt(tlsHeader + uint32(s.recordLen()))
	if next == tlsCCS || next == tlsAppData || next == 0 && f.hs&hsTLS13 != 0 {
		f.hs |= hsFinalPending
	} else {
		f.hs &^= hsFinalPending
	}
}

func (t *Tracker) serverData(f *flow, s *segment, e *emitter, now, start time.Time) {
	var flags observe.Flags
	prev := f.serverData
	tls := s.isTLSRecord()
	f.serverData = now
	if tls && s.rec[0] == tlsAlert {
		e.emit(observe.TLSAlert, observe.ToClient, now, s.seq, s.ack, s.len, t.flowFlags(f))
		return
	}
	if tls && s.rec[0] == tlsHandshake {
		t.serverHello(f, s)
	}
	switch {
	case f.ex == exOpen:
		if f.hs&hsTicketPending != 0 && tls && s.rec[0] == tlsAppData {
			f.hs &^= hsTicketPending
			flags = observe.MaybeTicket
		}
	case f.ex == exTentative && tls && s.rec[0] == tlsAppData:
		flags = observe.AfterTicket
	default:
		if tls && s.rec[0] == tlsAppData {
			f.hs &^= hsTicketPending
		}
		return
	}
	o := e.emit(observe.Answer, observe.ToClient, start, s.seq, s.ack, s.len, t.flowFlags(f)|flags)
	o.Ref, o.Phase, o.Bytes = f.exStart, f.phase, f.exBytes
	if flags&observe.AfterTicket != 0 {
		o.Ref = prev
	}
	e.send(o)
	f.ex, f.acked = exIdle, true
	if flags&observe.MaybeTicket != 0 {
		f.ex = exTentative
	}
}

func (t *Tracker) flowFlags(f *flow) observe.Flags {
	var fl observe.Flags
	if f.midstream {
		fl |= observe.Midstream
	}
	if f.hs&hsTLS13 != 0 {
		fl |= observe.TLS13
	}
	if f.tls == tlsNo {
		fl |= observe.Plain
	}
	if f.ex == exOpen {
		fl |= observe.OpenExchange
	}
	return fl
}

// touch moves f to the recent end of the flows' order, or puts it there.
func (t *Tracker) touch(f *flow) {
	if f.newer != nil {
		f.older.newer, f.newer.older = f.newer, f.older
	}
	f.older, f.newer = t.recent.older, &t.recent
	t.recent.older.newer, t.recent.older = f, f
}

// forget drops f from the table and the order.
func (t *Tracker) forget(f *flow) {
	f.older.newer, f.newer.older = f.newer, f.older
	f.older, f.newer = nil, nil
	delete(t.flows, f.key)
}

// gc forgets the flows that ended a while ago (the kernel's tracepoint
// does this at the socket's CLOSE). It looks at the flows quiet for that
// long only: the walk stops at the first flow heard from since.
func (t *Tracker) gc(now time.Time) {
	for f := t.recent.newer; f != &t.recent; {
		t.visits++
		next := f.newer
		last := f.ownAt[0]
		if f.ownAt[1].After(last) {
			last = f.ownAt[1]
		}
		if now.Sub(last) < closedLinger {
			return
		}
		if f.reset || f.fin[0] && f.fin[1] {
			t.forget(f)
		}
		f = next
	}
}

// evict drops the flow seen least recently.
func (t *Tracker) evict() {
	f := t.recent.newer
	if f == &t.recent {
		return
	}
	t.visits++
	t.forget(f)
	t.stats.Evictions++
}

// parse reads the IP and TCP headers: 1 for a watched segment, 0 for
// other packets, -1 for malformed ones.
func (t *Tracker) parse(ip []byte) (observe.Flow, segment, observe.Direction, int) {
	var s segment
	var key observe.Flow
	if len(ip) < 1 {
		return key, s, 0, -1
	}
	var src, dst netip.Addr
	var l4, total uint32
	switch ip[0] >> 4 {
	case 4:
		if len(ip) < 20 {
			return key, s, 0, -1
		}
		if ip[9] != 6 || (ip[6]&0x1f)|ip[7] != 0 {
			return key, s, 0, 0
		}
		ihl := uint32(ip[0]&0x0f) * 4
		total = uint32(binary.BigEndian.Uint16(ip[2:]))
		if ihl < 20 || total < ihl {
			return key, s, 0, -1
		}
		l4, total = ihl, total-ihl
		src, dst = netip.AddrFrom4([4]byte(ip[12:16])), netip.AddrFrom4([4]byte(ip[16:20]))
	case 6:
		if len(ip) < 40 {
			return key, s, 0, -1
		}
		if ip[6] != 6 {
			return key, s, 0, 0
		}
		total, l4 = uint32(binary.BigEndian.Uint16(ip[4:])), 40
		src, dst = netip.AddrFrom16([16]byte(ip[8:24])), netip.AddrFrom16([16]byte(ip[24:40]))
	default:
		return key, s, 0, -1
	}
	if uint32(len(ip)) < l4+20 {
		return key, s, 0, -1
	}
	tcp := ip[l4:]
	sport, dport := binary.BigEndian.Uint16(tcp[0:]), binary.BigEndian.Uint16(tcp[2:])
	var dir observe.Direction
	switch {
	case t.ports[dport]:
		key = observe.Flow{Client: netip.AddrPortFrom(src, sport), Server: netip.AddrPortFrom(dst, dport)}
	case t.ports[sport]:
		dir = observe.ToClient
		key = observe.Flow{Client: netip.AddrPortFrom(dst, dport), Server: netip.AddrPortFrom(src, sport)}
	default:
		return key, s, 0, 0
	}
	s.seq, s.ack = binary.BigEndian.Uint32(tcp[4:]), binary.BigEndian.Uint32(tcp[8:])
	s.flags = tcp[13]
	doff := uint32(tcp[12]>>4) * 4
	if doff < 20 || total < doff {
		return key, s, dir, -1
	}
	s.len = total - doff
	if off := l4 + doff; uint32(len(ip)) > off {
		s.payload = ip[off:]
	}
	switch {
	case s.len >= 5 && len(s.payload) >= 5:
		copy(s.rec[:], s.payload[:5])
		s.have = 5
	case s.len >= 1 && s.len < 5 && len(s.payload) >= 1:
		s.rec[0] = s.payload[0]
		s.have = 1
	}
	return key, s, dir, 1
}

func seqAfter(a, b uint32) bool { return int32(a-b) > 0 }

// emitter builds observations of one packet.
type emitter struct {
	key observe.Flow
	dir observe.Direction
	now time.Time
	out func(observe.Observation)
}

// emit sends an observation, except the kinds that take more fields
// (exchange start, acked, answer): those it returns for the caller to
// complete and send.
func (e *emitter) emit(kind observe.Kind, dir observe.Direction, at time.Time, seq, ack, n uint32,
	flags observe.Flags) observe.Observation {
	o := e.observation(kind, dir, at, seq, ack, n, flags)
	switch kind {
	case observe.ExchangeStart, observe.Acked, observe.Answer:
		return o
	}
	e.send(o)
	return o
}

func (e *emitter) send(o observe.Observation) { e.out(o) }

// observation builds one observation of the packet, for the caller to
// complete and send.
func (e *emitter) observation(kind observe.Kind, dir observe.Direction, at time.Time, seq, ack, n uint32,
	flags observe.Flags) observe.Observation {
	return observe.Observation{Kind: kind, Source: observe.SourceCapture, Time: at, Flow: e.key, Dir: dir,
		Flags: flags, Seq: seq, Ack: ack, Len: n}
}
