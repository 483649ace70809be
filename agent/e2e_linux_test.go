package agent

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/icapwatch/icapwatch/deploy"
	"github.com/icapwatch/icapwatch/icap"
	"github.com/icapwatch/icapwatch/internal/testutil"
	"github.com/icapwatch/icapwatch/internal/workload"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// TestEndToEnd runs the lab server, an application-like workload whose
// pool is one larger than the server's workers, and the agent with real
// eBPF on loopback; then it reads /metrics and the API.
func TestEndToEnd(t *testing.T) {
	testutil.RequireRoot(t)
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
	// The canary keeps its connection past the lab's idle timeout, to see
	// the server's idle close.
	cfg.Canary = CanaryConfig{Targets: []string{target}, Interval: 5 * time.Second, Insecure: true,
		PoolSize: 1, MaxIdle: 6 * time.Second}
	base := startDaemon(t, cfg)

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
	reuseAfterClose(t, labAddr.String(), labCfg.IdleTimeout)
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
	want("icapwatch_stalls_total", map[string]string{"state": StateAckedSilent}, 1)
	want("icapwatch_stall_releases_total", nil, 1)
	want("icapwatch_tls_alerts_total", map[string]string{"direction": "server"}, 1)
	want("icapwatch_connection_closes_total", map[string]string{"initiator": "server"}, 1)
	want("icapwatch_idle_close_races_total", map[string]string{"kind": RaceReuseAfterClose}, 1)
	want("icapwatch_kernel_hook_attached", map[string]string{"hook": "tc_egress"}, 1)
	want("icapwatch_source", map[string]string{"source": SourceBPF}, 1)
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
	for _, k := range []string{KindStall, KindStallEnd, KindRelease, KindRace, KindClose, KindTLSAlert} {
		if kinds[k] == 0 {
			t.Errorf("no %s event in /api/v1/events: %v", k, kinds)
		}
	}
	var ex struct {
		Exchanges []OpenExchange `json:"exchanges"`
	}
	getJSON(t, base+"/api/v1/exchanges", &ex)
	page := get(t, base+"/")
	if !strings.Contains(page, "Source: <b>bpf</b>") || !strings.Contains(page, "tc_egress") {
		t.Errorf("landing page lacks the source or hooks:\n%s", page)
	}
}

// reuseAfterClose answers one OPTIONS, waits past the server's idle
// timeout without reading, and writes another.
func reuseAfterClose(t *testing.T, addr string, idle time.Duration) {
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
}

// loopbackAgent is an agent on lo with real eBPF and short thresholds.
func loopbackAgent(port int) DaemonConfig {
	cfg := DefaultDaemonConfig()
	cfg.Ports, cfg.Interfaces, cfg.Source = []uint16{uint16(port)}, []string{"lo"}, SourceBPF
	cfg.Correlator.StallThreshold, cfg.SweepInterval = 2*time.Second, 200*time.Millisecond
	cfg.Web.ListenAddress = "127.0.0.1:0"
	return cfg
}

// startDaemon runs the agent until the test ends, when it must stop
// within 5 s; it returns the agent's base URL once it is ready.
func startDaemon(t *testing.T, cfg DaemonConfig) string {
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
	base := "http://" + (<-d.Addr()).String()
	waitReady(t, base)
	return base
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

func matches(m *dto.Metric, labels map[string]string) bool {
	have := map[string]string{}
	for _, l := range m.GetLabel() {
		have[l.GetName()] = l.GetValue()
	}
	for k, v := range labels {
		if have[k] != v {
			return false
		}
	}
	return true
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
