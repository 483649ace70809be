package bpf

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/features"
	"github.com/icapwatch/icapwatch/internal/testutil"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// TestKprobeProgramsVerify loads the kprobe programs through the verifier
// without attaching them: this kernel has no kprobes to attach to, but
// has the program type, so CI checks them at least this far.
func TestKprobeProgramsVerify(t *testing.T) {
	testutil.RequireRoot(t)
	if err := features.HaveProgramType(ebpf.Kprobe); err != nil {
		testutil.SkipOrFail(t, "no kprobe program type: %v", err)
	}
	for _, output := range []string{OutputPerf, OutputRing} {
		t.Run(output, func(t *testing.T) {
			if output == OutputRing {
				requireRingBuf(t)
			}
			cfg := DefaultConfig()
			cfg.Output = output
			p, err := loadWith(cfg, loadOptions{verifyKprobes: true})
			if err != nil {
				t.Fatal(err)
			}
			defer p.Close()
			if !p.kprobes {
				t.Fatalf("kprobe programs not loaded: %+v", p.Hooks())
			}
			for name, prog := range map[string]*ebpf.Program{
				"sendmsg": p.objs.IcapwatchSendmsg, "cleanup_rbuf": p.objs.IcapwatchCleanupRbuf,
			} {
				if prog == nil || prog.Type() != ebpf.Kprobe {
					t.Errorf("kprobe program %s not loaded", name)
				}
			}
		})
	}
}

// breakPrograms makes the verifier refuse the programs that match: their
// first instruction exits with R0 unset.
func breakPrograms(match func(*ebpf.ProgramSpec, *icapwatchSpecs) bool) func(*ebpf.CollectionSpec, *icapwatchSpecs) {
	return func(spec *ebpf.CollectionSpec, specs *icapwatchSpecs) {
		for _, p := range spec.Programs {
			if match(p, specs) {
				p.Instructions[0] = asm.Return().WithMetadata(p.Instructions[0].Metadata)
			}
		}
	}
}

// TestLoadFallsBack: a refused upgrade costs the upgrade, not the agent.
func TestLoadFallsBack(t *testing.T) {
	testutil.RequireRoot(t)
	isKprobe := func(p *ebpf.ProgramSpec, _ *icapwatchSpecs) bool { return p.Type == ebpf.Kprobe }
	badRing := func(_ *ebpf.CollectionSpec, specs *icapwatchSpecs) {
		if m := specs.Events; m.Type == ebpf.RingBuf {
			m.MaxEntries = 4096 + 1 // not a power of two: the kernel refuses the map
		}
	}
	t.Run("kprobes", func(t *testing.T) {
		if err := features.HaveProgramType(ebpf.Kprobe); err != nil {
			testutil.SkipOrFail(t, "no kprobe program type: %v", err)
		}
		cfg := DefaultConfig()
		cfg.Output = OutputPerf
		p, err := loadWith(cfg, loadOptions{verifyKprobes: true, edit: breakPrograms(isKprobe)})
		if err != nil {
			t.Fatalf("a refused kprobe program failed the load: %v", err)
		}
		defer p.Close()
		if p.kprobes || p.objs.IcapwatchSendmsg != nil {
			t.Fatal("kprobes reported loaded")
		}
		for _, want := range []string{HookSendmsg, HookCleanupRbuf} {
			found := false
			for _, h := range p.Hooks() {
				if h.Name == want {
					found = true
					if !h.Optional || h.Attached || !strings.Contains(h.Error, "not loaded") {
						t.Errorf("hook %+v, want optional, not attached, with the load error", h)
					}
				}
			}
			if !found {
				t.Errorf("hook %s not reported: %+v", want, p.Hooks())
			}
		}
		if p.objs.IcapwatchIngress == nil {
			t.Error("baseline programs missing")
		}
	})
	t.Run("ringbuf", func(t *testing.T) {
		requireRingBuf(t)
		cfg := DefaultConfig()
		cfg.Kprobes = KprobesOff
		p, err := loadWith(cfg, loadOptions{edit: badRing})
		if err != nil {
			t.Fatalf("a refused ring buffer failed the load: %v", err)
		}
		defer p.Close()
		if p.Output() != OutputPerf {
			t.Errorf("output %s, want the perf buffer", p.Output())
		}
		// An explicit choice is not second-guessed.
		cfg.Output = OutputRing
		if p, err := loadWith(cfg, loadOptions{edit: badRing}); err == nil {
			p.Close()
			t.Error("--output ringbuf fell back to perf")
		}
	})
	t.Run("baseline", func(t *testing.T) {
		cfg := DefaultConfig()
		isIngress := func(p *ebpf.ProgramSpec, specs *icapwatchSpecs) bool { return p == specs.IcapwatchIngress }
		_, err := loadWith(cfg, loadOptions{edit: breakPrograms(isIngress)})
		if err == nil || !strings.Contains(err.Error(), "verifier") {
			t.Errorf("a refused baseline program: error %v, want the verifier's", err)
		}
	})
}

// TestFlowEvictionsCounted fills a small flow table with more loopback
// connections than it holds: the LRU evicts silently, and Stats(true)
// says how many.
func TestFlowEvictionsCounted(t *testing.T) {
	pair := testutil.NewVethPair(t) // only its client namespace's lo is used
	const maxFlows, conns = 16, 64
	ln := testutil.ListenIn(t, pair.Client)
	accepted := make(chan net.Conn, conns)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()

	cfg := DefaultConfig()
	cfg.MaxFlows = maxFlows
	p := openOnLoopback(t, pair.Client, ln.Addr().(*net.TCPAddr).Port, cfg)

	dialer := testutil.NSDialer{NS: pair.Client}
	var open []net.Conn
	defer func() {
		for _, c := range open {
			c.Close()
		}
	}()
	for i := 0; i < conns; i++ {
		c, err := dialer.DialContext(t.Context(), "tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		open = append(open, c)
		if _, err := c.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
		select {
		case s := <-accepted:
			open = append(open, s)
		case <-time.After(5 * time.Second):
			t.Fatal("connection not accepted within 5s")
		}
	}
	s, err := p.Stats(true)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("stats with %d connections open: %s", conns, statsLine(s))
	if s.FlowsCreated < conns || s.Flows > maxFlows || s.FlowsDeleted != 0 {
		t.Errorf("want at least %d flows created, at most %d in the table, none deleted: %s", conns, maxFlows, statsLine(s))
	}
	if s.FlowEvictions < conns-maxFlows {
		t.Errorf("evictions %d, want at least %d: %s", s.FlowEvictions, conns-maxFlows, statsLine(s))
	}
}

func statsLine(s Stats) string {
	return fmt.Sprintf("created %d, deleted %d, in table %d, full %d, evicted %d",
		s.FlowsCreated, s.FlowsDeleted, s.Flows, s.FlowsFull, s.FlowEvictions)
}

// Permission errors name what is missing; other errors pass unchanged.
func TestPermissionErrorsNameCapabilities(t *testing.T) {
	idFile := &fs.PathError{Op: "open", Path: "/sys/kernel/tracing/events/sock/inet_sock_set_state/id", Err: unix.EACCES}
	for _, tc := range []struct {
		err  error
		want string
	}{
		{tracepointError(fmt.Errorf("perf event: %w", unix.EPERM)), "needs CAP_PERFMON"},
		{tracepointError(fmt.Errorf("trace event id: %w", idFile)), "needs root, or CAP_DAC_READ_SEARCH"},
		{needs(fmt.Errorf("add clsact qdisc: %w", unix.EPERM), "CAP_NET_ADMIN"), "(needs CAP_NET_ADMIN)"},
		{loadError(unix.EPERM, nil), "needs CAP_BPF"},
		{loadError(unix.EPERM, unix.EPERM), "CAP_SYS_RESOURCE"},
	} {
		if !strings.Contains(tc.err.Error(), tc.want) || !errors.Is(tc.err, unix.EPERM) && !errors.Is(tc.err, unix.EACCES) {
			t.Errorf("%v: want %q, and the cause kept", tc.err, tc.want)
		}
	}
	if err := needs(unix.ENODEV, "CAP_NET_ADMIN"); strings.Contains(err.Error(), "needs") {
		t.Errorf("%v: not a permission error", err)
	}
}

// readBy reads the probe's next event, and fails the test when none comes
// by deadline, saying what was awaited.
func readBy(t *testing.T, p *Probe, deadline time.Time, what string) Event {
	t.Helper()
	p.SetDeadline(deadline)
	ev, err := p.Read()
	if errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("no %s by the deadline", what)
	}
	if err != nil {
		t.Fatal(err)
	}
	return ev
}

// openOnLoopback opens a probe without kprobes on the loopback of the
// namespace ns, watching port, and closes it there (netlink teardown
// must run in the namespace too) when the test ends.
func openOnLoopback(t *testing.T, ns netns.NsHandle, port int, cfg Config) *Probe {
	t.Helper()
	cfg.Kprobes = KprobesOff
	return openOnLoopbackKprobes(t, ns, port, cfg)
}

// openOnLoopbackKprobes is openOnLoopback with cfg's kprobe setting.
func openOnLoopbackKprobes(t *testing.T, ns netns.NsHandle, port int, cfg Config) *Probe {
	t.Helper()
	cfg.Interfaces, cfg.Ports = []string{"lo"}, []uint16{uint16(port)}
	var p *Probe
	if err := testutil.InNetNS(ns, func() (err error) {
		p, err = Open(cfg)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { testutil.InNetNS(ns, p.Close) })
	return p
}
