package bpf

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/features"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/perf"
	"github.com/cilium/ebpf/ringbuf"
	"github.com/cilium/ebpf/rlimit"
	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"
)

// Probe is the loaded and attached kernel side. Read its events with
// Read; Close detaches everything it attached.
type Probe struct {
	log     hclog.Logger
	coll    *ebpf.Collection
	tc      *tcAttacher
	links   []link.Link
	perf    *perf.Reader
	ring    *ringbuf.Reader
	perfRec perf.Record // reused by each read
	ringRec ringbuf.Record
	output  string
	poll    time.Duration // how often Read looks for events without a wakeup
	lost    atomic.Uint64 // samples the perf reader reported lost
	// deadline is the caller's, set by SetDeadline; Read polls until then.
	deadline atomic.Pointer[time.Time]
	wallOff  time.Duration // wall clock minus monotonic clock

	// statsMu guards the flow counting's state.
	statsMu   sync.Mutex
	noBatch   bool // the kernel has no BPF_MAP_LOOKUP_BATCH
	batchKeys []icapwatchFlowKey
	batchVals []icapwatchFlow

	mu       sync.Mutex
	hooks    []HookStatus
	unmount  string // tracefs mounted by Open, unmounted by Close
	closeErr error
	closed   sync.Once
}

// Open loads the programs, attaches them and starts the event buffer.
// Optional hooks that fail are reported by Hooks, not returned.
func Open(cfg Config) (p *Probe, err error) {
	p, kprobes, err := load(cfg)
	if err != nil {
		return nil, err
	}
	if err := p.attach(cfg, kprobes); err != nil {
		p.Close()
		return nil, err
	}
	return p, nil
}

// loadOptions are for tests.
type loadOptions struct {
	// verifyKprobes loads the kprobe programs even where the kernel has no
	// kprobes to attach them to (the program type exists wherever
	// tracepoint programs do), so the verifier checks them.
	verifyKprobes bool
	// edit changes each spec before it is loaded, to make a load fail.
	edit func(*ebpf.CollectionSpec)
}

// load prepares the kernel side without attaching anything: Program.Run
// tests use it as it is.
func load(cfg Config) (p *Probe, kprobes bool, err error) {
	return loadWith(cfg, loadOptions{})
}

func loadWith(cfg Config, opts loadOptions) (p *Probe, kprobes bool, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, false, err
	}
	log := cfg.Logger
	if log == nil {
		log = hclog.NewNullLogger()
	}
	p = &Probe{log: log}
	opened := p // the error returns below clear p
	defer func() {
		if err != nil {
			opened.Close()
		}
	}()

	// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK. Without
	// CAP_SYS_RESOURCE the limit stays, which matters only if the load then
	// fails: the error says both.
	memlockErr := rlimit.RemoveMemlock()
	if memlockErr != nil {
		log.Debug("RLIMIT_MEMLOCK not raised", "error", memlockErr)
	}
	root, mounted, err := ensureTracefs()
	if err != nil {
		return nil, false, err
	}
	if mounted {
		p.unmount = root
		log.Info("mounted tracefs", "path", root)
	}
	settings, err := tracepointSettings(root)
	if err != nil {
		return nil, false, err
	}
	kprobes = cfg.Kprobes != KprobesOff
	if kprobes && !opts.verifyKprobes {
		if reason := kprobeSettings(&settings); reason != "" {
			kprobes = false
			p.addHook(HookStatus{Name: HookSendmsg, Optional: true, Error: reason})
			p.addHook(HookStatus{Name: HookCleanupRbuf, Optional: true, Error: reason})
		}
	}

	output := cfg.Output
	if output == ModeAuto {
		output = OutputPerf
		if features.HaveMapType(ebpf.RingBuf) == nil {
			output = OutputRing
		}
	}
	// What to try, best first: an optional program or the ring buffer
	// that the kernel refuses costs the upgrade, not the agent.
	type attempt struct {
		output  string
		kprobes bool
	}
	attempts := []attempt{{output, kprobes}}
	if kprobes {
		attempts = append(attempts, attempt{output, false})
	}
	if output == OutputRing && cfg.Output == ModeAuto {
		attempts = append(attempts, attempt{OutputPerf, kprobes})
		if kprobes {
			attempts = append(attempts, attempt{OutputPerf, false})
		}
	}
	var kprobeErr, ringErr error // the last of each variant's
	for _, try := range attempts {
		p.output = try.output
		p.coll, err = loadCollection(cfg, try.output, try.kprobes, opts.edit)
		if err == nil {
			if try.kprobes != kprobes && kprobeErr != nil {
				kprobes = false
				why := "not loaded: " + kprobeErr.Error()
				p.addHook(HookStatus{Name: HookSendmsg, Optional: true, Error: why})
				p.addHook(HookStatus{Name: HookCleanupRbuf, Optional: true, Error: why})
				log.Warn("optional kprobe programs did not load; running without them", "error", kprobeErr)
			}
			if try.output != output {
				log.Warn("the ring buffer object did not load; events go through the perf buffer",
					"error", ringErr)
			}
			break
		}
		if try.kprobes {
			kprobeErr = err
		}
		if try.output == OutputRing {
			ringErr = err
		}
	}
	if err != nil {
		// The last attempt is the baseline: its error is what stops us.
		return nil, false, loadError(err, memlockErr)
	}
	if err := p.configure(cfg, settings); err != nil {
		return nil, false, err
	}
	if err := p.openReader(cfg); err != nil {
		return nil, false, err
	}
	p.wallOff = wallOffset()
	p.poll = cfg.Poll
	return p, kprobes, nil
}

// loadCollection loads one variant of the object.
func loadCollection(cfg Config, output string, kprobes bool, edit func(*ebpf.CollectionSpec)) (*ebpf.Collection, error) {
	spec, err := loadSpec(output)
	if err != nil {
		return nil, err
	}
	spec.Maps["flows"].MaxEntries = cfg.MaxFlows
	if output == OutputRing {
		spec.Maps["events"].MaxEntries = uint32(cfg.RingBuffer)
	}
	if !kprobes {
		for name, prog := range spec.Programs {
			if prog.Type == ebpf.Kprobe {
				delete(spec.Programs, name)
			}
		}
	}
	if edit != nil {
		edit(spec)
	}
	return ebpf.NewCollection(spec)
}

func (p *Probe) attach(cfg Config, kprobes bool) error {
	tc, err := newTCAttacher(cfg, p.coll.Programs["icapwatch_ingress"],
		p.coll.Programs["icapwatch_egress"], p.log.Named("tc"))
	if err != nil {
		return err
	}
	p.mu.Lock()
	p.tc = tc
	p.mu.Unlock()
	for _, tp := range []struct{ hook, group, name, prog string }{
		{HookSetState, "sock", "inet_sock_set_state", "icapwatch_state"},
		{HookRetransmitSKB, "tcp", "tcp_retransmit_skb", "icapwatch_retransmit"},
	} {
		l, err := link.Tracepoint(tp.group, tp.name, p.coll.Programs[tp.prog], nil)
		if err != nil {
			return fmt.Errorf("attach tracepoint %s/%s: %w", tp.group, tp.name, tracepointError(err))
		}
		p.links = append(p.links, l)
		p.addHook(HookStatus{Name: tp.hook, Attached: true, Mode: "perf_event"})
	}
	if !kprobes {
		return nil
	}
	for _, kp := range []struct{ hook, symbol, prog string }{
		{HookSendmsg, "tcp_sendmsg", "icapwatch_sendmsg"},
		{HookCleanupRbuf, "tcp_cleanup_rbuf", "icapwatch_cleanup_rbuf"},
	} {
		st := HookStatus{Name: kp.hook, Optional: true, Mode: "kprobe"}
		if l, err := link.Kprobe(kp.symbol, p.coll.Programs[kp.prog], nil); err != nil {
			st.Error = err.Error()
			p.log.Info("optional kprobe not attached", "symbol", kp.symbol, "error", err)
		} else {
			st.Attached = true
			p.links = append(p.links, l)
		}
		p.addHook(st)
	}
	return nil
}

func loadSpec(output string) (*ebpf.CollectionSpec, error) {
	load := loadIcapwatch
	if output == OutputRing {
		load = loadIcapwatchRingbuf
	}
	spec, err := load()
	if err != nil {
		return nil, fmt.Errorf("read embedded eBPF object: %w", err)
	}
	// It only carries the enum types for bpf2go.
	delete(spec.Maps, "exported_types")
	return spec, nil
}

// Capabilities, as the errors name them.
const (
	capsLoad       = "CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN, or CAP_SYS_ADMIN on kernels before 5.8"
	capsTracepoint = "CAP_PERFMON, or CAP_SYS_ADMIN on kernels before 5.8"
)

// loadError keeps the verifier's log and says which capability is missing.
func loadError(err, memlockErr error) error {
	var ve *ebpf.VerifierError
	if errors.As(err, &ve) {
		return fmt.Errorf("load eBPF programs: the verifier refused them:\n%+v", ve)
	}
	if errors.Is(err, unix.EPERM) {
		if memlockErr != nil {
			return fmt.Errorf("load eBPF programs: %w (needs %s; on kernels before 5.11 also CAP_SYS_RESOURCE to raise RLIMIT_MEMLOCK, which failed: %v)",
				err, capsLoad, memlockErr)
		}
		return fmt.Errorf("load eBPF programs: %w (needs %s)", err, capsLoad)
	}
	return fmt.Errorf("load eBPF programs: %w", err)
}

// needs adds the missing capability to a permission error.
func needs(err error, caps string) error {
	if errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES) {
		return fmt.Errorf("%w (needs %s)", err, caps)
	}
	return err
}

// tracepointError: the tracepoint's ID comes from a tracefs file, the
// attach is a perf event.
func tracepointError(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return needs(err, capsTracefs)
	}
	return needs(err, capsTracepoint)
}

// configure writes the settings and the watched-port bitmap.
func (p *Probe) configure(cfg Config, settings icapwatchConfig) error {
	if err := p.coll.Maps["config_map"].Put(uint32(0), settings); err != nil {
		return fmt.Errorf("write settings map: %w", err)
	}
	bitmap := map[uint32]uint32{}
	for _, port := range cfg.Ports {
		bitmap[uint32(port)>>5] |= 1 << (port & 31)
	}
	for idx, bits := range bitmap {
		if err := p.coll.Maps["ports"].Put(idx, bits); err != nil {
			return fmt.Errorf("write ports map: %w", err)
		}
	}
	return nil
}

func (p *Probe) openReader(cfg Config) error {
	var err error
	if p.output == OutputRing {
		p.ring, err = ringbuf.NewReader(p.coll.Maps["events"])
	} else {
		p.perf, err = perf.NewReaderWithOptions(p.coll.Maps["events"], cfg.PerCPUBuffer,
			perf.ReaderOptions{Watermark: cfg.PerCPUBuffer / 2})
	}
	if err != nil {
		return fmt.Errorf("open %s event buffer: %w", p.output, err)
	}
	// A deadline in the past: reads never block in the kernel (see Read).
	past := time.Unix(1, 0)
	if p.ring != nil {
		p.ring.SetDeadline(past)
	} else {
		p.perf.SetDeadline(past)
	}
	return nil
}

// Output says which buffer carries the events: perf or ringbuf.
func (p *Probe) Output() string { return p.output }

// Read blocks until the next event. The kernel does not wake the reader
// for each event: when none is waiting, Read sleeps for Config.Poll and
// looks again, so the buffers must hold what comes in one poll. After
// Close it returns an error that wraps os.ErrClosed; after a deadline set
// by SetDeadline, one that wraps os.ErrDeadlineExceeded. One goroutine
// reads.
//
// The sleep is the runtime's, not a blocking epoll_wait: a thread blocked
// in a system call for long makes the Go scheduler's monitor wake every
// 20 µs for a while after taking its processor back, which on a virtual
// machine cost more than reading the events.
func (p *Probe) Read() (Event, error) {
	for {
		ev, err := p.readOne()
		if err == nil {
			return ev, nil
		}
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			return Event{}, readError(err)
		}
		wait := p.poll
		if user := p.deadline.Load(); user != nil {
			left := time.Until(*user)
			if left <= 0 {
				return Event{}, fmt.Errorf("read events: %w", err)
			}
			wait = min(wait, left)
		}
		time.Sleep(wait)
	}
}

// ReadBatch is Read, then the events already waiting behind the first, up
// to len(buf) in all: a burst costs its reader one hand-over. It returns how
// many events it put in buf.
func (p *Probe) ReadBatch(buf []Event) (int, error) {
	if len(buf) == 0 {
		return 0, nil
	}
	ev, err := p.Read()
	if err != nil {
		return 0, err
	}
	buf[0] = ev
	n := 1
	for ; n < len(buf); n++ {
		if buf[n], err = p.readOne(); err != nil {
			break // none waiting, or closed: the next Read says
		}
	}
	return n, nil
}

// readOne reads the next event if one is waiting, and returns an error
// that wraps os.ErrDeadlineExceeded if none is. The records are reused:
// events are decoded out of them.
func (p *Probe) readOne() (Event, error) {
	for {
		var raw []byte
		var err error
		if p.ring != nil {
			err = p.ring.ReadInto(&p.ringRec)
			raw = p.ringRec.RawSample
		} else {
			err = p.perf.ReadInto(&p.perfRec)
			if err == nil && p.perfRec.LostSamples > 0 {
				p.lost.Add(p.perfRec.LostSamples)
				continue
			}
			raw = p.perfRec.RawSample
		}
		if err != nil {
			return Event{}, err
		}
		ev, err := DecodeEvent(raw)
		if err != nil {
			p.lost.Add(1)
			continue
		}
		ev.Time = time.Unix(0, 0).Add(ev.Mono + p.wallOff)
		return ev, nil
	}
}

// SetDeadline makes a blocked Read return os.ErrDeadlineExceeded at t; the
// zero time removes the deadline.
func (p *Probe) SetDeadline(t time.Time) {
	if t.IsZero() {
		p.deadline.Store(nil)
		return
	}
	p.deadline.Store(&t)
}

func readError(err error) error {
	if errors.Is(err, perf.ErrClosed) || errors.Is(err, ringbuf.ErrClosed) {
		return fmt.Errorf("read events: %w", os.ErrClosed)
	}
	return fmt.Errorf("read events: %w", err)
}

// Hooks lists every hook with its state, TC first.
func (p *Probe) Hooks() []HookStatus {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []HookStatus
	if p.tc != nil {
		out = append(out, p.tc.status()...)
	}
	return append(out, p.hooks...)
}

func (p *Probe) addHook(h HookStatus) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i := range p.hooks {
		if p.hooks[i].Name == h.Name {
			p.hooks[i] = h
			return
		}
	}
	p.hooks = append(p.hooks, h)
}

// counters are the fields the kernel's counters fill, in the order of
// enum counter.
func (s *Stats) counters() []*uint64 {
	return []*uint64{&s.Watched, &s.Duplicates, &s.Malformed, &s.FlowsCreated,
		&s.FlowsDeleted, &s.FlowsFull, &s.Events, &s.EventsLost, &s.Tracepoint, &s.Kprobe}
}

// Stats reads the kernel counters. With countFlows it also counts the
// flow table's entries, for Flows and FlowEvictions: in batches of
// flowBatch entries a system call (kernels 5.6+), else one entry a call.
// A full default table (65536 flows) takes a few milliseconds in batches:
// cheap enough every few seconds, not for every event.
func (p *Probe) Stats(countFlows bool) (Stats, error) {
	var s Stats
	var perCPU []uint64
	for i, f := range s.counters() {
		if err := p.coll.Maps["counters"].Lookup(uint32(i), &perCPU); err != nil {
			return s, fmt.Errorf("read counters: %w", err)
		}
		for _, v := range perCPU {
			*f += v
		}
	}
	s.EventsLost += p.lost.Load()
	if !countFlows {
		return s, nil
	}
	n, err := p.countFlows()
	if err != nil {
		return s, fmt.Errorf("count flows: %w", err)
	}
	s.Flows = n
	// Flows created while we counted make this an underestimate, never
	// an overestimate.
	if gone := s.FlowsDeleted + uint64(s.Flows); s.FlowsCreated > gone {
		s.FlowEvictions = s.FlowsCreated - gone
	}
	return s, nil
}

// flowBatch is how many flow entries one batch lookup returns at most.
const flowBatch = 1024

// countFlows counts the flow table, one caller at a time (the buffers are
// reused).
func (p *Probe) countFlows() (int, error) {
	p.statsMu.Lock()
	defer p.statsMu.Unlock()
	m := p.coll.Maps["flows"]
	if !p.noBatch {
		if p.batchKeys == nil {
			p.batchKeys = make([]icapwatchFlowKey, flowBatch)
			p.batchVals = make([]icapwatchFlow, flowBatch)
		}
		var cursor ebpf.MapBatchCursor
		total := 0
		for {
			n, err := m.BatchLookup(&cursor, p.batchKeys, p.batchVals, nil)
			total += n
			if errors.Is(err, ebpf.ErrKeyNotExist) {
				return total, nil // the end
			}
			if err == nil {
				continue
			}
			if errors.Is(err, ebpf.ErrNotSupported) {
				p.noBatch = true
				p.batchKeys, p.batchVals = nil, nil
				p.log.Debug("no batch lookups on this kernel: counting flows one by one")
			} else {
				// ENOSPC: a hash bucket larger than the batch.
				p.log.Debug("batch lookup failed: counting flows one by one", "error", err)
			}
			break
		}
	}
	var key icapwatchFlowKey
	var val icapwatchFlow
	n := 0
	it := m.Iterate()
	for it.Next(&key, &val) {
		n++
	}
	return n, it.Err()
}

// Programs returns the loaded programs by name, for statistics and tests.
func (p *Probe) Programs() map[string]*ebpf.Program { return p.coll.Programs }

// Close detaches every hook, closes the buffer and the objects. It is safe
// to call more than once.
func (p *Probe) Close() error {
	p.closed.Do(func() {
		var errs []error
		if p.tc != nil {
			errs = append(errs, p.tc.close())
		}
		for _, l := range p.links {
			errs = append(errs, l.Close())
		}
		if p.perf != nil {
			errs = append(errs, p.perf.Close())
		}
		if p.ring != nil {
			errs = append(errs, p.ring.Close())
		}
		if p.coll != nil {
			p.coll.Close()
		}
		if p.unmount != "" {
			errs = append(errs, unix.Unmount(p.unmount, unix.MNT_DETACH))
		}
		p.closeErr = errors.Join(errs...)
	})
	return p.closeErr
}

// wallOffset is the wall clock minus CLOCK_MONOTONIC, the clock of
// bpf_ktime_get_ns.
func wallOffset() time.Duration {
	var ts unix.Timespec
	before := time.Now()
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return 0
	}
	return time.Duration(before.UnixNano() - ts.Nano())
}

// ensureTracefs finds tracefs or mounts it at the standard place.
func ensureTracefs() (root string, mounted bool, err error) {
	root, err = FindTracefs()
	if err == nil {
		return root, false, nil
	}
	if !errors.Is(err, ErrNoTracefs) {
		return "", false, err // there, but not for us
	}
	root = TracefsPaths[0]
	if err := unix.Mount("nodev", root, "tracefs", 0, ""); err != nil {
		if errors.Is(err, unix.EPERM) {
			return "", false, fmt.Errorf("%w (mounting it needs CAP_SYS_ADMIN)", ErrNoTracefs)
		}
		return "", false, fmt.Errorf("%w (mount failed: %v)", ErrNoTracefs, err)
	}
	return root, true, nil
}

// tracepointSettings takes the tracepoint field offsets from tracefs.
func tracepointSettings(root string) (icapwatchConfig, error) {
	var c icapwatchConfig
	type want struct {
		name     string
		dst      *uint16
		sizes    []int
		optional bool
	}
	tuple := func(o *icapwatchTupleOffsets, familyOptional bool) []want {
		return []want{
			{"skaddr", &o.Skaddr, []int{8}, false},
			{"sport", &o.Sport, []int{2}, false},
			{"dport", &o.Dport, []int{2}, false},
			{"family", &o.Family, []int{2}, familyOptional},
			{"saddr", &o.Saddr, []int{4}, false},
			{"daddr", &o.Daddr, []int{4}, false},
			{"saddr_v6", &o.SaddrV6, []int{16}, false},
			{"daddr_v6", &o.DaddrV6, []int{16}, false},
		}
	}
	for _, tp := range []struct {
		system, event string
		fields        []want
	}{
		{"sock", "inet_sock_set_state", append(tuple(&c.Ss, false),
			want{"oldstate", &c.SsOldstate, []int{4}, false},
			want{"newstate", &c.SsNewstate, []int{4}, false},
			want{"protocol", &c.SsProtocol, []int{1, 2}, false})},
		{"tcp", "tcp_retransmit_skb", tuple(&c.Rt, true)},
	} {
		format, err := ReadFormat(root, tp.system, tp.event)
		if err != nil {
			return c, fmt.Errorf("tracepoint %s/%s: %w", tp.system, tp.event, err)
		}
		for _, w := range tp.fields {
			*w.dst = offNone
			f, err := format.Field(w.name)
			if err != nil {
				if w.optional {
					continue
				}
				return c, fmt.Errorf("tracepoint %s/%s: %w", tp.system, tp.event, err)
			}
			if !containsInt(w.sizes, f.Size) || f.Offset < 0 || f.Offset+f.Size > 0xfffe {
				return c, fmt.Errorf("tracepoint %s/%s: field %s has size %d at offset %d, want size %v",
					tp.system, tp.event, w.name, f.Size, f.Offset, w.sizes)
			}
			*w.dst = uint16(f.Offset)
		}
	}
	return c, nil
}

const offNone = 0xffff

func containsInt(list []int, v int) bool {
	for _, x := range list {
		if x == v {
			return true
		}
	}
	return false
}

// kprobeSettings fills the pt_regs and sock_common offsets from the
// kernel's BTF. It returns why kprobes cannot run, or "".
func kprobeSettings(c *icapwatchConfig) string {
	c.KpArg1, c.KpArg2, c.KpArg3 = offNone, offNone, offNone
	if _, err := os.Stat("/sys/bus/event_source/devices/kprobe"); err != nil {
		if root, err := FindTracefs(); err != nil || !exists(root+"/kprobe_events") {
			return "this kernel has no kprobes"
		}
	}
	spec, err := btf.LoadKernelSpec()
	if err != nil {
		return fmt.Sprintf("no kernel BTF for struct sock_common offsets: %v", err)
	}
	args, err := argOffsets(spec, runtime.GOARCH)
	if err != nil {
		return err.Error()
	}
	c.KpArg1, c.KpArg2, c.KpArg3 = args[0], args[1], args[2]
	for _, f := range []struct {
		name string
		dst  *uint16
	}{
		{"skc_daddr", &c.SkDaddr}, {"skc_rcv_saddr", &c.SkRcvSaddr}, {"skc_dport", &c.SkDport},
		{"skc_num", &c.SkNum}, {"skc_family", &c.SkFamily}, {"skc_v6_daddr", &c.SkV6Daddr},
		{"skc_v6_rcv_saddr", &c.SkV6RcvSaddr},
	} {
		off, err := memberOffset(spec, "sock_common", f.name)
		if err != nil {
			return err.Error()
		}
		*f.dst = off
	}
	return ""
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// argOffsets gives where struct pt_regs holds the first three arguments.
func argOffsets(spec *btf.Spec, arch string) ([3]uint16, error) {
	var out [3]uint16
	switch arch {
	case "amd64": // System V ABI: rdi, rsi, rdx
		for i, reg := range []string{"di", "si", "dx"} {
			off, err := memberOffset(spec, "pt_regs", reg)
			if err != nil {
				return out, err
			}
			out[i] = off
		}
	case "arm64": // AAPCS64: x0, x1, x2 are regs[0..2]
		off, err := memberOffset(spec, "pt_regs", "regs")
		if err != nil {
			return out, err
		}
		out = [3]uint16{off, off + 8, off + 16}
	default:
		return out, fmt.Errorf("kprobe arguments are not mapped for %s", arch)
	}
	return out, nil
}

// memberOffset finds a member of a struct, looking into anonymous unions
// and structs, and returns its byte offset.
func memberOffset(spec *btf.Spec, typ, member string) (uint16, error) {
	var s *btf.Struct
	if err := spec.TypeByName(typ, &s); err != nil {
		return 0, fmt.Errorf("kernel BTF: struct %s: %w", typ, err)
	}
	if off, ok := findMember(s.Members, member, 0); ok {
		return uint16(off / 8), nil
	}
	return 0, fmt.Errorf("kernel BTF: struct %s has no member %s", typ, member)
}

func findMember(members []btf.Member, name string, base btf.Bits) (btf.Bits, bool) {
	for _, m := range members {
		if m.Name == name {
			return base + m.Offset, true
		}
		if m.Name != "" {
			continue
		}
		switch t := btf.UnderlyingType(m.Type).(type) {
		case *btf.Struct:
			if off, ok := findMember(t.Members, name, base+m.Offset); ok {
				return off, true
			}
		case *btf.Union:
			if off, ok := findMember(t.Members, name, base+m.Offset); ok {
				return off, true
			}
		}
	}
	return 0, false
}
