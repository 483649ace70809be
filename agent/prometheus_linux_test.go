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

	"github.com/icapwatch/icapwatch/icap"
	"github.com/icapwatch/icapwatch/internal/testutil"
)

// TestPrometheusAlertFires runs a real Prometheus (Debian's package) on
// loopback, scraping a running agent with the rules of deploy/, while the
// lab holds an answer as the seed's server did (ACKed, then silent):
// ICAPRequestStalled goes pending, then firing. The seed's cause, workers
// held by idle connections, is TestEndToEnd's.
func TestPrometheusAlertFires(t *testing.T) {
	testutil.RequireRoot(t)
	promBin, err := exec.LookPath("prometheus")
	if err != nil {
		testutil.SkipOrFail(t, "prometheus not found (make deps installs it): %v", err)
		return
	}
	labCfg := icap.LabDefaults()
	labCfg.Listen, labCfg.PlainListen = "127.0.0.1:0", ""
	labCfg.StallEvery, labCfg.StallFor = 1, 50*time.Second
	lab, err := icap.StartLab(labCfg)
	if err != nil {
		t.Fatal(err)
	}
	labAddr := lab.TLSAddr().(*net.TCPAddr)
	target := fmt.Sprintf("icaps://%s/%s", labAddr, labCfg.Service)

	base := startDaemon(t, loopbackAgent(labAddr.Port))
	agentAddr := strings.TrimPrefix(base, "http://")

	prom := startPrometheus(t, promBin, agentAddr)

	// The lab holds the answer of every request for 50 s: ACKed, silent.
	client, err := icap.NewClient(icap.Config{Target: target, Insecure: true, Timeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		client.Close()
		lab.Shutdown(context.Background())
	}()
	go client.Options(context.Background())

	seen := map[string]bool{}
	deadline := time.Now().Add(90 * time.Second)
	for time.Now().Before(deadline) && !seen["firing"] {
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
			if a.Labels["alertname"] == "ICAPRequestStalled" {
				seen[a.State] = true
			}
		}
	}
	if !seen["pending"] || !seen["firing"] {
		var stalled struct {
			Data struct{ Result []any }
		}
		promGet(t, prom, "/api/v1/query", url.Values{"query": {"icapwatch_stalled_exchanges"}}, &stalled)
		t.Fatalf("ICAPRequestStalled states seen: %v; want pending, then firing.\nPrometheus has icapwatch_stalled_exchanges: %v\nthe agent's events: %s",
			seen, stalled.Data.Result, get(t, base+"/api/v1/events"))
	}
	var q struct {
		Data struct{ Result []any }
	}
	promGet(t, prom, "/api/v1/query", url.Values{"query": {`icapwatch_stalls_total{state="acked_silent"}`}}, &q)
	if len(q.Data.Result) == 0 {
		t.Error("Prometheus has no icapwatch_stalls_total series")
	}
}

func startPrometheus(t *testing.T, bin, agentAddr string) string {
	t.Helper()
	dir := t.TempDir()
	rules, err := filepath.Abs(filepath.Join("..", "deploy", "prometheus", "icapwatch-rules.yml"))
	if err != nil {
		t.Fatal(err)
	}
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
