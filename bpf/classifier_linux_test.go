package bpf

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/features"
	"github.com/icapwatch/icapwatch/bpf/bpftest"
	"github.com/icapwatch/icapwatch/internal/testutil"
	"golang.org/x/sys/unix"
)

// loadForRun loads the objects without attaching them, for Program.Run.
func loadForRun(t testing.TB, output string) *Probe {
	t.Helper()
	testutil.RequireRoot(t)
	if output == OutputRing {
		requireRingBuf(t)
	}
	cfg := DefaultConfig()
	cfg.Output = output
	cfg.Kprobes = KprobesOff
	p, err := Load(cfg)
	if err != nil {
		if errors.Is(err, ebpf.ErrNotSupported) {
			testutil.SkipOrFail(t, "%v", err)
		}
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// requireRingBuf skips the test where the kernel has no BPF ring buffer,
// as the loader finds out: by probing for the map type, not from a load's
// error (4.19 refuses the map with EINVAL). Linux has it from 5.8: on a
// kernel that recent, a missing ring buffer fails the test when
// privileged tests are required.
func requireRingBuf(t testing.TB) {
	t.Helper()
	ringBufVerdict(t, features.HaveMapType(ebpf.RingBuf), kernelRelease(t))
}

// ringBufVerdict is requireRingBuf for the probe's answer on a release.
func ringBufVerdict(t testing.TB, probe error, release string) {
	t.Helper()
	switch {
	case probe == nil:
	case !errors.Is(probe, ebpf.ErrNotSupported):
		t.Fatalf("probe for the BPF ring buffer: %v", probe)
	case releaseAtLeast(t, release, 5, 8):
		testutil.SkipOrFail(t, "no BPF ring buffer on Linux %s: %v", release, probe)
	default:
		t.Skipf("no BPF ring buffer on Linux %s (it came in 5.8): %v", release, probe)
	}
}

// kernelRelease is uname -r.
func kernelRelease(t testing.TB) string {
	t.Helper()
	var uts unix.Utsname
	if err := unix.Uname(&uts); err != nil {
		t.Fatal(err)
	}
	return unix.ByteSliceToString(uts.Release[:])
}

// releaseAtLeast says whether a kernel release is at least major.minor:
// for what a test may expect of the kernel, never for what the agent
// uses.
func releaseAtLeast(t testing.TB, release string, major, minor int) bool {
	t.Helper()
	var maj, mnr int
	if _, err := fmt.Sscanf(release, "%d.%d", &maj, &mnr); err != nil {
		t.Fatalf("kernel release %q: %v", release, err)
	}
	return maj > major || maj == major && mnr >= minor
}

// verdictTB records what a test helper decided instead of deciding it.
type verdictTB struct {
	testing.TB
	said string
}

func (v *verdictTB) Helper() {}
func (v *verdictTB) Skipf(format string, args ...any) {
	v.said = "skip: " + fmt.Sprintf(format, args...)
}
func (v *verdictTB) Fatalf(format string, args ...any) {
	v.said = "fail: " + fmt.Sprintf(format, args...)
}

// A ring buffer test skips on a kernel older than 5.8 even where skips
// are failures, and fails on a newer kernel that lacks it.
func TestRingBufVerdict(t *testing.T) {
	missing := fmt.Errorf("map type RingBuf: %w", ebpf.ErrNotSupported)
	for _, tc := range []struct {
		probe    error
		release  string
		required bool
		want     string
	}{
		{nil, "4.19.304", true, ""},
		{missing, "4.19.304", true, "skip"},
		{missing, "4.18.0-394.el8.x86_64", true, "skip"},
		{missing, "5.8.0", true, "fail"},
		{missing, "6.1.0-28-amd64", true, "fail"},
		{missing, "6.1.0-28-amd64", false, "skip"},
		{unix.EPERM, "4.19.304", false, "fail"},
	} {
		t.Run(fmt.Sprintf("%v/%s/%v", tc.probe != nil, tc.release, tc.required), func(t *testing.T) {
			require := ""
			if tc.required {
				require = "require"
			}
			t.Setenv(testutil.EnvRequire, require)
			v := &verdictTB{TB: t}
			ringBufVerdict(v, tc.probe, tc.release)
			if got, _, _ := strings.Cut(v.said, ":"); got != tc.want {
				t.Errorf("%q, want %s", v.said, tc.want)
			}
		})
	}
}

// testEnums are the C enums of the compiled object, for the cases' names.
func testEnums(t testing.TB) map[string]map[string]uint64 {
	t.Helper()
	enums, err := KernelEnums()
	if err != nil {
		t.Fatal(err)
	}
	return enums
}

// matches says whether e is what w wants. A name the C enums do not have
// fails the test.
func matches(t testing.TB, enums map[string]map[string]uint64, e Event, w bpftest.Want) bool {
	t.Helper()
	value := func(enum, name string) uint64 {
		t.Helper()
		v, ok := enums[enum][name]
		if !ok {
			t.Fatalf("want %+v: enum %s has no %q", w, enum, name)
		}
		return v
	}
	flags := func(names string) uint64 {
		t.Helper()
		var bits uint64
		for name := range strings.SplitSeq(names, "|") {
			if name != "" {
				bits |= value("event_flag", name)
			}
		}
		return bits
	}
	all, none := flags(w.Flags), flags(w.Not)
	return uint64(e.Type) == value("event_type", w.Type) && uint64(e.Dir) == value("direction", w.Dir) &&
		(w.Phase == "" || uint64(e.Phase) == value("phase", w.Phase)) &&
		uint64(e.Flags)&all == all && uint64(e.Flags)&none == 0
}

func TestClassifier(t *testing.T) {
	enums := testEnums(t)
	for _, tc := range bpftest.ClassifierCases() {
		for _, output := range []string{OutputPerf, OutputRing} {
			t.Run(tc.Name+"/"+output, func(t *testing.T) {
				p := loadForRun(t, output)
				bpftest.RunSteps(t, p, tc.Steps)
				got := drain(t, p)
				if len(got) != len(tc.Want) {
					t.Fatalf("got %d events, want %d:\n%s", len(got), len(tc.Want), describe(got))
				}
				for i, w := range tc.Want {
					if !matches(t, enums, got[i], w) {
						t.Errorf("event %d: got %s, want %+v", i, describeOne(got[i]), w)
					}
				}
				checkTuples(t, got)
				if tc.Counters == nil {
					return
				}
				s, err := p.Stats(true)
				if err != nil {
					t.Fatal(err)
				}
				counters := s.counters()
				for name, want := range tc.Counters {
					i, ok := enums["counter"][name]
					if !ok {
						t.Fatalf("enum counter has no %q", name)
					}
					if got := *counters[i]; got != want {
						t.Errorf("counter %s is %d, want %d: %+v", name, got, want, s)
					}
				}
			})
		}
	}
}

// checkTuples: every event names the client and the server, whatever the
// direction of its packet.
func checkTuples(t *testing.T, events []Event) {
	t.Helper()
	for _, e := range events {
		if e.Server.Port() != 11344 || e.Client.Port() < 40000 || !e.Client.Addr().IsValid() {
			t.Errorf("tuple not normalized: %s", describeOne(e))
		}
	}
}

// drain reads what the runs wrote, in kernel-time order.
func drain(t testing.TB, p *Probe) []Event {
	t.Helper()
	return bpftest.Drain(t, p, func(e Event) time.Duration { return e.Mono })
}

func describe(events []Event) string {
	s := ""
	for _, e := range events {
		s += "  " + describeOne(e) + "\n"
	}
	return s
}

// describeOne prints an event for a test's failure, with the names of the
// C enums.
func describeOne(e Event) string {
	if e.Type == evState {
		return fmt.Sprintf("state %d->%d pid %d %q %s -> %s", e.OldState, e.NewState, e.PID, e.Comm, e.Client, e.Server)
	}
	enums, _ := KernelEnums() // without them, the names are numbers
	name := func(enum string, v uint64) string {
		for n, x := range enums[enum] {
			if x == v {
				return n
			}
		}
		return fmt.Sprintf("%s(%d)", enum, v)
	}
	var flags []string
	rest := uint64(e.Flags)
	for n, bit := range enums["event_flag"] {
		if rest&bit != 0 {
			flags = append(flags, n)
			rest &^= bit
		}
	}
	slices.Sort(flags)
	if rest != 0 {
		flags = append(flags, fmt.Sprintf("%#x", rest))
	}
	return fmt.Sprintf("%s %s %s [%s] %s -> %s", name("event_type", uint64(e.Type)), name("direction", uint64(e.Dir)),
		name("phase", uint64(e.Phase)), strings.Join(flags, "|"), e.Client, e.Server)
}

// TestHeldRecordKeepsItsTime: a request that starts with a 19-byte record
// is dated from that record, not from the segment that proved it data.
func TestHeldRecordKeepsItsTime(t *testing.T) {
	p := loadForRun(t, OutputPerf)
	c := bpftest.NewConn(bpftest.Cli4, bpftest.Srv4).
		Client(bpftest.ACK|bpftest.PSH, bpftest.TLSRecord(0x17, 19)).
		Client(bpftest.ACK|bpftest.PSH, bpftest.TLSRecord(0x17, 300))
	var before time.Duration
	for i, s := range c.Steps {
		if i == 1 {
			time.Sleep(5 * time.Millisecond)
		}
		if _, err := p.RunClassifier(s.Egress, s.Seg.Frame()); err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			before = monoNow()
		}
	}
	got := drain(t, p)
	if len(got) != 1 || got[0].Type != evExchangeStart {
		t.Fatalf("got %s", describe(got))
	}
	if got[0].Mono > before {
		t.Errorf("exchange start at %v, after the held record was seen (%v)", got[0].Mono, before)
	}
	if got[0].Seq != 1000 || got[0].RecordLen != 19 {
		t.Errorf("exchange starts at seq %d with record length %d, want 1000 and 19", got[0].Seq, got[0].RecordLen)
	}
}

// TestResetDatesHeldCloseNotify: a close_notify proved by the reset behind
// it comes with the reset, in the order of the events' stamps, and holds
// the time of its record, the moment the server began to close, in
// RefMono.
func TestResetDatesHeldCloseNotify(t *testing.T) {
	p := loadForRun(t, OutputPerf)
	c := bpftest.NewConn(bpftest.Cli4, bpftest.Srv4).
		Client(bpftest.ACK|bpftest.PSH, bpftest.TLSRecord(0x17, 300)).
		Server(bpftest.ACK|bpftest.PSH, bpftest.TLSRecord(0x17, 200)).
		Server(bpftest.ACK|bpftest.PSH, bpftest.TLSRecord(0x17, 19)).
		Server(bpftest.RST|bpftest.ACK, nil)
	var before time.Duration
	for i, s := range c.Steps {
		if i == 3 {
			time.Sleep(5 * time.Millisecond)
		}
		if _, err := p.RunClassifier(s.Egress, s.Seg.Frame()); err != nil {
			t.Fatal(err)
		}
		if i == 2 {
			before = monoNow()
		}
	}
	got := drain(t, p)
	if len(got) != 4 || got[2].Type != uint8(icapwatchEventTypeEV_TLS_ALERT) || got[3].Type != evRST {
		t.Fatalf("got %s", describe(got))
	}
	if alert, reset := got[2], got[3]; alert.RefMono == 0 || alert.RefMono > before || alert.Mono != reset.Mono {
		t.Errorf("alert stamped %v with record time %v, reset at %v: want the reset's stamp and the record's time (seen by %v)",
			alert.Mono, alert.RefMono, reset.Mono, before)
	}
	if got[2].Seq != 5205 || got[2].Len != 24 {
		t.Errorf("alert at seq %d, %d bytes; want the record's, 5205 and 24", got[2].Seq, got[2].Len)
	}
}

func monoNow() time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		panic(err)
	}
	return time.Duration(ts.Nano())
}
