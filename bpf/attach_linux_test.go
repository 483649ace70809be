package bpf

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/icapwatch/icapwatch/icap"
	"github.com/icapwatch/icapwatch/internal/testutil"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// The attach tests run the probe in a child process inside the client's
// network namespace (`ip netns exec`), as an agent on that host would run,
// so that it can also be killed like one.
const (
	envHelper  = "ICAPWATCH_BPF_HELPER" // probe or query
	envIface   = "ICAPWATCH_BPF_HELPER_IFACE"
	envTCMode  = "ICAPWATCH_BPF_HELPER_TC"
	helperTest = "^TestHelperProcess$"
)

// TestHelperProcess is the child's entry point; it does nothing in a
// normal test run.
func TestHelperProcess(t *testing.T) {
	switch os.Getenv(envHelper) {
	case "probe":
		os.Exit(helperProbe())
	case "query":
		os.Exit(helperQuery())
	}
}

// helperProbe attaches, prints "ready" and then one JSON event per line,
// until its stdin closes.
func helperProbe() int {
	cfg := DefaultConfig()
	if iface := os.Getenv(envIface); iface != "" {
		cfg.Interfaces = []string{iface}
	}
	cfg.TC = os.Getenv(envTCMode)
	p, err := Open(cfg)
	if err != nil {
		fmt.Println("error", err)
		return 1
	}
	hooks, _ := json.Marshal(p.Hooks())
	fmt.Printf("ready %s\n", hooks)
	var mu sync.Mutex
	enc := json.NewEncoder(os.Stdout)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			ev, err := p.Read()
			if err != nil {
				return
			}
			mu.Lock()
			enc.Encode(ev)
			mu.Unlock()
		}
	}()
	io.Copy(io.Discard, os.Stdin)
	// Let the last samples through before closing.
	time.Sleep(200 * time.Millisecond)
	err = p.Close()
	<-done
	mu.Lock()
	fmt.Println("closed", err)
	mu.Unlock()
	return 0
}

// tcState is what sits on an interface's TC hooks.
type tcState struct {
	TCX     int      `json:"tcx"`     // programs on the TCX hooks, -1 where the kernel has none
	Filters []string `json:"filters"` // our clsact filters, as name:handle
	Clsact  bool     `json:"clsact"`
}

func helperQuery() int {
	var st tcState
	l, err := netlink.LinkByName(os.Getenv(envIface))
	if err != nil {
		fmt.Println("error", err)
		return 1
	}
	for _, at := range []ebpf.AttachType{ebpf.AttachTCXIngress, ebpf.AttachTCXEgress} {
		res, err := link.QueryPrograms(link.QueryOptions{Target: l.Attrs().Index, Attach: at})
		if err != nil {
			st.TCX = -1
			break
		}
		st.TCX += len(res.Programs)
	}
	for _, parent := range []uint32{netlink.HANDLE_MIN_INGRESS, netlink.HANDLE_MIN_EGRESS} {
		fs, _ := netlink.FilterList(l, parent)
		for _, f := range fs {
			if bf, ok := f.(*netlink.BpfFilter); ok && strings.HasPrefix(bf.Name, filterPrefix) {
				st.Filters = append(st.Filters, fmt.Sprintf("%s:%d", bf.Name, bf.Handle))
			}
		}
	}
	qs, _ := netlink.QdiscList(l)
	for _, q := range qs {
		st.Clsact = st.Clsact || q.Type() == "clsact"
	}
	out, _ := json.Marshal(st)
	fmt.Println(string(out))
	return 0
}

// helper is a running child probe.
type helper struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	events chan Event
	done   chan string // the "closed" line, or "" if the child died
	hooks  []HookStatus
}

func startHelper(t *testing.T, ns, iface, tcMode string) *helper {
	t.Helper()
	cmd := exec.Command("ip", "netns", "exec", ns, os.Args[0], "-test.run", helperTest)
	cmd.Env = append(os.Environ(), envHelper+"=probe", envIface+"="+iface, envTCMode+"="+tcMode)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	h := &helper{cmd: cmd, stdin: stdin, events: make(chan Event, 4096), done: make(chan string, 1)}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	ready := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		closed := ""
		for sc.Scan() {
			line := sc.Text()
			switch {
			case strings.HasPrefix(line, "ready "), strings.HasPrefix(line, "error "):
				ready <- line
			case strings.HasPrefix(line, "closed"):
				closed = line
			case strings.HasPrefix(line, "{"):
				var ev Event
				if json.Unmarshal([]byte(line), &ev) == nil {
					h.events <- ev
				}
			}
		}
		close(h.events)
		h.done <- closed
	}()
	select {
	case line := <-ready:
		if !strings.HasPrefix(line, "ready ") {
			t.Fatalf("probe did not start: %s", line)
		}
		if err := json.Unmarshal([]byte(strings.TrimPrefix(line, "ready ")), &h.hooks); err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("probe did not start within 30s")
	}
	return h
}

// stop closes the probe cleanly and returns every event it printed.
func (h *helper) stop(t *testing.T) []Event {
	t.Helper()
	h.stdin.Close()
	var evs []Event
	timeout := time.After(30 * time.Second)
	for {
		select {
		case ev, ok := <-h.events:
			if !ok {
				if closed := <-h.done; closed != "closed <nil>" {
					t.Errorf("probe close: %q", closed)
				}
				h.cmd.Wait()
				return evs
			}
			evs = append(evs, ev)
		case <-timeout:
			t.Fatal("probe did not stop within 30s")
		}
	}
}

func queryTC(t *testing.T, ns, iface string) tcState {
	t.Helper()
	cmd := exec.Command("ip", "netns", "exec", ns, os.Args[0], "-test.run", helperTest)
	cmd.Env = append(os.Environ(), envHelper+"=query", envIface+"="+iface)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("query: %v: %s", err, out)
	}
	var st tcState
	line := strings.SplitN(strings.TrimSpace(string(out)), "\n", 2)[0]
	if err := json.Unmarshal([]byte(line), &st); err != nil {
		t.Fatalf("query output %q: %v", out, err)
	}
	return st
}

func (s tcState) clean() bool { return s.TCX <= 0 && len(s.Filters) == 0 && !s.Clsact }

// TestAttachVeth watches a real TLS ICAP client talk to the lab server
// across a veth pair, and compares the kernel's gaps with the client's.
func TestAttachVeth(t *testing.T) {
	for _, tc := range []struct {
		name, mode string
		ipv6       bool
	}{
		{ModeAuto, ModeAuto, false},
		{TCModeNetlink, TCModeNetlink, false},
		{"ipv6", ModeAuto, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pair := testutil.NewVethPair(t)
			server := pair.ServerIP
			if tc.ipv6 {
				_, server = pair.AddIPv6(t)
			}
			addr := net.JoinHostPort(server, "11344")
			cfg := icap.LabDefaults()
			cfg.Listen = addr
			cfg.PlainListen = ""
			cfg.Workers = 2
			cfg.StallEvery = 3
			cfg.StallFor = 1500 * time.Millisecond
			startLabIn(t, pair.Server, cfg)

			h := startHelper(t, pair.ClientNS, pair.ClientIf, tc.mode)
			for _, hook := range h.hooks {
				if !hook.Optional && !hook.Attached {
					t.Fatalf("hook %s not attached: %s", hook.Name, hook.Error)
				}
			}

			client := labClient(t, pair, addr, cfg.Service)
			var traces []*icap.Trace
			for i := 0; i < 3; i++ {
				traces = append(traces, options(t, client))
			}
			local := traces[0].Conn.Local
			if local.Addr().Is6() != tc.ipv6 {
				t.Fatalf("client address %s: not the family under test", local)
			}
			client.Close()
			time.Sleep(100 * time.Millisecond)
			evs := h.stop(t)

			var mine []Event
			for _, ev := range evs {
				if ev.Client == local {
					mine = append(mine, ev)
				}
				if ev.Type == evState && ev.Client.Port() == 0 {
					// connect() enters SYN_SENT before it binds its
					// port: such a flow would never close.
					t.Errorf("state event without the client's port: %+v", ev)
				}
			}
			t.Logf("%d events, %d of the client's connection %s:\n%s", len(evs), len(mine), local, describe(mine))
			checkConnection(t, mine, traces)

			if st := queryTC(t, pair.ClientNS, pair.ClientIf); !st.clean() {
				t.Errorf("after Close: %+v left on %s", st, pair.ClientIf)
			}
		})
	}
}

// labClient is a TLS ICAP client of one connection, in the client's
// namespace.
func labClient(t *testing.T, pair *testutil.VethPair, addr, service string) *icap.Client {
	t.Helper()
	client, err := icap.NewClient(icap.Config{
		Target:   "icaps://" + addr + "/" + service,
		Insecure: true, MaxConns: 1, Dialer: testutil.NSDialer{NS: pair.Client},
	})
	if err != nil {
		t.Fatal(err)
	}
	return client
}

func options(t *testing.T, client *icap.Client) *icap.Trace {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, _, tr, err := client.Options(ctx)
	if err != nil {
		t.Fatalf("OPTIONS: %v", err)
	}
	return tr
}

// gapTolerance: the kernel's gap and the client's own agree within 1 ms.
// The race detector's instrumentation slows the client's side alone; make
// test runs this test again without it.
var gapTolerance = map[bool]time.Duration{false: time.Millisecond, true: 5 * time.Millisecond}[testutil.RaceEnabled]

func checkConnection(t *testing.T, evs []Event, traces []*icap.Trace) {
	t.Helper()
	var requests [][]Event // exchange_start .. answer of each request exchange
	var synSent *Event
	var clientClose, serverEstablished bool
	for i, ev := range evs {
		switch {
		case ev.Type == evState && ev.OldState == tcpSynSent && ev.NewState == tcpEstablished:
			synSent = &evs[i]
		case ev.Type == evState && ev.Dir == dirToClient && ev.NewState == tcpEstablished:
			serverEstablished = true
		case ev.Type == evExchangeStart && ev.Phase == phaseRequest:
			requests = append(requests, []Event{ev})
		case (ev.Type == evFIN || ev.Type == evRST) && ev.Dir == dirToServer:
			// A close with unread bytes (a late session ticket) is a reset.
			clientClose = true
		case len(requests) > 0 && (ev.Type == evAcked || ev.Type == evAnswer):
			requests[len(requests)-1] = append(requests[len(requests)-1], ev)
		}
	}
	if synSent == nil || synSent.PID != uint32(os.Getpid()) {
		t.Errorf("no SYN_SENT -> ESTABLISHED event with this process's PID %d (got %+v)", os.Getpid(), synSent)
	}
	if !clientClose {
		t.Error("no FIN or RST from the client")
	}
	// The server's socket is in a namespace of its own; its traffic
	// crosses the watched interface, so its states are the flow's.
	if !serverEstablished {
		t.Error("no ESTABLISHED event of the server's socket, in the other namespace")
	}
	if len(requests) != len(traces) {
		t.Fatalf("%d request exchanges, want %d", len(requests), len(traces))
	}
	for i, ex := range requests {
		var acked, answer *Event
		for j := range ex {
			if ex[j].Type == evAcked && acked == nil {
				acked = &ex[j]
			}
			if ex[j].Type == evAnswer && answer == nil {
				answer = &ex[j]
			}
		}
		// A quick answer carries the ACK itself; a slow one is ACKed first.
		if answer == nil || i == 2 && acked == nil {
			t.Errorf("request %d: want an answer (and for the stalled one an ACK), got %s", i, describe(ex))
			continue
		}
		start := ex[0].Mono
		if answer.RefMono != start || acked != nil && acked.RefMono != start {
			t.Errorf("request %d: events refer to another start than %v: %s", i, start, describe(ex))
		}
		kernel := answer.Mono - start
		own := traces[i].FirstByteAt.Sub(traces[i].WriteStart)
		if d := kernel - own; d > gapTolerance || d < -gapTolerance {
			t.Errorf("request %d: kernel gap %v, client's own %v: differ by more than %v", i, kernel, own, gapTolerance)
		}
		if i == 2 { // the lab stalls every third request
			if acked.Mono-start > 200*time.Millisecond {
				t.Errorf("stalled request ACKed after %v", acked.Mono-start)
			}
			if kernel < 1400*time.Millisecond {
				t.Errorf("stalled request answered after %v, want about 1.5s", kernel)
			}
		}
	}
}

// TestKilledProbeLeavesNothing: a probe killed with SIGKILL leaves its
// clsact filters (TCX links die with it); the next start removes them, and
// its Close leaves the interface as it found it.
func TestKilledProbeLeavesNothing(t *testing.T) {
	pair := testutil.NewVethPair(t)
	before := queryTC(t, pair.ClientNS, pair.ClientIf)
	if !before.clean() {
		t.Fatalf("new interface not clean: %+v", before)
	}
	h := startHelper(t, pair.ClientNS, pair.ClientIf, TCModeNetlink)
	kill(t, h)
	if st := queryTC(t, pair.ClientNS, pair.ClientIf); len(st.Filters) != 2 {
		t.Fatalf("after SIGKILL in netlink mode, want our 2 filters left behind, got %+v", st)
	}

	h = startHelper(t, pair.ClientNS, pair.ClientIf, ModeAuto)
	st := queryTC(t, pair.ClientNS, pair.ClientIf)
	switch h.hooks[0].Mode {
	case TCModeTCX:
		if len(st.Filters) != 0 || st.TCX != 2 {
			t.Errorf("TCX run: stale filters not removed or programs missing: %+v", st)
		}
	case TCModeNetlink:
		if len(st.Filters) != 2 {
			t.Errorf("netlink run: %+v", st)
		}
	}
	kill(t, h)
	if h.hooks[0].Mode == TCModeTCX {
		if st := queryTC(t, pair.ClientNS, pair.ClientIf); !st.clean() {
			t.Errorf("after SIGKILL in TCX mode: %+v left", st)
		}
	}

	h = startHelper(t, pair.ClientNS, pair.ClientIf, TCModeNetlink)
	h.stop(t)
	if st := queryTC(t, pair.ClientNS, pair.ClientIf); !st.clean() {
		t.Errorf("after Close: %+v left", st)
	}
}

// startLabIn starts a lab server in a network namespace until the test ends.
func startLabIn(t *testing.T, ns netns.NsHandle, cfg icap.LabConfig) *icap.Lab {
	t.Helper()
	var lab *icap.Lab
	if err := testutil.InNetNS(ns, func() (err error) {
		lab, err = icap.StartLab(cfg)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lab.Shutdown(context.Background()) })
	return lab
}

// TestTwoProbesShareAnInterface: a second instance in netlink mode (an
// `icapwatch check` beside the agent, or a second agent) neither removes
// nor replaces the first one's filters, and each one's Close takes only
// its own.
func TestTwoProbesShareAnInterface(t *testing.T) {
	pair := testutil.NewVethPair(t)
	addr := net.JoinHostPort(pair.ServerIP, "11344")
	cfg := icap.LabDefaults()
	cfg.Listen, cfg.PlainListen = addr, ""
	startLabIn(t, pair.Server, cfg)

	first := startHelper(t, pair.ClientNS, pair.ClientIf, TCModeNetlink)
	own := queryTC(t, pair.ClientNS, pair.ClientIf).Filters
	if len(own) != 2 {
		t.Fatalf("first probe: want 2 filters, got %v", own)
	}
	second := startHelper(t, pair.ClientNS, pair.ClientIf, TCModeNetlink)
	both := queryTC(t, pair.ClientNS, pair.ClientIf).Filters
	if len(both) != 4 || !containsAll(both, own) {
		t.Fatalf("after the second probe started: filters %v, want the first's %v and two more", both, own)
	}

	client := labClient(t, pair, addr, cfg.Service)
	defer client.Close()
	local := options(t, client).Conn.Local
	firstEvs := first.stop(t)
	left := queryTC(t, pair.ClientNS, pair.ClientIf)
	if len(left.Filters) != 2 || containsAll(left.Filters, own[:1]) || !left.Clsact {
		t.Fatalf("after the first probe closed: %+v, want only the second's 2 filters", left)
	}
	options(t, client)
	client.Close()
	time.Sleep(100 * time.Millisecond)
	secondEvs := second.stop(t)

	requests := func(evs []Event) int {
		n := 0
		for _, ev := range evs {
			if ev.Client == local && ev.Type == evExchangeStart && ev.Phase == phaseRequest {
				n++
			}
		}
		return n
	}
	if n := requests(firstEvs); n != 1 {
		t.Errorf("the first probe saw %d requests, want 1:\n%s", n, describe(firstEvs))
	}
	if n := requests(secondEvs); n != 2 {
		t.Errorf("the second probe saw %d requests, want 2 (one after the first probe closed):\n%s", n, describe(secondEvs))
	}
	if st := queryTC(t, pair.ClientNS, pair.ClientIf); !st.clean() {
		t.Errorf("after both closed: %+v left", st)
	}
}

func containsAll(list, want []string) bool {
	for _, w := range want {
		found := false
		for _, v := range list {
			found = found || v == w
		}
		if !found {
			return false
		}
	}
	return true
}

func kill(t *testing.T, h *helper) {
	t.Helper()
	// ip netns exec execs the probe: the child is the probe itself.
	if err := h.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	err := h.cmd.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		t.Fatalf("probe exit: %v", err)
	}
}

// TestFollowsNewInterfaces: with no interfaces named, the probe takes
// every interface that is up, those that come up later too, and shrugs
// off one that disappears.
func TestFollowsNewInterfaces(t *testing.T) {
	pair := testutil.NewVethPair(t)
	h := startHelper(t, pair.ClientNS, "", ModeAuto)
	if !strings.Contains(h.hooks[1].Detail, pair.ClientIf) {
		t.Fatalf("egress not on %s at start: %+v", pair.ClientIf, h.hooks)
	}
	// Egress sees every loopback packet: ingress stays off lo.
	if st := queryTC(t, pair.ClientNS, "lo"); max(st.TCX, 0)+len(st.Filters) != 1 {
		t.Errorf("lo: want the egress program alone, got %+v", st)
	}
	const dummy = "icwnew0"
	for _, args := range [][]string{
		{"-n", pair.ClientNS, "link", "add", dummy, "type", "veth", "peer", "name", "icwnew1"},
		{"-n", pair.ClientNS, "link", "set", dummy, "up"},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v: %s", args, err, out)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		st := queryTC(t, pair.ClientNS, dummy)
		if st.TCX == 2 || len(st.Filters) == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("new interface %s not attached after 10s: %+v", dummy, st)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if out, err := exec.Command("ip", "-n", pair.ClientNS, "link", "del", dummy).CombinedOutput(); err != nil {
		t.Fatalf("ip link del: %v: %s", err, out)
	}
	time.Sleep(200 * time.Millisecond)
	h.stop(t) // fails on a close error
	for _, iface := range []string{pair.ClientIf, "lo"} {
		if st := queryTC(t, pair.ClientNS, iface); !st.clean() {
			t.Errorf("after Close: %+v left on %s", st, iface)
		}
	}
}
