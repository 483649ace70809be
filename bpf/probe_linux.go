package bpf

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/perf"
	"github.com/cilium/ebpf/ringbuf"
	"github.com/hashicorp/go-hclog"
)

// Probe is the kernel side: loaded by Load, loaded and attached by Open.
// Read its events with Read; Close detaches everything it attached.
type Probe struct {
	log     hclog.Logger
	objs    *objects
	kprobes bool // the kprobe programs are loaded
	tc      *tcAttacher
	links   []link.Link
	perf    *perf.Reader
	ring    *ringbuf.Reader
	events  *EventReader // reads perf or ring
	output  string
	tracefs *tracefsUse // from Load until attached or closed

	// settings are what the config map holds: attach changes them when
	// the optional tracepoint does not attach.
	settings icapwatchConfig

	// statsMu guards the flow counting's state.
	statsMu   sync.Mutex
	noBatch   bool // the kernel has no BPF_MAP_LOOKUP_BATCH
	batchKeys []icapwatchFlowKey
	batchVals []icapwatchFlow

	mu       sync.Mutex
	hooks    []HookStatus
	closeErr error
	closed   sync.Once
}

// Open loads the programs, attaches them and starts the event buffer.
// Optional hooks that fail are reported by Hooks, not returned.
func Open(cfg Config) (p *Probe, err error) {
	p, err = Load(cfg)
	if err != nil {
		return nil, err
	}
	if err := p.attach(cfg); err != nil {
		p.Close()
		return nil, err
	}
	return p, nil
}

func (p *Probe) attach(cfg Config) error {
	defer p.doneWithTracefs() // the tracepoints and kprobes need it to attach, and no longer
	tc, err := newTCAttacher(cfg, p.objs.IcapwatchIngress, p.objs.IcapwatchEgress, p.objs.PeerNs, p.log.Named("tc"))
	if err != nil {
		return err
	}
	p.mu.Lock()
	p.tc = tc
	p.mu.Unlock()
	for _, tp := range []struct {
		hook, group, name string
		prog              *ebpf.Program
	}{
		{HookSetState, "sock", "inet_sock_set_state", p.objs.IcapwatchState},
		{HookRetransmitSKB, "tcp", "tcp_retransmit_skb", p.objs.IcapwatchRetransmit},
	} {
		l, err := link.Tracepoint(tp.group, tp.name, tp.prog, nil)
		if err != nil {
			return fmt.Errorf("attach tracepoint %s/%s: %w", tp.group, tp.name, tracepointError(err))
		}
		p.links = append(p.links, l)
		p.addHook(HookStatus{Name: tp.hook, Attached: true, Mode: "perf_event"})
	}
	p.attachSendLength()
	if !p.kprobes {
		return nil
	}
	for _, kp := range []struct {
		hook, symbol string
		prog         *ebpf.Program
	}{
		{HookSendmsg, "tcp_sendmsg", p.objs.IcapwatchSendmsg},
		{HookCleanupRbuf, "tcp_cleanup_rbuf", p.objs.IcapwatchCleanupRbuf},
	} {
		st := HookStatus{Name: kp.hook, Optional: true, Mode: "kprobe"}
		if l, err := link.Kprobe(kp.symbol, kp.prog, nil); err != nil {
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

// attachSendLength attaches the optional sock:sock_send_length program,
// where it loaded. Where it does not attach, the tcp_sendmsg kprobe
// reports the failed writes instead: the settings say so.
func (p *Probe) attachSendLength() {
	if p.objs.IcapwatchSendLength == nil {
		return // not loaded: Load said why
	}
	st := HookStatus{Name: HookSendLength, Optional: true, Mode: "perf_event"}
	l, err := link.Tracepoint("sock", "sock_send_length", p.objs.IcapwatchSendLength, nil)
	if err == nil {
		st.Attached = true
		p.links = append(p.links, l)
		p.addHook(st)
		return
	}
	st.Error = tracepointError(err).Error()
	p.log.Info("optional tracepoint not attached", "tracepoint", "sock:sock_send_length", "error", err)
	p.addHook(st)
	p.settings.SlSk, p.settings.SlProtocol, p.settings.SlRet = offNone, offNone, offNone
	if err := p.objs.ConfigMap.Put(uint32(0), p.settings); err != nil {
		p.log.Warn("settings map not updated: failed writes go unreported", "error", err)
	}
}

// RunClassifier runs one Ethernet frame through the TC program of the
// egress or the ingress hook with BPF_PROG_TEST_RUN, as if that hook had
// seen it (the kernel runs it on loopback, ifindex 1), and returns the
// program's verdict. Its events go to the buffer like those of hooked
// traffic. Tests drive the classifier this way, on a probe from Load.
func (p *Probe) RunClassifier(egress bool, frame []byte) (uint32, error) {
	prog := p.objs.IcapwatchIngress
	if egress {
		prog = p.objs.IcapwatchEgress
	}
	return prog.Run(&ebpf.RunOptions{Data: frame})
}

// Output says which buffer carries the events: perf or ringbuf.
func (p *Probe) Output() string { return p.output }

// Read blocks until the next event: see EventReader.Read.
func (p *Probe) Read() (Event, error) { return p.events.Read() }

// ReadBatch reads a burst of events: see EventReader.ReadBatch.
func (p *Probe) ReadBatch(buf []Event) (int, error) { return p.events.ReadBatch(buf) }

// SetDeadline makes a blocked Read return os.ErrDeadlineExceeded at t; the
// zero time removes the deadline.
func (p *Probe) SetDeadline(t time.Time) { p.events.SetDeadline(t) }

// ReorderWindow is how long an event is held to be merged back in kernel
// time order: a poll interval on the perf buffer, 0 on the ring buffer.
// Read returns an event up to a poll and this window after it happened.
func (p *Probe) ReorderWindow() time.Duration { return p.events.ReorderWindow() }

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

// doneWithTracefs ends the probe's use of tracefs, the first time.
func (p *Probe) doneWithTracefs() {
	if p.tracefs != nil {
		p.tracefs.done(p.log)
		p.tracefs = nil
	}
}

// Close detaches every hook, closes the buffer and the objects. It is safe
// to call more than once.
func (p *Probe) Close() error {
	p.closed.Do(func() {
		p.doneWithTracefs()
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
		if p.objs != nil {
			errs = append(errs, p.objs.Close())
		}
		p.closeErr = errors.Join(errs...)
	})
	return p.closeErr
}
