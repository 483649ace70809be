package wire

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/gopacket/gopacket"
)

// ngFile builds a pcapng capture block by block, in a byte order.
type ngFile struct {
	b     []byte
	order binary.AppendByteOrder
}

func newNg() *ngFile { return (&ngFile{order: binary.LittleEndian}).section() }

// raw appends a block header as given, and a body: the damaged blocks.
func (f *ngFile) raw(typ, total uint32, body ...byte) *ngFile {
	f.b = f.order.AppendUint32(f.order.AppendUint32(f.b, typ), total)
	f.b = append(f.b, body...)
	return f
}

// block appends a well-formed block of the parts, padded to 4 bytes.
func (f *ngFile) block(typ uint32, parts ...[]byte) *ngFile {
	var body []byte
	for _, p := range parts {
		body = append(body, p...)
	}
	for len(body)%4 != 0 {
		body = append(body, 0)
	}
	total := uint32(12 + len(body))
	f.raw(typ, total, body...)
	f.b = f.order.AppendUint32(f.b, total)
	return f
}

func (f *ngFile) u16(v uint16) []byte { return f.order.AppendUint16(nil, v) }
func (f *ngFile) u32(v uint32) []byte { return f.order.AppendUint32(nil, v) }

func (f *ngFile) section() *ngFile {
	return f.block(ngSection, f.u32(0x1a2b3c4d), f.u16(1), f.u16(0), bytes.Repeat([]byte{0xff}, 8),
		f.opt(4, []byte("icapwatch test")...), f.opt(0))
}

// opt is one option, padded.
func (f *ngFile) opt(code uint16, v ...byte) []byte {
	b := append(append(f.u16(code), f.u16(uint16(len(v)))...), v...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

// iface is an interface of raw IP (101) frames.
func (f *ngFile) iface(snap uint32, opts ...[]byte) *ngFile {
	parts := append([][]byte{f.u16(linkRaw), f.u16(0), f.u32(snap)}, opts...)
	return f.block(ngInterface, append(parts, f.opt(0))...)
}

// packet is an enhanced packet block whose captured length says caplen.
func (f *ngFile) packet(iface, caplen uint32, data []byte) *ngFile {
	return f.block(ngEnhanced, f.u32(iface), f.u32(0x62d), f.u32(0x1a2b3c4d), f.u32(caplen), f.u32(uint32(len(data))), data)
}

// frame is one packet to port 11344, as raw IP.
func frame() []byte { return segmentTo(clientN(1), true, 0x18, 1, 40) }

func (f *ngFile) good() *ngFile { return f.packet(0, uint32(len(frame())), frame()) }

// ngCase is a crafted pcapng file, what reading it must say (nothing:
// read to the end) and the frames read before.
type ngCase struct {
	name   string
	file   []byte
	err    string
	frames uint64
}

func ngCases() []ngCase {
	fr := frame()
	n := uint32(len(fr))
	cut := newNg().iface(65535).good().good().b
	trailer := newNg().iface(65535).good().b
	copy(trailer[len(trailer)-4:], []byte{0, 1, 0, 0})
	be := &ngFile{order: binary.BigEndian}
	be.b = newNg().iface(65535).good().b
	be.section().iface(65535).good()
	return []ngCase{
		{"good", newNg().iface(65535).good().good().b, "", 2},
		{"big-endian section after a little-endian one", be.b, "", 2},
		{"if_tsresol 64", newNg().iface(65535, newNg().opt(ngTSResol, 64)).good().b, "if_tsresol 0x40", 0},
		{"if_tsresol 0xc0", newNg().iface(65535, newNg().opt(ngTSResol, 0xc0)).good().b, "if_tsresol 0xc0", 0},
		{"if_tsresol empty", newNg().iface(65535, newNg().opt(ngTSResol)).good().b, "empty if_tsresol", 0},
		{"if_tsoffset short", newNg().iface(65535, newNg().opt(ngTSOffset, 1, 2)).good().b, "if_tsoffset of 2 bytes", 0},
		{"if_tsresol 2^-63 and 10^-19", newNg().iface(65535, newNg().opt(ngTSResol, 0x80|63)).
			iface(65535, newNg().opt(ngTSResol, 19)).good().packet(1, n, fr).b, "", 2},
		{"option overruns its block", newNg().iface(65535, newNg().u16(2), newNg().u16(200), []byte("eth0")).good().b,
			"option 2 of 200 bytes overruns", 0},
		{"end of options with a value", newNg().iface(65535, newNg().opt(0, 1, 2, 3, 4)).good().b, "End of Options must be zero length", 0},
		{"caplen 0xfffffff0", newNg().iface(65535).good().packet(0, 0xfffffff0, fr).b,
			"packet of 4294967280 bytes captured, more than the 1048576 read", 1},
		{"caplen beyond its block", newNg().iface(65535).good().packet(0, 1000, fr).b, "1000 bytes captured in a block with room for", 1},
		{"snaplen 0xffffffff", newNg().iface(0xffffffff).good().good().b, "", 2},
		{"packet on an unknown interface", newNg().iface(65535).packet(3, n, fr).b, "packet on interface 3, of 1", 0},
		{"simple packet beyond its block", newNg().iface(0).block(ngSimple, newNg().u32(1000), fr).b, "room for", 0},
		{"simple packet before any interface", newNg().block(ngSimple, newNg().u32(n), fr).b, "before any interface", 0},
		{"simple packet cut to the snap length", newNg().iface(20).block(ngSimple, newNg().u32(1000), fr).b, "", 1},
		{"total length 0", newNg().iface(65535).good().raw(ngEnhanced, 0, fr...).b, "block type 6 of total length 0", 1},
		{"total length 3", newNg().iface(65535).good().raw(ngEnhanced, 3, fr...).b, "block type 6 of total length 3", 1},
		{"total length 12", newNg().iface(65535).good().raw(ngEnhanced, 12, 12, 0, 0, 0).good().b, "block type 6 of total length 12", 1},
		{"total length 0xfffffff0", newNg().iface(65535).good().raw(ngEnhanced, 0xfffffff0, fr...).b,
			"of 4294967280 bytes, more than the", 1},
		{"passed-over block of 0xfffffff0", newNg().iface(65535).good().raw(0x40000bad, 0xfffffff0, fr...).b,
			"the file ends within the block", 1},
		{"trailing length differs", trailer, "ends with 256", 0},
		{"section header of another byte order", newNg().iface(65535).good().raw(ngSection, 28, 1, 2, 3, 4).b,
			"unknown byte order 01020304", 1},
		{"cut within a block", cut[:len(cut)-7], "the file ends within the block", 1},
		{"cut within a block header", append(slices.Clip(cut), 6, 0, 0, 0, 32), "the file ends within the block", 2},
		{"decryption secrets of 4 GiB", newNg().iface(65535).good().block(10, newNg().u32(0x544c534b), newNg().u32(math.MaxUint32), fr).good().b, "", 2},
		{"name records beyond their block", newNg().iface(65535).good().block(4, newNg().u16(1), newNg().u16(0xfff0), fr).good().b, "", 2},
		{"statistics of an unknown interface", newNg().iface(65535).good().block(5, newNg().u32(9), fr[:8]).good().b, "", 2},
	}
}

// readNg reads a capture to its end: the frames read, and why it ended
// before (nil at the end).
func readNg(r io.Reader) (uint64, error) {
	c, err := OpenCapture(r)
	if err != nil {
		return 0, err
	}
	for {
		p, err := c.Next()
		if len(p.IP) > maxSnaplen {
			return c.Stats().Frames, errors.New("a packet beyond maxSnaplen")
		}
		if err == io.EOF {
			return c.Stats().Frames, nil
		}
		if err != nil {
			return c.Stats().Frames, err
		}
	}
}

// allocated is the heap f allocates, in all.
func allocated(f func()) uint64 {
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// The reader's buffers: a megabyte to read through, the largest block
// handed on, pcapgo's packet buffer of the snap length. A crafted length
// asks for no more.
const ngHeapBound = 4 << 20

// Crafted pcapng files: each says what is wrong and where, after the
// frames before it; none crashes the reader or has it allocate by what
// the file claims.
func TestPcapngDamage(t *testing.T) {
	for _, c := range ngCases() {
		t.Run(c.name, func(t *testing.T) {
			var frames uint64
			var err error
			heap := allocated(func() { frames, err = readNg(bytes.NewReader(c.file)) })
			switch {
			case c.err == "" && err != nil:
				t.Errorf("read %d frames, then %v", frames, err)
			case c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)):
				t.Errorf("read %d frames, then %v; want an error with %q", frames, err, c.err)
			case errors.Is(err, errPanic):
				t.Errorf("the library panicked: %v", err)
			}
			if frames != c.frames {
				t.Errorf("%d frames read, want %d (%v)", frames, c.frames, err)
			}
			if heap > ngHeapBound {
				t.Errorf("%d MiB allocated", heap>>20)
			}
		})
	}
}

// zeros reads as n zero bytes: a sparse file.
type zeros struct{ n, read int64 }

func (z *zeros) Read(p []byte) (int, error) {
	if z.n == 0 {
		return 0, io.EOF
	}
	n := min(int64(len(p)), z.n)
	clear(p[:n])
	z.n -= n
	z.read += n
	return int(n), nil
}

// A packet block of a gigabyte is refused from its header: the reader
// neither allocates it nor reads it.
func TestPcapngGigabytePacketUnread(t *testing.T) {
	f := newNg().iface(0)
	const gig = 1 << 30
	f.raw(ngEnhanced, gig+32, f.u32(0)...)
	f.b = append(f.b, f.u32(0)...)
	f.b = append(f.b, f.u32(0)...)
	f.b = append(append(f.b, f.u32(gig)...), f.u32(gig)...)
	sparse := &zeros{n: gig + 4}
	var frames uint64
	var err error
	heap := allocated(func() { frames, err = readNg(io.MultiReader(bytes.NewReader(f.b), sparse)) })
	if err == nil || !strings.Contains(err.Error(), "more than the") || frames != 0 {
		t.Errorf("%d frames, %v; want the block refused", frames, err)
	}
	if heap > ngHeapBound || sparse.read > 2<<20 {
		t.Errorf("%d MiB allocated, %d MiB of the packet read", heap>>20, sparse.read>>20)
	}
}

// A panic of the library is damage, not a crash.
func TestCaptureRecoversPanic(t *testing.T) {
	c := &Capture{next: func() ([]byte, gopacket.CaptureInfo, error) { panic("integer divide by zero") }}
	if _, err := c.Next(); !errors.Is(err, errPanic) || !strings.Contains(err.Error(), "after 0 frames") {
		t.Errorf("%v", err)
	}
	if _, err := c.Next(); !errors.Is(err, errPanic) {
		t.Errorf("the error does not stay: %v", err)
	}
}

// FuzzPcapng: no pcapng input crashes the reader, has the library panic,
// allocates by what it claims, or yields a packet beyond maxSnaplen. The
// seeds are ngCases (also in testdata/fuzz/FuzzPcapng) and a real capture.
func FuzzPcapng(f *testing.F) {
	for _, c := range ngCases() {
		f.Add(c.file)
	}
	if b, err := os.ReadFile(filepath.Join("..", "analyze", "testdata", "captures", "ipv6.pcapng")); err == nil {
		f.Add(b[:min(len(b), 2000)])
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) < 4 {
			return
		}
		b = append([]byte{0x0a, 0x0d, 0x0d, 0x0a}, b[4:]...) // pcapng, whatever follows
		var err error
		heap := allocated(func() { _, err = readNg(bytes.NewReader(b)) })
		if errors.Is(err, errPanic) || err != nil && strings.Contains(err.Error(), "beyond maxSnaplen") {
			t.Fatal(err)
		}
		// pcapgo keeps a record of a few hundred bytes for an interface
		// block of 20, and options as strings: in proportion to the input.
		if heap > ngHeapBound+64*uint64(len(b)) {
			t.Fatalf("%d bytes allocated for %d bytes of input", heap, len(b))
		}
	})
}
