package analyze

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"
	"github.com/icapwatch/icapwatch/agent/correlate"
	"github.com/icapwatch/icapwatch/agent/wire"
)

// The captures in testdata/captures are recorded by `make fixtures`
// (scripts/fixtures) from the lab server on port 21344.
func analyzeFile(t *testing.T, name string, mod func(*Config)) Analysis {
	t.Helper()
	f, err := os.Open(filepath.Join("testdata", "captures", name))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cfg := Config{Ports: []uint16{21344}, Correlator: correlate.DefaultConfig()}
	cfg.Correlator.StallThreshold = time.Second
	if mod != nil {
		mod(&cfg)
	}
	a, err := Run(f, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if a.Err != nil {
		t.Fatalf("%s: %v", name, a.Err)
	}
	return a
}

func eventKinds(evs []correlate.Event) map[string]int {
	m := map[string]int{}
	for _, e := range evs {
		k := string(e.Kind())
		switch d := e.Detail.(type) {
		case *correlate.Race:
			k += ":" + d.RaceKind
		case *correlate.Stall:
			k += ":" + d.State
		}
		m[k]++
	}
	return m
}

func TestAnalyzeSeed(t *testing.T) {
	for _, name := range []string{"seed-tls13.pcap", "seed-any-sll2.pcap"} {
		t.Run(name, func(t *testing.T) {
			a := analyzeFile(t, name, nil)
			k := eventKinds(a.Events)
			if k["stall:acked_silent"] != 1 || k[string(correlate.KindRelease)] != 1 || k[string(correlate.KindStallEnd)] != 1 {
				t.Errorf("want one acked_silent stall, its end and its release; got %v", k)
			}
			// 5 OPTIONS and the handshakes of 3 connections.
			var req, hs int
			for k, g := range a.Gaps {
				switch k.Phase {
				case "request":
					req += len(g)
				case "handshake":
					hs += len(g)
				}
			}
			if req != 5 || hs < 3 {
				t.Errorf("gaps: %d requests, %d handshakes; want 5 and at least 3", req, hs)
			}
			for _, e := range a.Events {
				if e.Kind() == correlate.KindStall && e.Field("phase") != "handshake" {
					t.Errorf("the seed's stall is in the handshake: %+v", e)
				}
			}
		})
	}
}

func TestAnalyzeRaceTLS12(t *testing.T) {
	a := analyzeFile(t, "race-tls12.pcap", nil)
	k := eventKinds(a.Events)
	if k["race:"+correlate.RaceReuseAfterClose] != 1 {
		t.Errorf("want a reuse_after_server_close race, got %v", k)
	}
	var v12 bool
	for _, e := range a.Events {
		if e.Kind() == correlate.KindTLSAlert && e.Field("direction") == "server" && e.Field("tls_version") == "1.2" {
			v12 = true
		}
	}
	if !v12 {
		t.Errorf("want the server's TLS 1.2 alert record: %v", k)
	}
}

func TestAnalyzeIPv6Pcapng(t *testing.T) {
	a := analyzeFile(t, "ipv6.pcapng", nil)
	if n := len(a.Gaps[GapKey{"[::1]:21344", "request"}]); a.Format != "pcapng" || n < 3 {
		t.Fatalf("format %s, %d request gaps to [::1]:21344 (all: %v)", a.Format, n, a.Gaps)
	}
	// --server keeps one server.
	other := analyzeFile(t, "ipv6.pcapng", func(c *Config) { c.Server = netip.MustParseAddrPort("[::1]:9") })
	if len(other.Gaps)+len(other.Events) != 0 {
		t.Errorf("server filter kept %d gaps, %d events", len(other.Gaps), len(other.Events))
	}
}

func TestAnalyzeBadInput(t *testing.T) {
	good, err := os.ReadFile(filepath.Join("testdata", "captures", "seed-tls13.pcap"))
	if err != nil {
		t.Fatal(err)
	}
	// Cut short: what came before the cut is still analyzed.
	a, err := Run(bytes.NewReader(good[:len(good)*2/3+7]), Config{Ports: []uint16{21344}, Correlator: correlate.DefaultConfig()})
	if err != nil || a.Err == nil || a.Capture.Frames == 0 || len(a.Gaps) == 0 {
		t.Errorf("truncated: err %v, damage %v, %d frames, %d gaps", err, a.Err, a.Capture.Frames, len(a.Gaps))
	}
	if _, err := Run(strings.NewReader("this is not a capture at all"), Config{Correlator: correlate.DefaultConfig()}); !errors.Is(err, wire.ErrFormat) {
		t.Errorf("garbage: %v", err)
	}
	// An unknown link type is named, with the ones that are read.
	unknown := append([]byte{}, good...)
	unknown[20], unknown[21], unknown[22], unknown[23] = 0xdc, 0x00, 0x00, 0x00 // pcap header linktype 220, little endian
	_, err = Run(bytes.NewReader(unknown), Config{Ports: []uint16{21344}, Correlator: correlate.DefaultConfig()})
	var lte *wire.LinkTypeError
	if !errors.As(err, &lte) || !strings.Contains(err.Error(), "link type 220 (USB) is not supported") ||
		!strings.Contains(err.Error(), "SLL2 (276)") {
		t.Errorf("unknown link type: %v", err)
	}
}

// A pcapng file can mix interfaces: frames of an unsupported link type
// are passed over; when they are all there is, the error names it.
func TestAnalyzePcapngOtherLink(t *testing.T) {
	frames := readFrames(t, "seed-any-sll2.pcap")
	write := func(withIP bool) []byte {
		var buf bytes.Buffer
		w, err := pcapgo.NewNgWriterInterface(&buf, pcapgo.NgInterface{LinkType: 254, SnapLength: 65535},
			pcapgo.DefaultNgWriterOptions)
		if err != nil {
			t.Fatal(err)
		}
		sll2, err := w.AddInterface(pcapgo.NgInterface{LinkType: layers.LinkTypeLinuxSLL2, SnapLength: 65535})
		if err != nil {
			t.Fatal(err)
		}
		for i, f := range frames {
			// Mixed: every other frame on the SLL2 interface, still read.
			ci := f.ci
			ci.InterfaceIndex = 0
			if withIP && i%2 == 0 {
				ci.InterfaceIndex = sll2
			}
			if err := w.WritePacket(ci, f.data); err != nil {
				t.Fatal(err)
			}
		}
		if err := w.Flush(); err != nil {
			t.Fatal(err)
		}
		return buf.Bytes()
	}
	cfg := Config{Ports: []uint16{21344}, Correlator: correlate.DefaultConfig()}
	_, err := Run(bytes.NewReader(write(false)), cfg)
	var lte *wire.LinkTypeError
	if !errors.As(err, &lte) || !strings.Contains(err.Error(), "link type 254 is not supported") {
		t.Errorf("pcapng of an unsupported link type: %v", err)
	}
	a, err := Run(bytes.NewReader(write(true)), cfg)
	if err != nil || a.Wire.Packets != uint64(len(frames)+1)/2 || a.Capture.OtherLink != uint64(len(frames))/2 ||
		!slices.Equal(a.OtherLinks, []string{"254"}) {
		t.Errorf("mixed pcapng: %v; %d IP packets, %d frames of another link, of %d (%+v)", err, a.Wire.Packets, a.Capture.OtherLink, len(frames), a.Capture)
	}
}

// FuzzAnalyze: no input crashes the reader, the parser or the correlator.
func FuzzAnalyze(f *testing.F) {
	for _, name := range []string{"seed-tls13.pcap", "ipv6.pcapng", "race-tls12.pcap"} {
		b, err := os.ReadFile(filepath.Join("testdata", "captures", name))
		if err == nil {
			f.Add(b[:min(len(b), 3000)])
		}
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		Run(bytes.NewReader(b), Config{Ports: []uint16{21344}, Correlator: correlate.DefaultConfig()})
	})
}

type frame struct {
	ci   gopacket.CaptureInfo
	data []byte
}

// openCapture reads a pcap of testdata/captures, closed when the test
// ends.
func openCapture(t *testing.T, name string) *pcapgo.Reader {
	t.Helper()
	f, err := os.Open(filepath.Join("testdata", "captures", name))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	r, err := pcapgo.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func readFrames(t *testing.T, name string) []frame {
	t.Helper()
	r := openCapture(t, name)
	var frames []frame
	for {
		data, ci, err := r.ReadPacketData()
		if err != nil {
			break
		}
		frames = append(frames, frame{ci, data})
	}
	if len(frames) == 0 {
		t.Fatalf("%s: no frames", name)
	}
	return frames
}

func writePcap(t *testing.T, link layers.LinkType, frames []frame) []byte {
	t.Helper()
	var buf bytes.Buffer
	w := pcapgo.NewWriterNanos(&buf)
	if err := w.WriteFileHeader(65535, link); err != nil {
		t.Fatal(err)
	}
	for _, f := range frames {
		if err := w.WritePacket(f.ci, f.data); err != nil {
			t.Fatal(err)
		}
	}
	return buf.Bytes()
}

// The sweep runs when an exchange crosses the threshold, as the agent's
// timer does: a stall's age is the threshold, not up to a second more.
func TestAnalyzeStallAtThreshold(t *testing.T) {
	// The seed's handshake waits about 2 s: each threshold below catches it.
	for _, threshold := range []time.Duration{300 * time.Millisecond, time.Second, 1700 * time.Millisecond} {
		for _, name := range []string{"seed-tls13.pcap", "seed-any-sll2.pcap"} {
			a := analyzeFile(t, name, func(c *Config) { c.Correlator.StallThreshold = threshold })
			var stalls int
			for _, e := range a.Events {
				if e.Kind() != correlate.KindStall {
					continue
				}
				stalls++
				age := time.Duration(e.Field("age_seconds").(float64) * float64(time.Second))
				if (age - threshold).Abs() > time.Millisecond {
					t.Errorf("%s, threshold %s: stall found at age %s", name, threshold, age)
				}
			}
			if stalls == 0 {
				t.Errorf("%s, threshold %s: no stall", name, threshold)
			}
		}
	}
}

// The report's timeline: each answered exchange of a connection, with
// its phase and gap, in the order of the requests.
func TestAnalyzeTimeline(t *testing.T) {
	a := analyzeFile(t, "race-tls12.pcap", nil)
	tl := a.Timelines[ConnKey{"127.0.0.1:21344", netip.MustParseAddrPort("127.0.0.1:40252")}]
	if tl == nil || len(a.Timelines) != 1 {
		t.Fatalf("timelines: %v", a.Timelines)
	}
	var phases []string
	for i, x := range tl.Exchanges {
		phases = append(phases, x.Phase)
		if x.Count != 1 || x.Gap <= 0 || x.Gap > 10*time.Millisecond || i > 0 && !x.Start.After(tl.Exchanges[i-1].Start) {
			t.Errorf("exchange %d: %+v", i, x)
		}
	}
	// TLS 1.2: ClientHello, the client's Finished, then the request.
	if strings.Join(phases, " ") != "handshake handshake request" || tl.Answered != 3 {
		t.Errorf("phases %v, %d answered", phases, tl.Answered)
	}

	// The seed's stalled handshake is on its connection's timeline.
	a = analyzeFile(t, "seed-tls13.pcap", nil)
	var stalled int
	for _, tl := range a.Timelines {
		for _, x := range tl.Exchanges {
			if x.Phase == "handshake" && x.Gap > 1900*time.Millisecond {
				stalled++
			}
		}
	}
	if stalled != 1 {
		t.Errorf("want the one stalled handshake on a timeline, got %d: %+v", stalled, a.Timelines)
	}
}

// A long connection stays a few entries: its first exchanges, slow ones
// and those around an event are listed, ordinary ones fold into runs.
func TestTimelineFolds(t *testing.T) {
	var tl Timeline
	at := time.Date(2026, 11, 23, 7, 0, 0, 0, time.UTC)
	ex := func(gap time.Duration) Exchange {
		at = at.Add(time.Second)
		return Exchange{Start: at, Phase: "request", Gap: gap, MaxGap: gap, Count: 1}
	}
	for range timelineHead + 100 {
		tl.add(ex(time.Millisecond), false)
	}
	tl.add(ex(3*time.Second), true) // slow
	for range 50 {
		tl.add(ex(2*time.Millisecond), false)
	}
	tl.event() // lists the exchange before it and the one after it
	tl.add(ex(time.Millisecond), false)
	for range 10 {
		tl.add(ex(time.Millisecond), false)
	}
	tl.end() // lists the last

	var counts []int
	total := 0
	for _, x := range tl.Exchanges {
		counts = append(counts, x.Count)
		total += x.Count
	}
	// 8 listed, a run of 100, the slow one, a run of 49, the one before
	// the event, the one after, a run of 9, the last.
	want := []int{1, 1, 1, 1, 1, 1, 1, 1, 100, 1, 49, 1, 1, 9, 1}
	if !slices.Equal(counts, want) || total != tl.Answered || tl.Answered != timelineHead+162 {
		t.Fatalf("counts %v (want %v), %d of %d answered", counts, want, total, tl.Answered)
	}
	if r := tl.Exchanges[timelineHead]; r.Span != 99*time.Second || r.Gap != time.Millisecond || r.MaxGap != time.Millisecond {
		t.Errorf("run %+v", r)
	}
	if slow := tl.Exchanges[timelineHead+1]; slow.Gap != 3*time.Second || slow.Count != 1 {
		t.Errorf("slow %+v", slow)
	}

	// However many events, the timeline is bounded.
	for range 10 * timelineCap {
		tl.add(ex(time.Millisecond), false)
		tl.event()
	}
	tl.end()
	total = 0
	for _, x := range tl.Exchanges {
		total += x.Count
	}
	if len(tl.Exchanges) > timelineCap+1 || total != tl.Answered {
		t.Errorf("%d entries (cap %d), %d of %d answered", len(tl.Exchanges), timelineCap, total, tl.Answered)
	}
}

// tcpdump -i any sees a packet once per interface it crosses (a veth and
// a bridge, say). Each frame of the real SLL2 capture written again with
// another interface index must leave the analysis as it was; a
// retransmission, the same bytes on the same interface later, still counts.
func TestAnalyzeDuplicatesAcrossInterfaces(t *testing.T) {
	frames := readFrames(t, "seed-any-sll2.pcap")
	var doubled []frame
	retransmit := -1
	for i, f := range frames {
		doubled = append(doubled, f)
		veth := frame{f.ci, slices.Clone(f.data)}
		binary.BigEndian.PutUint32(veth.data[4:], 7) // SLL2 interface index
		veth.ci.Timestamp = veth.ci.Timestamp.Add(2 * time.Microsecond)
		doubled = append(doubled, veth)
		if retransmit < 0 && clientPayload(f.data) {
			retransmit = i
		}
	}
	cfg := Config{Ports: []uint16{21344}, Correlator: correlate.DefaultConfig()}
	cfg.Correlator.StallThreshold = time.Second
	analyze := func(frames []frame) Analysis {
		a, err := Run(bytes.NewReader(writePcap(t, layers.LinkTypeLinuxSLL2, frames)), cfg)
		if err != nil || a.Err != nil {
			t.Fatal(err, a.Err)
		}
		return a
	}
	once, twice := analyze(frames), analyze(doubled)
	if once.Wire.Duplicates != 0 || twice.Wire.Duplicates != uint64(len(frames)) {
		t.Errorf("duplicates: %d in the capture, %d with every frame twice (want 0, %d)",
			once.Wire.Duplicates, twice.Wire.Duplicates, len(frames))
	}
	same := func(what string, a Analysis) {
		t.Helper()
		if !reflect.DeepEqual(a.Events, once.Events) || !reflect.DeepEqual(a.Gaps, once.Gaps) || len(once.Events) == 0 {
			t.Errorf("%s: events %v\ngaps %v\nwant events %v\ngaps %v", what, eventKinds(a.Events), a.Gaps, eventKinds(once.Events), once.Gaps)
		}
	}
	same("every frame twice", twice)

	// The client's first data segment again 50 ms later, on both interfaces.
	if retransmit < 0 {
		t.Fatal("no client data in the capture")
	}
	again := slices.Clone(doubled[2*retransmit : 2*retransmit+2])
	for i := range again {
		again[i].ci.Timestamp = again[i].ci.Timestamp.Add(50 * time.Millisecond)
	}
	withRetransmit := append(slices.Clone(doubled), again...)
	slices.SortStableFunc(withRetransmit, func(a, b frame) int { return a.ci.Timestamp.Compare(b.ci.Timestamp) })
	r := analyze(withRetransmit)
	if r.Wire.Retransmits != once.Wire.Retransmits+1 || r.Wire.Duplicates != uint64(len(frames))+1 {
		t.Errorf("retransmission: %d retransmits (want %d), %d duplicates (want %d)",
			r.Wire.Retransmits, once.Wire.Retransmits+1, r.Wire.Duplicates, len(frames)+1)
	}
	same("with a retransmission", r)
}

// clientPayload: an SLL2 frame of IPv4 TCP to port 21344 with payload.
func clientPayload(b []byte) bool {
	if len(b) < 20+20+20 || b[20]>>4 != 4 {
		return false
	}
	ip := b[20:]
	ihl := int(ip[0]&0x0f) * 4
	if len(ip) < ihl+20 || ip[9] != 6 || binary.BigEndian.Uint16(ip[ihl+2:]) != 21344 {
		return false
	}
	tcpLen := int(ip[ihl+12]>>4) * 4
	return int(binary.BigEndian.Uint16(ip[2:])) > ihl+tcpLen
}

// A damaged pcapng file says so, after how many frames, as a pcap does;
// what came before is analyzed.
func TestAnalyzePcapngDamaged(t *testing.T) {
	good, err := os.ReadFile(filepath.Join("testdata", "captures", "ipv6.pcapng"))
	if err != nil {
		t.Fatal(err)
	}
	// The offsets of the blocks: a section, an interface, then packets.
	var blocks []int
	for off := 0; off+8 <= len(good); off += int(binary.LittleEndian.Uint32(good[off+4:])) {
		blocks = append(blocks, off)
	}
	const before = 12 // packets before the damage
	at := blocks[2+before]
	lengths := func(total uint32) []byte {
		b := slices.Clone(good)
		binary.LittleEndian.PutUint32(b[at+4:], total)
		return b
	}
	cfg := Config{Ports: []uint16{21344}, Correlator: correlate.DefaultConfig()}
	for _, c := range []struct {
		name string
		file []byte
		want string
	}{
		{"total length 0", lengths(0), "total length 0"},
		{"total length 3", lengths(3), "total length 3"},
		{"total length 12", lengths(12), "total length 12"},
		{"total length 0xfffffff0", lengths(0xfffffff0), "more than the"},
		{"cut within a block", good[:at+50], "the file ends within the block"},
	} {
		t.Run(c.name, func(t *testing.T) {
			a, err := Run(bytes.NewReader(c.file), cfg)
			if err != nil || a.Err == nil || a.Capture.Frames != before ||
				!strings.Contains(a.Err.Error(), fmt.Sprintf("after %d frames: pcapng block at byte %d: ", before, at)) ||
				!strings.Contains(a.Err.Error(), c.want) {
				t.Errorf("err %v, damage %v after %d frames; want it after %d, at byte %d: %s", err, a.Err, a.Capture.Frames, before, at, c.want)
			}
			if len(a.Gaps) == 0 {
				t.Error("nothing analyzed before the damage")
			}
		})
	}
}

// Past max-flows the least recently seen connection is evicted and
// counted; the flows held stay within the limit.
func TestAnalyzeEvictsAtMaxFlows(t *testing.T) {
	const conns, limit = 3000, 1000
	cfg := Config{Ports: []uint16{11344}, Correlator: correlate.DefaultConfig()}
	cfg.Correlator.MaxFlows = limit
	a, err := Run(bytes.NewReader(openConns(t, conns)), cfg)
	if err != nil || a.Err != nil {
		t.Fatal(err, a.Err)
	}
	if a.Wire.Evictions != conns-limit || a.Wire.Flows != limit || a.MaxFlows != limit {
		t.Errorf("%d evictions, %d flows, limit %d; want %d, %d, %d", a.Wire.Evictions, a.Wire.Flows, a.MaxFlows, conns-limit, limit, limit)
	}
	// Each connection's one exchange came before it was evicted.
	if n := len(a.Gaps[GapKey{"192.0.2.1:11344", "request"}]); n != conns {
		t.Errorf("%d request gaps, want %d", n, conns)
	}
}
