package wire

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"
)

// ErrFormat is returned for input that is neither pcap nor pcapng.
var ErrFormat = errors.New("not a pcap or pcapng capture")

// errPanic is a panic of the capture library, recovered: the file is
// damaged in a way the checks before it missed.
var errPanic = errors.New("the capture reader failed")

// LinkTypeError is a capture whose frames are all of a link type this
// reader does not decode (a USB or Wi-Fi capture, say).
type LinkTypeError struct{ Links []layers.LinkType }

func (e *LinkTypeError) Error() string {
	names := make([]string, len(e.Links))
	for i, l := range e.Links {
		names[i] = LinkName(l)
	}
	what := "link type " + strings.Join(names, ", ") + " is"
	if len(names) > 1 {
		what = "link types " + strings.Join(names, ", ") + " are"
	}
	return fmt.Sprintf("%s not supported; icapwatch reads %s", what, supportedLinks)
}

// supportedLinks names the link types decodeLink knows, for errors.
const supportedLinks = "Ethernet (1), Linux cooked SLL (113) and SLL2 (276) as tcpdump -i any writes, " +
	"raw IP (101, 12, 228, 229) and BSD loopback (0, 108)"

// LinkName is a link type's number, and its name where gopacket knows one:
// "220 (USB)", "254".
func LinkName(l layers.LinkType) string {
	if name := l.String(); name != "" && !strings.HasPrefix(name, "UnknownLinkType") {
		return fmt.Sprintf("%d (%s)", l, name)
	}
	return fmt.Sprint(int(l))
}

// linkSupported says whether decodeLink decodes the link type.
func linkSupported(l layers.LinkType) bool {
	switch int(l) {
	case linkNull, linkEthernet, linkRaw, linkLoop, linkSLL, linkIPv4, linkIPv6, linkSLL2, linkRawAlt:
		return true
	}
	return false
}

// Link types this reader decodes (tcpdump.org/linktypes.html).
const (
	linkNull     = 0   // BSD loopback, host byte order family
	linkEthernet = 1   //
	linkRaw      = 101 // raw IPv4/IPv6
	linkLoop     = 108 // OpenBSD loopback, network byte order family
	linkSLL      = 113 // Linux cooked capture (tcpdump -i any)
	linkIPv4     = 228
	linkIPv6     = 229
	linkSLL2     = 276 // Linux cooked capture v2 (tcpdump -i any, newer)
	linkRawAlt   = 12  // raw IP on some systems
)

// maxSnaplen bounds a frame: more than any link's largest packet.
const maxSnaplen = 1 << 20

// CaptureStats count what the reader passed over.
type CaptureStats struct {
	Frames    uint64 // frames read
	NotIP     uint64 // frames without IPv4/IPv6 (ARP, ...)
	BadFrames uint64 // link headers cut short, unknown interfaces
	// OtherLink counts the frames of a pcapng interface whose link type
	// is not supported (OtherLinks names them).
	OtherLink uint64
	Bytes     uint64 // bytes of frames read
}

// Capture reads IP packets from a pcap or pcapng stream.
type Capture struct {
	next  func() ([]byte, gopacket.CaptureInfo, error)
	link  func(iface int) (layers.LinkType, error)
	stats CaptureStats
	other []layers.LinkType // unsupported link types met, in order
	err   error             // what ended reading
	// Format is "pcap" or "pcapng".
	Format string
}

// OpenCapture recognizes the format by its magic number.
func OpenCapture(r io.Reader) (_ *Capture, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("%w: %v", errPanic, p)
		}
	}()
	br := bufio.NewReaderSize(r, maxBlock)
	magic, err := br.Peek(4)
	if err != nil {
		return nil, fmt.Errorf("%w: %d bytes", ErrFormat, len(magic))
	}
	c := &Capture{}
	switch binary.BigEndian.Uint32(magic) {
	case 0x0a0d0d0a: // pcapng section header block
		// Each interface has its own link type (dumpcap -i eth0 -i
		// wlan0mon writes two): pcapgo's default would drop the frames of
		// every interface whose type differs from the first one's.
		opts := pcapgo.DefaultNgReaderOptions
		opts.WantMixedLinkType = true
		// pcapgo trusts the file's lengths and options: the guard checks
		// each block before pcapgo reads it.
		ng, err := pcapgo.NewNgReader(&ngGuard{r: br}, opts)
		if err != nil {
			return nil, fmt.Errorf("pcapng: %w", err)
		}
		c.Format, c.next = "pcapng", ng.ZeroCopyReadPacketData
		c.link = func(i int) (layers.LinkType, error) {
			iface, err := ng.Interface(i)
			return iface.LinkType, err
		}
	case 0xa1b2c3d4, 0xd4c3b2a1, 0xa1b23c4d, 0x4d3cb2a1:
		pr, err := pcapgo.NewReader(br)
		if err != nil {
			return nil, fmt.Errorf("pcap: %w", err)
		}
		// The header's snap length sizes the read buffer: a damaged one
		// must not ask for gigabytes.
		if pr.Snaplen() > maxSnaplen {
			pr.SetSnaplen(maxSnaplen)
		}
		// One link type for the whole file: an unsupported one is said
		// at once, not as every frame being unreadable.
		if !linkSupported(pr.LinkType()) {
			return nil, &LinkTypeError{[]layers.LinkType{pr.LinkType()}}
		}
		c.Format, c.next = "pcap", pr.ZeroCopyReadPacketData
		c.link = func(int) (layers.LinkType, error) { return pr.LinkType(), nil }
	default:
		return nil, fmt.Errorf("%w (magic %x)", ErrFormat, magic)
	}
	return c, nil
}

// Stats returns the counters so far.
func (c *Capture) Stats() CaptureStats { return c.stats }

// OtherLinks are the unsupported link types of the pcapng interfaces
// whose frames were passed over (a pcap file with one is refused at open).
func (c *Capture) OtherLinks() []layers.LinkType { return c.other }

// Next returns the next IP packet. Frames that carry none are counted
// and passed over. At the end it returns io.EOF; a damaged file gives
// another error, after every packet before the damage.
func (c *Capture) Next() (Packet, error) {
	for {
		if c.err != nil {
			return Packet{}, c.err
		}
		data, ci, err := c.read()
		if err != nil {
			c.err = io.EOF
			if !errors.Is(err, io.EOF) {
				c.err = fmt.Errorf("after %d frames: %w", c.stats.Frames, err)
			}
			return Packet{}, c.err
		}
		c.stats.Frames++
		c.stats.Bytes += uint64(len(data))
		link, err := c.link(ci.InterfaceIndex)
		if err != nil {
			c.stats.BadFrames++
			continue
		}
		if !linkSupported(link) {
			// A pcapng file can mix interfaces: the others are still read.
			c.stats.OtherLink++
			if !slices.Contains(c.other, link) {
				c.other = append(c.other, link)
			}
			continue
		}
		p, ok, bad := decodeLink(link, data)
		switch {
		case bad:
			c.stats.BadFrames++
			continue
		case !ok:
			c.stats.NotIP++
			continue
		}
		p.Time = ci.Timestamp
		if p.Ifindex == 0 {
			// pcapng interfaces (and a single pcap one) stand for ifindex.
			p.Ifindex = uint32(ci.InterfaceIndex) + 1
		}
		return p, nil
	}
}

// read is the library's next frame; a panic in it is damage, not a crash.
func (c *Capture) read() (data []byte, ci gopacket.CaptureInfo, err error) {
	defer func() {
		if p := recover(); p != nil {
			data, err = nil, fmt.Errorf("%w: %v", errPanic, p)
		}
	}()
	return c.next()
}

// decodeLink finds the IP packet in a frame: ok when there is one, bad
// when the link header is cut short or the link type unknown.
func decodeLink(link layers.LinkType, b []byte) (p Packet, ok, bad bool) {
	var proto uint16
	switch int(link) {
	case linkEthernet:
		if len(b) < 14 {
			return p, false, true
		}
		proto, b = binary.BigEndian.Uint16(b[12:]), b[14:]
		for proto == 0x8100 || proto == 0x88a8 { // VLAN tags
			if len(b) < 4 {
				return p, false, true
			}
			proto, b = binary.BigEndian.Uint16(b[2:]), b[4:]
		}
	case linkSLL:
		if len(b) < 16 {
			return p, false, true
		}
		if binary.BigEndian.Uint16(b[0:]) == 4 { // PACKET_OUTGOING
			p.Hook = HookEgress
		}
		proto, b = binary.BigEndian.Uint16(b[14:]), b[16:]
	case linkSLL2:
		if len(b) < 20 {
			return p, false, true
		}
		proto = binary.BigEndian.Uint16(b[0:])
		p.Ifindex = binary.BigEndian.Uint32(b[4:])
		if b[10] == 4 {
			p.Hook = HookEgress
		}
		b = b[20:]
	case linkRaw, linkRawAlt, linkIPv4, linkIPv6:
		p.IP = b
		return p, len(b) > 0 && (b[0]>>4 == 4 || b[0]>>4 == 6), len(b) == 0
	case linkNull, linkLoop:
		if len(b) < 4 {
			return p, false, true
		}
		family := binary.LittleEndian.Uint32(b)
		if int(link) == linkLoop || family > 0xffff {
			family = binary.BigEndian.Uint32(b)
		}
		switch family {
		case 2:
			proto = 0x0800
		case 10, 24, 28, 30: // AF_INET6 on Linux, NetBSD/OpenBSD, FreeBSD, Darwin
			proto = 0x86dd
		}
		b = b[4:]
	default:
		return p, false, true
	}
	if proto != 0x0800 && proto != 0x86dd {
		return p, false, false
	}
	p.IP = b
	return p, true, false
}

func layersLinkType(l int) layers.LinkType { return layers.LinkType(l) }
