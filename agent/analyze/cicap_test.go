package analyze

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/icapwatch/icapwatch/agent/correlate"
)

// The seed as a real ICAP server, c-icap, plays it (make fixtures): its
// readiness check (refused connects while c-icap starts, then an OPTIONS
// on a connection the client closes), then two connections, answered and
// idle, that hold c-icap's two workers, and a third whose handshake waits
// for c-icap's idle close of one of them; c-icap idle-closes all three.
func TestAnalyzeCICapSeed(t *testing.T) {
	for _, tc := range []struct {
		file    string
		version string
	}{{"cicap-seed-tls13.pcap", "1.3?"}, {"cicap-seed-tls12.pcap", "1.2"}} {
		t.Run(tc.file, func(t *testing.T) {
			conns, refused := accepted(t, tc.file)
			if len(conns) != 4 {
				t.Fatalf("the capture has %d accepted connections %v, want the readiness check's and the seed's 3", len(conns), conns)
			}
			ready, held, third := conns[0], conns[1:3], conns[3]
			a := analyzeFile(t, tc.file, nil)
			of := func(kind correlate.Kind, client netip.AddrPort) []correlate.Event {
				var out []correlate.Event
				for _, e := range a.Events {
					if e.Kind() == kind && e.ClientAddr == client {
						out = append(out, e)
					}
				}
				return out
			}
			if k := eventKinds(a.Events); k["stall:"+correlate.StateAckedSilent] != 1 || k[string(correlate.KindStallEnd)] != 1 ||
				k[string(correlate.KindRelease)] != 1 {
				t.Errorf("want one acked_silent stall, its end and its release; got %v", k)
			}
			if s := of(correlate.KindStall, third); len(s) != 1 || s[0].Field("phase") != "handshake" {
				t.Errorf("stalls of the third connection %s: %v, want its handshake", third, s)
			}
			if e := of(correlate.KindStallEnd, third); len(e) != 1 || e[0].Field("outcome") != correlate.OutcomeAnswered {
				t.Errorf("stall ends of %s: %v, want answered", third, e)
			}
			if r := of(correlate.KindRelease, third); len(r) != 1 ||
				(r[0].Field("sibling_client_addr") != held[0].String() && r[0].Field("sibling_client_addr") != held[1].String()) {
				t.Errorf("releases of %s: %v, want one by the close of %v", third, r, held)
			}
			// c-icap idle-closes the seed's connections: its alert in the
			// version it spoke, then its FIN, or a reset when the client's
			// own close_notify is there unread.
			for _, c := range append(held, third) {
				var server int
				for _, e := range of(correlate.KindTLSAlert, c) {
					if e.Field("direction") == "server" {
						server++
						if e.Field("tls_version") != tc.version {
							t.Errorf("%s: server alert %v, want tls_version %s", c, e, tc.version)
						}
					}
				}
				if server != 1 {
					t.Errorf("%s: %d server alerts, want its idle close's", c, server)
				}
				if cl := of(correlate.KindClose, c); len(cl) != 1 || cl[0].Field("initiator") != "server" {
					t.Errorf("%s: closes %v, want one by the server", c, cl)
				}
			}
			// A connect c-icap refused while it started is no close.
			if len(refused) == 0 {
				t.Error("the capture has no refused connect")
			}
			for _, c := range refused {
				if cl := of(correlate.KindClose, c); len(cl) != 0 {
					t.Errorf("the refused connect from %s: closes %v, want none", c, cl)
				}
			}
			// The readiness check's connection, which the client closed.
			// On TLS 1.3 its close_notify is followed by c-icap's own and
			// a reset, not by the client's FIN: that reset proves both.
			if cl := of(correlate.KindClose, ready); len(cl) != 1 || cl[0].Field("initiator") != "client" {
				t.Errorf("the readiness check's connection %s: closes %v, want one by the client", ready, cl)
			}
			var clientAlerts int
			for _, e := range of(correlate.KindTLSAlert, ready) {
				if e.Field("direction") == "client" {
					clientAlerts++
				}
			}
			if clientAlerts != 1 {
				t.Errorf("the readiness check's connection %s: %d client alerts, want its close_notify", ready, clientAlerts)
			}
		})
	}
}

// accepted lists the connections to port 21344 whose SYN the server
// answered, in the order of their SYNs, and those it refused: the
// capture's own account, read without the analysis.
func accepted(t *testing.T, name string) (accepted, refused []netip.AddrPort) {
	t.Helper()
	r := openCapture(t, name)
	var syns []netip.AddrPort
	answered := map[netip.AddrPort]bool{}
	src := gopacket.NewPacketSource(r, r.LinkType())
	for p := range src.Packets() {
		ip, _ := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
		tcp, _ := p.Layer(layers.LayerTypeTCP).(*layers.TCP)
		if ip == nil || tcp == nil || !tcp.SYN {
			continue
		}
		switch {
		case tcp.DstPort == 21344 && !tcp.ACK:
			a, _ := netip.AddrFromSlice(ip.SrcIP)
			syns = append(syns, netip.AddrPortFrom(a, uint16(tcp.SrcPort)))
		case tcp.SrcPort == 21344 && tcp.ACK:
			a, _ := netip.AddrFromSlice(ip.DstIP)
			answered[netip.AddrPortFrom(a, uint16(tcp.DstPort))] = true
		}
	}
	for _, c := range syns {
		if answered[c] {
			accepted = append(accepted, c)
		} else if !slices.Contains(refused, c) {
			refused = append(refused, c)
		}
	}
	return accepted, refused
}
