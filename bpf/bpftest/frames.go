package bpftest

import (
	"encoding/binary"
	"net/netip"
)

// TCP flag bits of a Segment.
const (
	FIN = 0x01
	SYN = 0x02
	RST = 0x04
	PSH = 0x08
	ACK = 0x10
)

// Segment describes one test frame.
type Segment struct {
	Src, Dst netip.AddrPort
	Seq, Ack uint32
	Flags    uint8
	Payload  []byte
}

// Frame builds an Ethernet frame around the TCP segment, IPv4 or IPv6 as
// the addresses are. Checksums are left zero: the classifier does not read
// them.
func (s Segment) Frame() []byte {
	tcp := make([]byte, 20+len(s.Payload))
	binary.BigEndian.PutUint16(tcp[0:], s.Src.Port())
	binary.BigEndian.PutUint16(tcp[2:], s.Dst.Port())
	binary.BigEndian.PutUint32(tcp[4:], s.Seq)
	binary.BigEndian.PutUint32(tcp[8:], s.Ack)
	tcp[12] = 5 << 4
	tcp[13] = s.Flags
	binary.BigEndian.PutUint16(tcp[14:], 65535)
	copy(tcp[20:], s.Payload)

	eth := make([]byte, 14)
	copy(eth[0:6], []byte{2, 0, 0, 0, 0, 2})
	copy(eth[6:12], []byte{2, 0, 0, 0, 0, 1})
	if s.Src.Addr().Is4() {
		binary.BigEndian.PutUint16(eth[12:], 0x0800)
		ip := make([]byte, 20)
		ip[0] = 0x45
		binary.BigEndian.PutUint16(ip[2:], uint16(20+len(tcp)))
		ip[6] = 0x40 // don't fragment
		ip[8] = 64
		ip[9] = 6
		src, dst := s.Src.Addr().As4(), s.Dst.Addr().As4()
		copy(ip[12:], src[:])
		copy(ip[16:], dst[:])
		return append(append(eth, ip...), tcp...)
	}
	binary.BigEndian.PutUint16(eth[12:], 0x86dd)
	ip := make([]byte, 40)
	ip[0] = 0x60
	binary.BigEndian.PutUint16(ip[4:], uint16(len(tcp)))
	ip[6] = 6
	ip[7] = 64
	src, dst := s.Src.Addr().As16(), s.Dst.Addr().As16()
	copy(ip[8:], src[:])
	copy(ip[24:], dst[:])
	return append(append(eth, ip...), tcp...)
}

// TLSRecord is a TLS record header followed by n bytes of filler.
func TLSRecord(typ byte, n int) []byte {
	b := make([]byte, 5+n)
	b[0], b[1], b[2] = typ, 3, 3
	binary.BigEndian.PutUint16(b[3:], uint16(n))
	return b
}

// ServerHello is a ServerHello record choosing the given cipher suite,
// followed by the records in rest.
func ServerHello(cipher uint16, rest ...[]byte) []byte {
	body := []byte{2, 0, 0, 0, 3, 3}         // ServerHello, length (unused), legacy version
	body = append(body, make([]byte, 32)...) // random
	body = append(body, 32)                  // session id length
	body = append(body, make([]byte, 32)...)
	body = binary.BigEndian.AppendUint16(body, cipher)
	body = append(body, 0, 0, 0) // compression, extensions length
	rec := []byte{0x16, 3, 3}
	rec = binary.BigEndian.AppendUint16(rec, uint16(len(body)))
	rec = append(rec, body...)
	for _, r := range rest {
		rec = append(rec, r...)
	}
	return rec
}

// Concat joins byte slices: records that share a segment.
func Concat(parts ...[]byte) []byte {
	var out []byte
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}
