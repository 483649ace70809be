package wire

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// pcapng block types (IETF draft-ietf-opsawg-pcapng, section 4 and
// appendix A) that pcapgo reads packets from; the others are passed over.
const (
	ngSection   = 0x0a0d0d0a
	ngInterface = 1
	ngPacketOld = 2 // the obsolete Packet Block
	ngSimple    = 3
	ngEnhanced  = 6
)

// Interface Description Block options that pcapgo turns into numbers.
const (
	ngTSResol  = 9  // if_tsresol: one byte, a power of 10, or of 2 with the top bit set
	ngTSOffset = 14 // if_tsoffset: seconds, 8 bytes
)

// maxBlock bounds a block handed on: a packet of maxSnaplen and room for
// its options. Larger blocks are damage, refused before they are read.
const maxBlock = maxSnaplen + 1<<16

// maxInterfaces bounds a section's interfaces, as the obsolete packet
// block's 16-bit interface id does: each costs pcapgo a record.
const maxInterfaces = 1 << 16

// ngGuard stands between a pcapng file and pcapgo's reader, which trusts
// the file: it hands on whole blocks it checked, and passes over the
// blocks analyze has no use for (name resolution, statistics, decryption
// secrets, custom ones) rather than have pcapgo parse them. It stops,
// with an error that says where, at what pcapgo would turn into a crash,
// a huge allocation or a silent end of the capture: a total length too
// short for the block, not a multiple of 4 or not the same at both ends,
// a file cut within a block, options that overrun their block, a
// timestamp resolution beyond 64 bits (pcapgo divides by it), a packet
// longer than its block or than maxSnaplen. An interface's snap length,
// which pcapgo sizes its packet buffer by, is lowered to maxSnaplen.
type ngGuard struct {
	r      *bufio.Reader    // at least maxBlock: a block is checked where it lies
	order  binary.ByteOrder // the current section's
	block  []byte           // what is left to hand on of a checked block, in r's buffer
	at     int64            // file offset of the next block
	ifaces int              // interfaces of the current section
	snap0  uint32           // the first one's snap length: a simple packet's
	err    error
}

// Read hands on checked blocks, as many as fit, and the error that
// stopped them once they are read.
func (g *ngGuard) Read(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		if len(g.block) == 0 {
			if g.err == nil {
				g.block, g.err = g.next()
			}
			if g.err != nil {
				break
			}
			continue
		}
		k := copy(p[n:], g.block)
		g.r.Discard(k) // buffered: the rest of the block stays where it is
		g.block, n = g.block[k:], n+k
	}
	if n > 0 {
		return n, nil
	}
	return 0, g.err
}

// next reads the next block: a checked one to hand on, still in g.r's
// buffer, or none when it passed one over.
func (g *ngGuard) next() ([]byte, error) {
	at := g.at
	hdr, err := g.r.Peek(12) // type, total length; a section's byte order
	if len(hdr) < 12 {
		if len(hdr) == 0 && errors.Is(err, io.EOF) {
			return nil, io.EOF
		}
		return nil, g.cut(at, err)
	}
	if binary.BigEndian.Uint32(hdr) == ngSection {
		switch binary.BigEndian.Uint32(hdr[8:]) {
		case 0x1a2b3c4d:
			g.order = binary.BigEndian
		case 0x4d3c2b1a:
			g.order = binary.LittleEndian
		default:
			return nil, ngDamaged(at, "section header of unknown byte order %x", hdr[8:12])
		}
		g.ifaces, g.snap0 = 0, 0
	}
	if g.order == nil {
		return nil, ngDamaged(at, "block before a section header")
	}
	typ, total := g.order.Uint32(hdr), g.order.Uint32(hdr[4:])
	if total%4 != 0 || total < ngMinBlock(typ) {
		return nil, ngDamaged(at, "block type %d of total length %d", typ, total)
	}
	g.at += int64(total)
	switch typ {
	case ngSection, ngInterface, ngPacketOld, ngSimple, ngEnhanced:
	default:
		if _, err := g.r.Discard(int(total) - 4); err != nil {
			return nil, g.cut(at, err)
		}
		var tail [4]byte
		if _, err := io.ReadFull(g.r, tail[:]); err != nil {
			return nil, g.cut(at, err)
		}
		if n := g.order.Uint32(tail[:]); n != total {
			return nil, ngDamaged(at, "block of total length %d ends with %d", total, n)
		}
		return nil, nil
	}
	if total > maxBlock {
		return nil, ngDamaged(at, "block type %d of %d bytes, more than the %d read", typ, total, maxBlock)
	}
	b, err := g.r.Peek(int(total))
	if len(b) < int(total) {
		return nil, g.cut(at, err)
	}
	if n := g.order.Uint32(b[total-4:]); n != total {
		return nil, ngDamaged(at, "block of total length %d ends with %d", total, n)
	}
	if err := g.check(typ, b[8:total-4]); err != nil {
		return nil, fmt.Errorf("pcapng block at byte %d: %w", at, err)
	}
	return b, nil
}

// ngMinBlock is the least total length of a block of the type: its
// header and trailer, and the fixed fields pcapgo reads.
func ngMinBlock(typ uint32) uint32 {
	switch typ {
	case ngSection:
		return 12 + 16 // byte order, version, section length
	case ngInterface:
		return 12 + 8 // link type, reserved, snap length
	case ngPacketOld, ngEnhanced:
		return 12 + 20 // interface, timestamp, captured and original length
	case ngSimple:
		return 12 + 4 // original length
	}
	return 12
}

// check looks at a block's body, between its total lengths.
func (g *ngGuard) check(typ uint32, body []byte) error {
	switch typ {
	case ngSection:
		return ngOptions(g.order, body[16:], nil)
	case ngInterface:
		if g.ifaces == maxInterfaces {
			return fmt.Errorf("more than %d interfaces in a section", maxInterfaces)
		}
		id := g.ifaces
		snap := g.order.Uint32(body[4:])
		if snap > maxSnaplen {
			snap = maxSnaplen
			g.order.PutUint32(body[4:], snap)
		}
		if id == 0 {
			g.snap0 = snap
		}
		g.ifaces++
		return ngOptions(g.order, body[8:], func(code uint16, v []byte) error {
			switch {
			case code == ngTSResol && len(v) < 1:
				return fmt.Errorf("interface %d: empty if_tsresol", id)
			case code == ngTSResol && (v[0]&0x80 != 0 && v[0]&0x7f > 63 || v[0]&0x80 == 0 && v[0] > 19):
				return fmt.Errorf("interface %d: if_tsresol %#x is finer than 64 bits count", id, v[0])
			case code == ngTSOffset && len(v) != 8:
				return fmt.Errorf("interface %d: if_tsoffset of %d bytes, want 8", id, len(v))
			}
			return nil
		})
	case ngPacketOld, ngEnhanced:
		iface := g.order.Uint32(body)
		if typ == ngPacketOld {
			iface = uint32(g.order.Uint16(body))
		}
		if iface >= uint32(g.ifaces) {
			return fmt.Errorf("packet on interface %d, of %d", iface, g.ifaces)
		}
		return ngCaptured(g.order.Uint32(body[12:]), len(body)-20)
	case ngSimple:
		if g.ifaces == 0 {
			return errors.New("packet before any interface")
		}
		n := g.order.Uint32(body)
		if g.snap0 != 0 && n > g.snap0 {
			n = g.snap0 // what pcapgo takes as captured
		}
		return ngCaptured(n, len(body)-4)
	}
	return nil
}

// ngCaptured checks a packet's captured length against the room for it
// in its block and against maxSnaplen.
func ngCaptured(n uint32, room int) error {
	switch {
	case n > maxSnaplen:
		return fmt.Errorf("packet of %d bytes captured, more than the %d read", n, maxSnaplen)
	case int(n) > room:
		return fmt.Errorf("packet of %d bytes captured in a block with room for %d", n, room)
	}
	return nil
}

// ngOptions walks options as pcapgo does and fails where pcapgo would
// read beyond their block, and so lose its place in the file.
func ngOptions(order binary.ByteOrder, b []byte, check func(code uint16, v []byte) error) error {
	// Blocks and the fixed fields before options come in 4-byte words.
	for len(b) >= 4 {
		code, n := order.Uint16(b), int(order.Uint16(b[2:]))
		if code == 0 { // opt_endofopt: pcapgo skips what follows
			return nil
		}
		// pcapgo adds a value's length and padding in 16 bits.
		padded := (n + 3) &^ 3
		if padded > 0xffff || 4+padded > len(b) {
			return fmt.Errorf("option %d of %d bytes overruns its block", code, n)
		}
		if check != nil {
			if err := check(code, b[4:4+n]); err != nil {
				return err
			}
		}
		b = b[4+padded:]
	}
	return nil
}

func ngDamaged(at int64, format string, args ...any) error {
	return fmt.Errorf("pcapng block at byte %d: "+format, append([]any{at}, args...)...)
}

// cut is the error of a block the file ends within, or that could not
// be read.
func (g *ngGuard) cut(at int64, err error) error {
	if err == nil || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return ngDamaged(at, "the file ends within the block")
	}
	return fmt.Errorf("pcapng block at byte %d: %w", at, err)
}
