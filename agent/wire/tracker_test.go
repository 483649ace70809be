package wire

import (
	"os"
	"path/filepath"
	"testing"

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
