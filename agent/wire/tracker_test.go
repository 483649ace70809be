package wire

import (
	"encoding/binary"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/icapwatch/icapwatch/agent/observe"
)

// An -i any capture can hold a packet twice, once per interface it
// crossed: the second sighting is counted, not observed.
func TestSecondSightingIsDropped(t *testing.T) {
	f, err := os.Open(filepath.Join("..", "analyze", "testdata", "captures", "seed-tls13.pcap"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	c, err := OpenCapture(f)
	if err != nil {
		t.Fatal(err)
	}
	once, twice := NewTracker([]uint16{21344}, 1024), NewTracker([]uint16{21344}, 1024)
	var a, b []observe.Observation
	for {
		p, err := c.Next()
		if err != nil {
			break
		}
		once.Packet(p, func(o observe.Observation) { a = append(a, o) })
		twice.Packet(p, func(o observe.Observation) { b = append(b, o) })
		p.Ifindex, p.Hook = 7, HookIngress // the same packet, seen on a veth
		twice.Packet(p, func(o observe.Observation) { b = append(b, o) })
	}
	if len(a) == 0 || len(a) != len(b) {
		t.Fatalf("%d observations once, %d with every packet twice", len(a), len(b))
	}
	if st := twice.Stats(); st.Duplicates != st.Watched/2 {
		t.Errorf("duplicates %d of %d watched", st.Duplicates, st.Watched)
	}
}

func TestDecodeLinkTypes(t *testing.T) {
	ip := []byte{0x45, 0, 0, 20}
	for _, c := range []struct {
		name  string
		link  int
		frame []byte
		ok    bool
		hook  Hook
		index uint32
	}{
		{"ethernet", linkEthernet, append([]byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x08, 0}, ip...), true, HookIngress, 0},
		{"ethernet vlan", linkEthernet, append([]byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x81, 0, 0, 1, 0x86, 0xdd}, 0x60), true, HookIngress, 0},
		{"ethernet arp", linkEthernet, []byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x08, 0x06, 1}, false, 0, 0},
		{"sll outgoing", linkSLL, append([]byte{0, 4, 0, 1, 0, 6, 0, 0, 0, 0, 0, 0, 0, 0, 0x08, 0}, ip...), true, HookEgress, 0},
		{"sll2", linkSLL2, append([]byte{0x08, 0, 0, 0, 0, 0, 0, 3, 0, 1, 4, 6, 0, 0, 0, 0, 0, 0, 0, 0}, ip...), true, HookEgress, 3},
		{"raw", linkRaw, ip, true, HookIngress, 0},
		{"bsd loopback", linkNull, append([]byte{2, 0, 0, 0}, ip...), true, HookIngress, 0},
		{"cut short", linkSLL2, []byte{0x08, 0}, false, 0, 0},
	} {
		p, ok, _ := decodeLink(layersLinkType(c.link), c.frame)
		if ok != c.ok || ok && (p.Hook != c.hook || p.Ifindex != c.index || len(p.IP) == 0) {
			t.Errorf("%s: ok %v hook %d ifindex %d ip %d bytes", c.name, ok, p.Hook, p.Ifindex, len(p.IP))
		}
	}
}

// segmentTo is an IPv4 TCP segment between a client and port 11344 of
// 192.0.2.1, with a TLS application data record header when n >= 5.
func segmentTo(client netip.AddrPort, toServer bool, flags byte, seq uint32, n int) []byte {
	server := netip.MustParseAddrPort("192.0.2.1:11344")
	src, dst := client, server
	if !toServer {
		src, dst = server, client
	}
	b := make([]byte, 40+n)
	b[0], b[8], b[9] = 0x45, 64, 6
	binary.BigEndian.PutUint16(b[2:], uint16(len(b)))
	s4, d4 := src.Addr().As4(), dst.Addr().As4()
	copy(b[12:], s4[:])
	copy(b[16:], d4[:])
	binary.BigEndian.PutUint16(b[20:], src.Port())
	binary.BigEndian.PutUint16(b[22:], dst.Port())
	binary.BigEndian.PutUint32(b[24:], seq)
	b[32], b[33] = 5<<4, flags
	if n >= 5 {
		copy(b[40:], []byte{0x17, 3, 3, byte((n - 5) >> 8), byte(n - 5)})
	}
	return b
}

// clientN is the i-th of up to 9 million clients, none on the server's port.
func clientN(i int) netip.AddrPort {
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 0, 2, byte(10 + i/40000)}), uint16(20000+i%40000))
}

// At the limit the flow whose last packet is the oldest goes, and among
// packets of the same instant (a capture's clock is coarse) the one read
// first: a flow heard from again moves to the back.
func TestEvictsLeastRecentlySeen(t *testing.T) {
	tr := NewTracker([]uint16{11344}, 3)
	at := time.Date(2026, 11, 23, 7, 0, 0, 0, time.UTC)
	send := func(i int) {
		tr.Packet(Packet{Time: at, IP: segmentTo(clientN(i), true, 0x18, 1, 40)}, func(observe.Observation) {})
	}
	kept := func() []int {
		var c []int
		for k := range tr.flows {
			c = append(c, int(k.Client.Port())-20000)
		}
		slices.Sort(c)
		return c
	}
	for _, i := range []int{1, 2, 3, 1, 4, 5} {
		send(i)
	}
	if left := kept(); !slices.Equal(left, []int{1, 4, 5}) || tr.Stats().Evictions != 2 {
		t.Errorf("flows %v after %d evictions, want 1 4 5 after 2 (2 and 3 least recently seen)", left, tr.Stats().Evictions)
	}
	// A flow reset and quiet for long is forgotten; the order stays whole.
	tr.Packet(Packet{Time: at, IP: segmentTo(clientN(5), true, 0x04, 41, 0)}, func(observe.Observation) {})
	at = at.Add(2 * closedLinger)
	tr.gc(at)
	send(6)
	send(2)
	if left := kept(); !slices.Equal(left, []int{2, 4, 6}) || tr.Stats().Evictions != 3 {
		t.Errorf("flows %v after %d evictions, want 2 4 6 after 3 (5 forgotten, 1 evicted)", left, tr.Stats().Evictions)
	}
}

// Keeping within the limit costs a step a new flow, not a walk of the
// table: a capture of many more connections than the limit stays linear.
func TestEvictionIsConstantWork(t *testing.T) {
	const limit, conns = 1000, 50000
	tr := NewTracker([]uint16{11344}, limit)
	at := time.Date(2026, 11, 23, 7, 0, 0, 0, time.UTC)
	for i := range conns {
		for _, toServer := range []bool{true, false} {
			at = at.Add(time.Millisecond)
			tr.Packet(Packet{Time: at, IP: segmentTo(clientN(i), toServer, 0x18, 1, 40)}, func(observe.Observation) {})
		}
	}
	st := tr.Stats()
	if st.Evictions != conns-limit || st.Flows != limit {
		t.Fatalf("%d evictions, %d flows; want %d and %d", st.Evictions, st.Flows, conns-limit, limit)
	}
	// Each eviction looks at one flow; each gc at the flows quiet long
	// enough to go, and one more.
	gcs := st.Packets / gcEvery
	if bound := st.Evictions + gcs*(limit+1); tr.visits > bound {
		t.Errorf("%d flows looked at for %d evictions and %d collections, want at most %d", tr.visits, st.Evictions, gcs, bound)
	}
}

// A server that closes with the client's close_notify unread resets
// instead of sending its FIN: the reset right behind a held 19-byte record
// proves it a close_notify, which comes with the reset and holds the
// record's time in Ref. A reset elsewhere proves nothing.
func TestResetProvesHeldCloseNotify(t *testing.T) {
	for _, tc := range []struct {
		name     string
		resetSeq uint32
		alert    bool
	}{{"right behind the record", 230, true}, {"further on", 330, false}} {
		t.Run(tc.name, func(t *testing.T) {
			tr := NewTracker([]uint16{11344}, 16)
			cli := netip.MustParseAddrPort("192.0.2.10:40000")
			var got []observe.Observation
			send := func(ms int, toServer bool, flags byte, seq uint32, n int) {
				tr.Packet(Packet{Time: time.Unix(0, 0).Add(time.Duration(ms) * time.Millisecond), IP: segmentTo(cli, toServer, flags, seq, n)},
					func(o observe.Observation) { got = append(got, o) })
			}
			send(0, true, 0x18, 1, 305)   // the request
			send(1, false, 0x18, 1, 205)  // the answer
			send(2, false, 0x18, 206, 24) // close_notify, held
			send(7, false, 0x14, tc.resetSeq, 0)
			var kinds []observe.Kind
			for _, o := range got {
				kinds = append(kinds, o.Kind)
			}
			want := []observe.Kind{observe.ExchangeStart, observe.Answer, observe.RST}
			if tc.alert {
				want = []observe.Kind{observe.ExchangeStart, observe.Answer, observe.TLSAlert, observe.RST}
			}
			if !slices.Equal(kinds, want) {
				t.Fatalf("observations %v, want %v", kinds, want)
			}
			if !tc.alert {
				return
			}
			a := got[2]
			if a.Dir != observe.ToClient || a.Flags&observe.Probable == 0 || a.Seq != 206 || a.Len != 24 {
				t.Errorf("alert %+v: want the server's probable close_notify at seq 206, 24 bytes", a)
			}
			if !a.Time.Equal(got[3].Time) || !a.Ref.Equal(time.Unix(0, 0).Add(2*time.Millisecond)) {
				t.Errorf("alert at %v with Ref %v: want the reset's time and the record's", a.Time, a.Ref)
			}
		})
	}
}
