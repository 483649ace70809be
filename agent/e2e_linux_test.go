package agent

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/icapwatch/icapwatch/agent/correlate"
	"github.com/icapwatch/icapwatch/bpf"
	"github.com/icapwatch/icapwatch/deploy"
	"github.com/icapwatch/icapwatch/icap"
	"github.com/icapwatch/icapwatch/internal/testutil"
	"github.com/icapwatch/icapwatch/internal/workload"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// TestEndToEnd runs the lab server, an application-like workload whose
// pool is one larger than the server's workers, and the agent with real
// eBPF on loopback; then it reads /metrics and the API. It runs on the
// event buffer the kernel offers (the ring buffer where it has one), and
// on the perf buffer, whose per-CPU events the reader merges in time
// order, side by side.
func TestEndToEnd(t *testing.T) {
	testutil.RequireRoot(t)
	for _, events := range []string{bpf.ModeAuto, bpf.OutputPerf} {
		t.Run(events, func(t *testing.T) {
			t.Parallel()
			endToEnd(t, events)
		})
	}
}

func endToEnd(t *testing.T, events string) {
	labCfg := icap.LabDefaults()
	labCfg.Listen, labCfg.PlainListen = "127.0.0.1:0", ""
	labCfg.Workers = 2
	labCfg.IdleTimeout = 4 * time.Second
	lab, err := icap.StartLab(labCfg)
	if err != nil {
		t.Fatal(err)
	}
	defer lab.Shutdown(context.Background())
	labAddr := lab.TLSAddr().(*net.TCPAddr)
	target := fmt.Sprintf("icaps://%s/%s", labAddr, labCfg.Service)

	cfg := loopbackAgent(labAddr.Port)
	cfg.KernelEvents = events
	// The canary keeps its connection past the lab's idle timeout, to see
	// the server's idle close.
	cfg.Canary = CanaryConfig{Targets: []string{target}, Interval: 5 * time.Second, Insecure: true,
		PoolSize: 1, MaxIdle: 6 * time.Second}
	d, base := runDaemon(t, cfg)
	if got := d.KernelEvents(); events != bpf.ModeAuto && got != events {
		t.Fatalf("the agent reads the %q buffer, want %q", got, events)
	}
	t.Logf("events through %s", d.KernelEvents())

	// The seed: bursts that need a third connection behind two idle ones.
	wctx, wcancel := context.WithTimeout(context.Background(), 13*time.Second)
	st, err := workload.Run(wctx, workload.Config{Target: target, Insecure: true, Conns: 3,
		MinPause: time.Second, MaxPause: time.Second, Timeout: 20 * time.Second, Seed: 1})
	wcancel()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("workload: %+v", st)

	// A request written after the server's idle close: a race.
	raceAddr := reuseAfterClose(t, labAddr.String(), labCfg.IdleTimeout)
	time.Sleep(2 * time.Second) // the last events, tickets settled, a sweep

	text := get(t, base+"/metrics")
	promtoolCheck(t, text)
	metrics := scrape(t, base+"/metrics")
	want := func(name string, labels map[string]string, min float64) {
		t.Helper()
		if got := sum(metrics, name, labels); got < min {
			t.Errorf("%s%v = %v, want at least %v", name, labels, got, min)
		}
	}
	want("icapwatch_stalls_total", map[string]string{"state": correlate.StateAckedSilent}, 1)
	want("icapwatch_stall_releases_total", nil, 1)
	want("icapwatch_tls_alerts_total", map[string]string{"direction": "server"}, 1)
	want("icapwatch_connection_closes_total", map[string]string{"initiator": "server"}, 1)
	want("icapwatch_idle_close_races_total", map[string]string{"kind": correlate.RaceReuseAfterClose}, 1)
	want("icapwatch_kernel_hook_attached", map[string]string{"hook": "tc_egress"}, 1)
	// On lo only egress is attached, and the gauge says so.
	if got := sum(metrics, "icapwatch_kernel_hook_attached", map[string]string{"hook": "tc_ingress"}); got != 0 {
		t.Errorf("tc_ingress reported attached (%v) on lo, where only egress is", got)
	}
	want("icapwatch_source", map[string]string{"source": SourceBPF}, 1)
	// Every event came in kernel-time order, and no stall ended because
	// the agent lost track of it: what an answer read before its request
	// looks like.
	if mf := metrics["icapwatch_events_late_total"]; mf == nil {
		t.Error("icapwatch_events_late_total is not exported")
	} else if got := sum(metrics, "icapwatch_events_late_total", nil); got != 0 {
		t.Errorf("icapwatch_events_late_total = %v, want 0", got)
	}
	if got := sum(metrics, "icapwatch_stall_outcomes_total", map[string]string{"outcome": correlate.OutcomeEvicted}); got != 0 {
		t.Errorf("icapwatch_stall_outcomes_total{outcome=%q} = %v, want 0", correlate.OutcomeEvicted, got)
	}
	answered := float64(st.Requests - st.Failed)
	if got := histCountOf(metrics, "icapwatch_exchange_duration_seconds", map[string]string{"phase": "request"}); got < answered {
		t.Errorf("gap histogram counts %v request exchanges, the workload had %v answered (and one more OPTIONS)", got, answered)
	}

	// The dashboard and the alert rules use only metrics the agent exports.
	exprs, err := deploy.Expressions(filepath.Join("..", "deploy"))
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range deploy.MetricNames(exprs) {
		if metrics[name] == nil {
			t.Errorf("the dashboard or the rules use %s, which the agent did not export", name)
		}
	}

	var api struct {
		Events []map[string]any `json:"events"`
	}
	getJSON(t, base+"/api/v1/events", &api)
	kinds := map[string]int{}
	for _, e := range api.Events {
		kinds[e["kind"].(string)]++
	}
	t.Logf("events: %v", kinds)
	for _, k := range []correlate.Kind{correlate.KindStall, correlate.KindStallEnd, correlate.KindRelease, correlate.KindRace, correlate.KindClose, correlate.KindTLSAlert} {
		if kinds[string(k)] == 0 {
			t.Errorf("no %s event in /api/v1/events: %v", k, kinds)
		}
	}
	if len(api.Events) >= cfg.EventsKeep {
		t.Fatalf("%d events: the API kept only the last, the counts below cannot be compared", len(api.Events))
	}
	// A stall is an exchange open past the threshold: none ends sooner
	// (an answer still on its way from the kernel when the sweep ran
	// would make one).
	for _, e := range api.Events {
		if d, ok := e["duration_seconds"].(float64); ok && e["kind"] == string(correlate.KindStallEnd) &&
			d < cfg.Correlator.StallThreshold.Seconds() {
			t.Errorf("a stall ended after %v s, below the %v threshold: %v", d, cfg.Correlator.StallThreshold, e)
		}
	}

	// Each stalled exchange is counted once: as many acked_silent stalls
	// as stall events. The scrape and the events are read again until
	// nothing moved between them.
	stallEvents := func() int {
		getJSON(t, base+"/api/v1/events", &api)
		n := 0
		for _, e := range api.Events {
			if e["kind"] == string(correlate.KindStall) && e["state"] == correlate.StateAckedSilent {
				n++
			}
		}
		return n
	}
	for attempt := 1; ; attempt++ {
		before := stallEvents()
		counted := sum(scrape(t, base+"/metrics"), "icapwatch_stalls_total", map[string]string{"state": correlate.StateAckedSilent})
		if after := stallEvents(); after != before && attempt < 3 {
			continue
		}
		if counted != float64(before) {
			t.Errorf("icapwatch_stalls_total{state=%q} = %v, but %d stall events", correlate.StateAckedSilent, counted, before)
		}
		break
	}

	// The request written after the server's close is that race, on that
	// connection.
	var races []any
	for _, e := range api.Events {
		if e["kind"] == string(correlate.KindRace) && e["client_addr"] == raceAddr {
			races = append(races, e["race_kind"])
		}
	}
	if len(races) != 1 || races[0] != correlate.RaceReuseAfterClose {
		t.Errorf("race events of %s: kinds %v, want one %s", raceAddr, races, correlate.RaceReuseAfterClose)
	}
	var ex struct {
		Exchanges []correlate.OpenExchange `json:"exchanges"`
	}
	getJSON(t, base+"/api/v1/exchanges", &ex)
	page := get(t, base+"/")
	if !strings.Contains(page, "Source: <b>bpf</b>") || !strings.Contains(page, "tc_egress") {
		t.Errorf("landing page lacks the source or hooks:\n%s", page)
	}
}

// reuseAfterClose answers one OPTIONS, waits past the server's idle
// timeout without reading, and writes another. It returns the
// connection's local address.
func reuseAfterClose(t *testing.T, addr string, idle time.Duration) string {
	t.Helper()
	c, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	opts := "OPTIONS icap://" + addr + "/SYMCScanResp-AV ICAP/1.0\r\nHost: " + addr + "\r\nEncapsulated: null-body=0\r\n\r\n"
	if _, err := io.WriteString(c, opts); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	if _, err := c.Read(buf); err != nil {
		t.Fatal(err)
	}
	time.Sleep(idle + time.Second)
	io.WriteString(c, opts) // the server has closed: this is the race
	return c.LocalAddr().String()
}

// loopbackAgent is an agent on lo with real eBPF and short thresholds.
func loopbackAgent(port int) DaemonConfig {
	cfg := DefaultDaemonConfig()
	cfg.Ports, cfg.Interfaces, cfg.Source = []uint16{uint16(port)}, []string{"lo"}, SourceBPF
	cfg.Correlator.StallThreshold, cfg.SweepInterval = 2*time.Second, 200*time.Millisecond
	cfg.Web.ListenAddresses = []string{"127.0.0.1:0"}
	return cfg
}

// startDaemon runs the agent until the test ends, when it must stop
// within 5 s; it returns the agent's base URL once it is ready.
func startDaemon(t *testing.T, cfg DaemonConfig) string {
	t.Helper()
	_, base := runDaemon(t, cfg)
	return base
}

// runDaemon is startDaemon that also returns the agent.
func runDaemon(t *testing.T, cfg DaemonConfig) (*Daemon, string) {
	t.Helper()
	d, base := launchDaemon(t, cfg)
	waitReady(t, base)
	return d, base
}

// launchDaemon runs the agent until the test ends and returns its base
// URL as soon as it listens, before it is ready.
func launchDaemon(t *testing.T, cfg DaemonConfig) (*Daemon, string) {
	t.Helper()
	d, err := NewDaemon(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("agent: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Error("agent did not stop within 5s")
		}
	})
	select {
	case addr := <-d.Addr():
		return d, "http://" + addr.String()
	case err := <-done:
		done <- err // for the cleanup
		t.Fatalf("agent: %v", err)
		return nil, ""
	}
}

func waitReady(t *testing.T, base string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if resp, err := http.Get(base + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatal("agent not ready within 30s")
}

func get(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s", url, resp.Status)
	}
	return string(b)
}

func getJSON(t *testing.T, url string, v any) {
	t.Helper()
	if err := json.Unmarshal([]byte(get(t, url)), v); err != nil {
		t.Fatalf("%s: %v", url, err)
	}
}

func scrape(t *testing.T, url string) map[string]*dto.MetricFamily {
	t.Helper()
	p := expfmt.NewTextParser(model.UTF8Validation)
	mf, err := p.TextToMetricFamilies(strings.NewReader(get(t, url)))
	if err != nil {
		t.Fatal(err)
	}
	return mf
}

func sum(mfs map[string]*dto.MetricFamily, name string, labels map[string]string) float64 {
	var total float64
	for _, m := range mfs[name].GetMetric() {
		if matches(m, labels) {
			total += m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	return total
}

func histCountOf(mfs map[string]*dto.MetricFamily, name string, labels map[string]string) float64 {
	var total float64
	for _, m := range mfs[name].GetMetric() {
		if matches(m, labels) {
			total += float64(m.GetHistogram().GetSampleCount())
		}
	}
	return total
}

// promtoolCheck runs `promtool check metrics` (Debian's prometheus
// package, installed by make deps) on an exposition.
func promtoolCheck(t *testing.T, exposition string) {
	t.Helper()
	path, err := exec.LookPath("promtool")
	if err != nil {
		testutil.SkipOrFail(t, "promtool not found (make deps installs it): %v", err)
		return
	}
	cmd := exec.Command(path, "check", "metrics")
	cmd.Stdin = strings.NewReader(exposition)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}
}

// lockedBuffer is a process's output, read while the process still writes.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// process is an icapwatch command run as a user runs it.
type process struct {
	cmd    *exec.Cmd
	out    *lockedBuffer // stdout and stderr
	exited chan struct{}
	err    error // Wait's, once exited is closed
}

// startProcess starts cmd; when the test ends it is killed if it still
// runs.
func startProcess(t *testing.T, cmd *exec.Cmd) *process {
	t.Helper()
	p := &process{cmd: cmd, out: &lockedBuffer{}, exited: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.out, p.out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.err = cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-p.exited:
		default:
			cmd.Process.Kill()
			<-p.exited
		}
	})
	return p
}

var servingAt = regexp.MustCompile(`serving: address=(\S+)`)

// base waits for the agent to say where it serves HTTP.
func (p *process) base(t *testing.T) string {
	t.Helper()
	deadline := time.After(30 * time.Second)
	for {
		if m := servingAt.FindStringSubmatch(p.out.String()); m != nil {
			return "http://" + m[1]
		}
		select {
		case <-p.exited:
			t.Fatalf("agent exited (%v) before serving:\n%s", p.err, p.out)
		case <-deadline:
			t.Fatalf("agent did not say where it serves within 30s:\n%s", p.out)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// stop sends sig and returns the exit code (-1: ended by a signal).
func (p *process) stop(t *testing.T, sig os.Signal) int {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.exited:
	case <-time.After(10 * time.Second):
		t.Fatalf("no exit within 10s of %v:\n%s", sig, p.out)
	}
	return p.cmd.ProcessState.ExitCode()
}

// fetch GETs url through c and returns the status and body.
func fetch(t *testing.T, c *http.Client, url string) (int, string) {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

// waitReadyThrough is waitReady through c.
func waitReadyThrough(t *testing.T, c *http.Client, base string) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if resp, err := c.Get(base + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
	}
	t.Fatal("agent not ready within 30s")
}

func parseMetrics(t *testing.T, text string) map[string]*dto.MetricFamily {
	t.Helper()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	mf, err := parser.TextToMetricFamilies(strings.NewReader(text))
	if err != nil {
		t.Fatal(err)
	}
	return mf
}

// Without privileges `--source auto` falls back to sock_diag: it says so,
// serves, is ready, and stops cleanly on SIGTERM; the demo too.
func TestAgentUnprivilegedRunsOnSockDiag(t *testing.T) {
	testutil.RequireRoot(t) // to run the binary as nobody
	bin := testutil.BuildIcapwatch(t)
	nobody := &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}

	cmd := exec.Command(bin, "agent", "--source", "auto", "--web.listen-address", "127.0.0.1:0")
	cmd.SysProcAttr = nobody
	p := startProcess(t, cmd)
	base := p.base(t)
	waitReady(t, base)
	if !strings.Contains(p.out.String(), "running on sock_diag") {
		t.Errorf("the agent does not say it runs on sock_diag:\n%s", p.out)
	}
	if got := sum(scrape(t, base+"/metrics"), "icapwatch_source", map[string]string{"source": SourceSockDiag}); got != 1 {
		t.Errorf("icapwatch_source{source=%q} = %v, want 1", SourceSockDiag, got)
	}
	if code := p.stop(t, syscall.SIGTERM); code != 0 {
		t.Errorf("exit %d on SIGTERM, want 0:\n%s", code, p.out)
	}
	if out := p.out.String(); strings.Contains(out, "panic") {
		t.Errorf("agent panicked:\n%s", out)
	}

	// The demo's application links to the binary from TMPDIR: nothing may
	// stay there.
	tmp := t.TempDir()
	if err := os.Chmod(tmp, 0o777); err != nil {
		t.Fatal(err)
	}
	cmd = exec.Command(bin, "demo", "--source", "auto", "--duration", "4s", "--listen", "127.0.0.1:0",
		"--web.listen-address", "127.0.0.1:0", "--idle-timeout", "2s", "--stall-threshold", "1s")
	cmd.SysProcAttr = nobody
	cmd.Env = append(os.Environ(), "TMPDIR="+tmp)
	demo := startProcess(t, cmd)
	select {
	case <-demo.exited:
	case <-time.After(30 * time.Second):
		t.Fatalf("demo of 4s still runs after 30s:\n%s", demo.out)
	}
	out := demo.out.String()
	if code := demo.cmd.ProcessState.ExitCode(); code != 0 || strings.Contains(out, "panic") ||
		!strings.Contains(out, "runs on sock_diag") || !strings.Contains(out, "source: sockdiag") {
		t.Errorf("demo as nobody: exit %d, want 0 on sock_diag without a panic:\n%s", code, out)
	}
	if left, _ := os.ReadDir(tmp); len(left) > 0 {
		t.Errorf("the demo left %v in its TMPDIR", left)
	}
}

// ourFilters counts icapwatch's clsact filters on the namespace's
// loopback, and whether a clsact qdisc is there at all.
func ourFilters(t *testing.T, h *netlink.Handle) (filters int, clsact bool) {
	t.Helper()
	lo, err := h.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	qdiscs, err := h.QdiscList(lo)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range qdiscs {
		clsact = clsact || q.Type() == "clsact"
	}
	if !clsact {
		return 0, false
	}
	for _, parent := range []uint32{netlink.HANDLE_MIN_INGRESS, netlink.HANDLE_MIN_EGRESS} {
		fs, err := h.FilterList(lo, parent)
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range fs {
			if bf, ok := f.(*netlink.BpfFilter); ok && strings.HasPrefix(bf.Name, "icapwatch") {
				filters++
			}
		}
	}
	return filters, clsact
}

// tcxPrograms counts the programs attached through TCX to the namespace's
// loopback, both directions.
func tcxPrograms(t *testing.T, ns netns.NsHandle) int {
	t.Helper()
	n := 0
	err := testutil.InNetNS(ns, func() error {
		lo, err := net.InterfaceByName("lo")
		if err != nil {
			return err
		}
		for _, at := range []ebpf.AttachType{ebpf.AttachTCXIngress, ebpf.AttachTCXEgress} {
			r, err := link.QueryPrograms(link.QueryOptions{Target: lo.Index, Attach: at})
			if err != nil {
				return err
			}
			n += len(r.Programs)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// An agent killed with SIGKILL and started again leaves one set of hooks,
// not two, and works; stopped cleanly, it leaves none. Each mode runs in a
// network namespace of its own, whose loopback no other test touches.
func TestAgentRestartAfterSIGKILL(t *testing.T) {
	testutil.RequireRoot(t)
	bin := testutil.BuildIcapwatch(t)
	for _, mode := range []string{bpf.TCModeNetlink, bpf.TCModeTCX} {
		t.Run(mode, func(t *testing.T) {
			pair := testutil.NewVethPair(t) // its server namespace, for its loopback
			ns := pair.Server
			nl, err := netlink.NewHandleAt(ns)
			if err != nil {
				t.Fatal(err)
			}
			defer nl.Close()
			hooks := func() int {
				if mode == bpf.TCModeTCX {
					return tcxPrograms(t, ns)
				}
				n, _ := ourFilters(t, nl)
				return n
			}

			labCfg := icap.LabDefaults()
			labCfg.Listen, labCfg.PlainListen = "127.0.0.1:0", ""
			var lab *icap.Lab
			if err := testutil.InNetNS(ns, func() (err error) { lab, err = icap.StartLab(labCfg); return err }); err != nil {
				t.Fatal(err)
			}
			defer lab.Shutdown(context.Background())
			port := lab.TLSAddr().(*net.TCPAddr).Port
			web := &http.Client{Timeout: 5 * time.Second,
				Transport: &http.Transport{DialContext: testutil.NSDialer{NS: ns}.DialContext}}
			defer web.CloseIdleConnections()
			start := func() (*process, string) {
				p := startProcess(t, exec.Command("ip", "netns", "exec", pair.ServerNS, bin, "agent",
					"--source", "bpf", "--tc-mode", mode, "--interfaces", "lo", "--ports", strconv.Itoa(port),
					"--web.listen-address", "127.0.0.1:0", "--log.level", "debug"))
				base := p.base(t)
				waitReadyThrough(t, web, base)
				return p, base
			}

			// On loopback the egress hook alone sees every packet: one
			// filter or link is the whole set.
			first, _ := start()
			if n := hooks(); n != 1 {
				t.Fatalf("first agent: %d hooks of ours on lo, want 1", n)
			}
			if code := first.stop(t, syscall.SIGKILL); code != -1 {
				t.Fatalf("SIGKILL: exit %d", code)
			}
			left := hooks()
			if want := map[string]int{bpf.TCModeNetlink: 1, bpf.TCModeTCX: 0}[mode]; left != want {
				t.Errorf("after SIGKILL: %d hooks of ours left on lo, want %d", left, want)
			}

			second, base := start()
			if n := hooks(); n != 1 {
				t.Errorf("restarted agent: %d hooks of ours on lo, want 1:\n%s", n, second.out)
			}
			if mode == bpf.TCModeNetlink && !strings.Contains(second.out.String(), "removed stale filter") {
				t.Errorf("the restarted agent does not say it removed the stale filter:\n%s", second.out)
			}
			if _, page := fetch(t, web, base+"/"); !strings.Contains(page, "<td>"+mode+"</td>") {
				t.Errorf("landing page does not show TC mode %s:\n%s", mode, page)
			}

			// One exchange on the namespace's loopback.
			client, err := icap.NewClient(icap.Config{Target: fmt.Sprintf("icaps://%s/%s", lab.TLSAddr(), labCfg.Service),
				Insecure: true, Dialer: testutil.NSDialer{NS: ns}})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			_, _, _, err = client.Options(ctx)
			cancel()
			client.Close()
			if err != nil {
				t.Fatal(err)
			}
			request := map[string]string{"phase": "request"}
			var got float64
			for deadline := time.Now().Add(10 * time.Second); got == 0 && time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
				_, text := fetch(t, web, base+"/metrics")
				got = histCountOf(parseMetrics(t, text), "icapwatch_exchange_duration_seconds", request)
			}
			time.Sleep(time.Second) // a second answer would be counted by now
			_, text := fetch(t, web, base+"/metrics")
			if got = histCountOf(parseMetrics(t, text), "icapwatch_exchange_duration_seconds", request); got != 1 {
				t.Errorf("the restarted agent counted %v request exchanges, want the 1 sent", got)
			}

			if code := second.stop(t, syscall.SIGTERM); code != 0 {
				t.Errorf("exit %d on SIGTERM:\n%s", code, second.out)
			}
			if n := hooks(); n != 0 {
				t.Errorf("after a clean stop: %d hooks of ours left on lo", n)
			}
			if _, clsact := ourFilters(t, nl); clsact {
				t.Error("after a clean stop: a clsact qdisc is left on lo")
			}
		})
	}
}

// --max-flows sizes the kernel's flow table too, and the flows it drops
// to make room are counted.
func TestKernelFlowEvictions(t *testing.T) {
	testutil.RequireRoot(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var served sync.WaitGroup
	defer func() { ln.Close(); served.Wait() }()
	served.Add(1)
	go func() {
		defer served.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			served.Add(1)
			go func() { defer served.Done(); io.Copy(io.Discard, c); c.Close() }()
		}
	}()
	cfg := loopbackAgent(ln.Addr().(*net.TCPAddr).Port)
	cfg.Correlator.MaxFlows = 16 // the kernel's smallest table
	cfg.kernelFlowsEvery = 200 * time.Millisecond
	base := startDaemon(t, cfg)
	if got := sum(scrape(t, base+"/metrics"), "icapwatch_kernel_flow_evictions_total", nil); got != 0 {
		t.Fatalf("icapwatch_kernel_flow_evictions_total = %v before any traffic", got)
	}

	// Four times as many connections as the table holds, each with a
	// request, all open while the agent counts.
	const conns = 64
	for range conns {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := io.WriteString(c, "OPTIONS icap://127.0.0.1/x ICAP/1.0\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
	}
	var got float64
	for deadline := time.Now().Add(10 * time.Second); got == 0 && time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		got = sum(scrape(t, base+"/metrics"), "icapwatch_kernel_flow_evictions_total", nil)
	}
	if got < conns-16 || got > conns {
		t.Errorf("icapwatch_kernel_flow_evictions_total = %v for %d flows in a table of 16, want %d to %d",
			got, conns, conns-16, conns)
	}
}
