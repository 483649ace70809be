package main

import (
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/icapwatch/icapwatch/agent"
	"github.com/icapwatch/icapwatch/agent/correlate"
	"github.com/icapwatch/icapwatch/agent/observe"
	"github.com/icapwatch/icapwatch/internal/testutil"
)

// sock_diag knows that the server ACKed a request, not when: the demo's
// line says so instead of a time.
func TestEventLineOnSockDiag(t *testing.T) {
	e := correlate.Event{Server: "127.0.0.1:11344", ClientAddr: netip.MustParseAddrPort("127.0.0.1:35418"),
		Client: "scanapp", PID: 4121, Detail: &correlate.Stall{State: correlate.StateAckedSilent,
			Phase: observe.PhaseHandshake, Age: 10400 * time.Millisecond, Acked: true}}
	line := func(e correlate.Event, source string) string { return (&timeline{source: source}).line(e) }
	bpfLine, diagLine := line(e, agent.SourceBPF), line(e, agent.SourceSockDiag)
	if !strings.Contains(bpfLine, "ACKed by the server 0 ms after it was sent, no answer for 10.4 s (acked_silent)") {
		t.Errorf("eBPF line: %s", bpfLine)
	}
	if strings.Contains(diagLine, "ms after") ||
		!strings.Contains(diagLine, "ACKed by the server (sock_diag cannot tell when), no answer for 10.4 s (acked_silent)") {
		t.Errorf("sock_diag line: %s", diagLine)
	}
	unacked := e
	unacked.Detail = &correlate.Stall{State: correlate.StateUnacked, Phase: observe.PhaseRequest, Age: 11 * time.Second}
	if got, want := line(unacked, agent.SourceSockDiag), unacked.Summary(); got != want {
		t.Errorf("an unacked stall reads %q, want it as is: %q", got, want)
	}
}

// On sock_diag the summary marks the columns that need eBPF and says why.
func TestSummaryMarksWhatSockDiagCannotSee(t *testing.T) {
	const server = "127.0.0.1:11344"
	var tally correlate.Tally
	tally.Gap(correlate.Gap{Server: server, Phase: "request", Gap: 250 * time.Millisecond})
	tally.Gap(correlate.Gap{Server: server, Phase: "request", Gap: 750 * time.Millisecond})
	tally.Event(correlate.Event{Server: server, Client: "scanapp", Detail: &correlate.Stall{State: correlate.StateAckedSilent}})
	for range 3 {
		tally.Event(correlate.Event{Server: server, Client: "scanapp", Detail: &correlate.Close{Initiator: "server", How: "fin"}})
	}
	for _, tc := range []struct {
		source      string
		row         []string
		note, never string
	}{
		{agent.SourceBPF, []string{server, "2", "500ms", "1", "0", "0", "0", "3"}, "source: bpf", "needs eBPF"},
		{agent.SourceSockDiag, []string{server, "2", "500ms", "1", "0*", "0", "n/a*", "3*"}, "* needs eBPF", ""},
	} {
		var b strings.Builder
		writeSummary(&b, tally.Servers(), tc.source)
		out := b.String()
		var row []string
		for _, line := range strings.Split(out, "\n") {
			if strings.HasPrefix(line, server) {
				row = strings.Fields(line)
			}
		}
		if strings.Join(row, " ") != strings.Join(tc.row, " ") {
			t.Errorf("%s: row %q, want %q:\n%s", tc.source, row, tc.row, out)
		}
		if !strings.Contains(out, tc.note) || tc.never != "" && strings.Contains(out, tc.never) {
			t.Errorf("%s: want %q and not %q:\n%s", tc.source, tc.note, tc.never, out)
		}
	}
}

// childNamed finds the process named comm whose parent is ppid, from
// /proc; 0 when there is none.
func childNamed(ppid int, comm string) int {
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, path := range stats {
		b, err := os.ReadFile(path)
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...
		s := string(b)
		open, end := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
		if open < 0 || end < open || s[open+1:end] != comm {
			continue
		}
		if f := strings.Fields(s[end+1:]); len(f) > 1 && f[1] == strconv.Itoa(ppid) {
			pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(path)))
			return pid
		}
	}
	return 0
}

// running: the process exists and is not a zombie.
func running(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	return len(f) > 0 && f[0] != "Z"
}

// A demo killed with SIGKILL leaves nothing in /tmp and no application
// running: the link that names the application scanapp goes as soon as
// the application has started, and the application stops with the demo.
func TestDemoKilledLeavesNothing(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the icapwatch binary")
	}
	bin := testutil.BuildIcapwatch(t)
	tmp := t.TempDir()
	// A file rather than a pipe: an application that outlived the demo
	// would hold a pipe open, and Wait with it.
	out, err := os.Create(filepath.Join(t.TempDir(), "demo.out"))
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	output := func() string { b, _ := os.ReadFile(out.Name()); return string(b) }
	cmd := exec.Command(bin, "demo", "--source", "sockdiag", "--duration", "60s", "--listen", "127.0.0.1:0",
		"--web.listen-address", "127.0.0.1:0")
	cmd.Env = append(os.Environ(), "TMPDIR="+tmp)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	defer func() {
		select {
		case <-exited:
		default:
			cmd.Process.Kill()
			<-exited
		}
	}()

	var app int
	for deadline := time.Now().Add(20 * time.Second); app == 0 && time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		app = childNamed(cmd.Process.Pid, "scanapp")
	}
	if app == 0 {
		t.Fatalf("no scanapp child of the demo within 20s:\n%s", output())
	}
	defer func() {
		if running(app) {
			syscall.Kill(app, syscall.SIGKILL)
		}
	}()
	if left, _ := os.ReadDir(tmp); len(left) > 0 {
		t.Errorf("while the application runs, TMPDIR still holds %v", left)
	}
	cmd.Process.Kill()
	<-exited
	for deadline := time.Now().Add(10 * time.Second); running(app) && time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
	}
	if running(app) {
		t.Errorf("scanapp (pid %d) still runs 10s after the demo was killed", app)
	}
	if left, _ := os.ReadDir(tmp); len(left) > 0 {
		t.Errorf("the killed demo left %v in TMPDIR", left)
	}
}

// The timeline marks the canary's own connections, reads a probable TLS
// 1.3 close_notify as an ordinary close, and explains the question mark
// once.
func TestTimelineReadsCloseNotifyAndMarksTheCanary(t *testing.T) {
	tl := &timeline{source: agent.SourceBPF}
	alert := correlate.Event{Server: "127.0.0.1:11344", ClientAddr: netip.MustParseAddrPort("127.0.0.1:35418"),
		Client: "scanapp", Detail: &correlate.TLSAlert{Direction: "server", TLSVersion: "1.3?"}}
	first, second := tl.line(alert), tl.line(alert)
	if !strings.Contains(first, "an ordinary close") || !strings.Contains(first, "19-byte record") ||
		!strings.Contains(second, "an ordinary close") || strings.Contains(second, "19-byte") {
		t.Errorf("close_notify lines:\n%s\n%s", first, second)
	}
	canary := alert
	canary.Client = correlate.ClientCanary
	canary.Detail = &correlate.Close{Initiator: "client", How: "fin"}
	if got := tl.line(canary); !strings.HasPrefix(got, "canary: ") {
		t.Errorf("canary line: %s", got)
	}
	if got := tl.line(correlate.Event{Client: "scanapp", Detail: &correlate.TLSAlert{Direction: "server", TLSVersion: "1.2"}}); strings.Contains(got, "ordinary") {
		t.Errorf("a TLS 1.2 alert, whose type is not known, read as a close: %s", got)
	}
}
