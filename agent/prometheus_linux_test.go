package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/icapwatch/icapwatch/icap"
	"github.com/icapwatch/icapwatch/internal/testutil"
	"github.com/icapwatch/icapwatch/internal/workload"
	"github.com/prometheus/common/model"
	"gopkg.in/yaml.v3"
)

// TestPrometheusAlertFires runs a real Prometheus (Debian's package) on
// loopback with the rules of deploy/, scraping a running agent during the
// seed scenario: the lab server has two workers and an idle timeout, the
// workload a pool of three connections. The third connection waits behind
// the two idle ones until the lab idle-closes them: ICAPRequestStalled
// goes pending, then firing, and the release that ends the stall reaches
// Prometheus too. The lab's idle timeout follows the rule's own `for:`,
// so that the stall outlasts it.
func TestPrometheusAlertFires(t *testing.T) {
	testutil.RequireRoot(t)
	promBin, err := exec.LookPath("prometheus")
	if err != nil {
		testutil.SkipOrFail(t, "prometheus not found (make deps installs it): %v", err)
		return
	}
	rules, err := filepath.Abs(filepath.Join("..", "deploy", "prometheus", "icapwatch-rules.yml"))
	if err != nil {
		t.Fatal(err)
	}
	pendingFor := ruleFor(t, rules, "ICAPRequestStalled")
	agentCfg := loopbackAgent(0)
	// The stall lasts about the idle timeout. Within it: the agent's
	// threshold, a scrape and an evaluation (1 s each) before pending, the
	// rule's `for:`, and room for a slow start.
	idle := agentCfg.Correlator.StallThreshold + pendingFor + 15*time.Second

	labCfg := icap.LabDefaults()
	labCfg.Listen, labCfg.PlainListen = "127.0.0.1:0", ""
	labCfg.Workers, labCfg.IdleTimeout = 2, idle
	labCfg.Logger = hclog.NewNullLogger()
	lab, err := icap.StartLab(labCfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		lab.Shutdown(ctx)
	})
	labAddr := lab.TLSAddr().(*net.TCPAddr)
	target := fmt.Sprintf("icaps://%s/%s", labAddr, labCfg.Service)

	agentCfg.Ports = []uint16{uint16(labAddr.Port)}
	base := startDaemon(t, agentCfg)
	prom := startPrometheus(t, promBin, rules, strings.TrimPrefix(base, "http://"))

	// The seed: two connections fill the lab's workers and go idle, then
	// bursts of three need one more.
	start := time.Now()
	wctx, wcancel := context.WithCancel(context.Background())
	wdone := make(chan workload.Stats, 1)
	go func() {
		st, _ := workload.Run(wctx, workload.Config{Target: target, Insecure: true, Conns: 3,
			MinPause: time.Second, MaxPause: time.Second, Timeout: 2 * idle, Seed: 1})
		wdone <- st
	}()
	t.Cleanup(func() {
		wcancel()
		select {
		case st := <-wdone:
			t.Logf("workload: %+v", st)
		case <-time.After(10 * time.Second):
			t.Error("workload did not stop within 10s")
		}
	})

	// Pending, then firing, then the release in Prometheus.
	first := map[string]time.Duration{}
	released := false
	deadline := start.Add(idle + 30*time.Second)
	for time.Now().Before(deadline) && !(first["firing"] > 0 && released) {
		time.Sleep(time.Second)
		var res struct {
			Data struct {
				Alerts []struct {
					Labels map[string]string
					State  string
				}
			}
		}
		promGet(t, prom, "/api/v1/alerts", nil, &res)
		for _, a := range res.Data.Alerts {
			if _, seen := first[a.State]; !seen && a.Labels["alertname"] == "ICAPRequestStalled" {
				first[a.State] = time.Since(start)
			}
		}
		released = promHas(t, prom, "sum(icapwatch_stall_releases_total) > 0")
	}
	t.Logf("ICAPRequestStalled (for: %v, lab idle timeout %v): %v; release seen: %v; lab: %+v",
		pendingFor, idle, first, released, lab.Stats())
	pending, firing := first["pending"], first["firing"]
	switch {
	case pending == 0 || firing == 0 || firing < pending:
		t.Errorf("ICAPRequestStalled states first seen at %v; want pending, then firing.\n"+
			"icapwatch_stalled_exchanges > 0 in Prometheus: %v\nthe agent's events: %s",
			first, promHas(t, prom, "icapwatch_stalled_exchanges > 0"), get(t, base+"/api/v1/events"))
	case firing-pending < pendingFor-2*time.Second:
		t.Errorf("ICAPRequestStalled fired %v after pending, before its for: %v", firing-pending, pendingFor)
	}
	if !released {
		t.Error("Prometheus has no icapwatch_stall_releases_total above 0: the stall did not end with the lab's idle close")
	}
	if !promHas(t, prom, `icapwatch_stalls_total{state="acked_silent"} > 0`) {
		t.Error(`Prometheus has no icapwatch_stalls_total{state="acked_silent"} above 0`)
	}
}

// ruleFor reads an alerting rule's `for:` from a rule file.
func ruleFor(t *testing.T, file, alert string) time.Duration {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var rf struct {
		Groups []struct {
			Rules []struct{ Alert, For string }
		}
	}
	if err := yaml.Unmarshal(b, &rf); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			if r.Alert != alert {
				continue
			}
			d, err := model.ParseDuration(r.For)
			if err != nil || d <= 0 {
				t.Fatalf("%s: %s has for: %q; want a duration", file, alert, r.For)
			}
			return time.Duration(d)
		}
	}
	t.Fatalf("%s: no alert %s", file, alert)
	return 0
}

// startPrometheus runs Prometheus on loopback until the test ends, with
// the rule file, scraping the agent every second as job="icapwatch".
func startPrometheus(t *testing.T, bin, rules, agentAddr string) string {
	t.Helper()
	dir := t.TempDir()
	conf := fmt.Sprintf(`global: {scrape_interval: 1s, evaluation_interval: 1s}
rule_files: [%q]
scrape_configs:
  - job_name: icapwatch
    static_configs: [{targets: [%q]}]
`, rules, agentAddr)
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	cmd := exec.Command(bin, "--config.file="+filepath.Join(dir, "prometheus.yml"),
		"--storage.tsdb.path="+filepath.Join(dir, "data"), "--web.listen-address="+addr, "--log.level=warn")
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(os.Interrupt)
		waited := make(chan struct{})
		go func() { cmd.Wait(); close(waited) }()
		select {
		case <-waited:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-waited
		}
	})
	base := "http://" + addr
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if resp, err := http.Get(base + "/-/ready"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return base
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatal("prometheus not ready within 30s")
	return ""
}

func promGet(t *testing.T, base, path string, q url.Values, v any) {
	t.Helper()
	u := base + path
	if q != nil {
		u += "?" + q.Encode()
	}
	resp, err := http.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

// promHas says whether an instant query returns any series.
func promHas(t *testing.T, base, query string) bool {
	t.Helper()
	var res struct {
		Status string
		Data   struct{ Result []json.RawMessage }
	}
	promGet(t, base, "/api/v1/query", url.Values{"query": {query}}, &res)
	if res.Status != "success" {
		t.Fatalf("query %s: status %q", query, res.Status)
	}
	return len(res.Data.Result) > 0
}
