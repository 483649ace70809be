// Package synth writes synthetic ICAP-over-TLS captures for benchmarks:
// many pooled connections, each carrying request/answer exchanges.
package synth

import (
	"encoding/binary"
	"io"
	"net/netip"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"
)

// Write writes about n packets to w as an Ethernet pcap: conns
// connections to server, taking turns at four packets an exchange (TLS
// request, ACK, TLS answer, ACK), a millisecond apart.
func Write(w io.Writer, n, conns int, server netip.AddrPort) error {
	pw := pcapgo.NewWriter(w)
	if err := pw.WriteFileHeader(65535, layers.LinkTypeEthernet); err != nil {
		return err
	}
	client := netip.MustParseAddr("192.0.2.10")
	seq := make([][2]uint32, conns)
	at := time.Date(2026, 11, 23, 7, 0, 0, 0, time.UTC)
	frame := make([]byte, 0, 2048)
	for i := 0; i < n; {
		for c := 0; c < conns && i < n; c++ {
			cli := netip.AddrPortFrom(client, uint16(20000+c))
			for _, p := range []struct {
				toServer bool
				payload  int
			}{{true, 600}, {false, 0}, {false, 300}, {true, 0}} {
				d := 0
				if !p.toServer {
					d = 1
				}
				src, dst := cli, server
				if !p.toServer {
					src, dst = server, cli
				}
				frame = tcpFrame(frame[:0], src, dst, seq[c][d], seq[c][1-d], p.payload)
				seq[c][d] += uint32(p.payload)
				at = at.Add(time.Millisecond)
				if err := pw.WritePacket(gopacket.CaptureInfo{Timestamp: at, CaptureLength: len(frame), Length: len(frame)}, frame); err != nil {
					return err
				}
				i++
			}
		}
	}
	return nil
}

// tcpFrame builds Ethernet + IPv4 + TCP with a TLS application data
// record header at the start of a non-empty payload.
func tcpFrame(b []byte, src, dst netip.AddrPort, seq, ack uint32, payload int) []byte {
	b = append(b, 2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00)
	total := 20 + 20 + payload
	ip := []byte{0x45, 0, byte(total >> 8), byte(total), 0, 0, 0x40, 0, 64, 6, 0, 0}
	s4, d4 := src.Addr().As4(), dst.Addr().As4()
	b = append(append(append(b, ip...), s4[:]...), d4[:]...)
	tcp := make([]byte, 20)
	binary.BigEndian.PutUint16(tcp[0:], src.Port())
	binary.BigEndian.PutUint16(tcp[2:], dst.Port())
	binary.BigEndian.PutUint32(tcp[4:], seq)
	binary.BigEndian.PutUint32(tcp[8:], ack)
	tcp[12], tcp[13] = 5<<4, 0x18
	b = append(b, tcp...)
	if payload > 0 {
		rec := []byte{0x17, 3, 3, byte((payload - 5) >> 8), byte(payload - 5)}
		b = append(b, rec...)
		b = append(b, make([]byte, payload-5)...)
	}
	return b
}
