package exporter

import (
	"context"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/icapwatch/icapwatch/internal/logging"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/crypto/bcrypt"
)

type fakeBackend struct{ ready bool }

func (f fakeBackend) Status() Status {
	return Status{Ready: f.ready, Source: "bpf", Hooks: []Hook{{Name: "tc_egress", Attached: true, Mode: "tcx"}},
		Recent: []string{"12:00:00.000 a <stall>"}, Open: 30, Stalled: 1,
		Oldest: []Exchange{{Server: "192.0.2.1:11344", Client: "scanapp (pid 4121)", ClientAddr: "192.0.2.9:40001",
			Phase: "request", State: "acked_silent", Age: 12500 * time.Millisecond}}}
}
func (fakeBackend) Exchanges() any { return []string{} }
func (fakeBackend) Events() any    { return []map[string]string{{"kind": "stall"}} }

func serve(t *testing.T, cfg WebConfig, b Backend) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	log := logging.Slog(hclog.NewNullLogger())
	reg := prometheus.NewRegistry()
	NewMetrics(reg)
	addr, done, err := Serve(ctx, cfg, Handler(reg, b, log), log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	return "http://" + addr.String()
}

func status(t *testing.T, url, user, pass string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	if user != "" {
		req.SetBasicAuth(user, pass)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b strings.Builder
	buf := make([]byte, 1<<16)
	for {
		n, err := resp.Body.Read(buf)
		b.Write(buf[:n])
		if err != nil {
			break
		}
	}
	return resp.StatusCode, b.String()
}

func TestEndpoints(t *testing.T) {
	for _, ready := range []bool{false, true} {
		base := serve(t, WebConfig{ListenAddresses: []string{"127.0.0.1:0"}}, fakeBackend{ready: ready})
		want := map[bool]int{false: 503, true: 200}[ready]
		if code, _ := status(t, base+"/readyz", "", ""); code != want {
			t.Errorf("readyz with ready=%v: %d, want %d", ready, code, want)
		}
		for path, body := range map[string]string{
			"/healthz": "ok", "/metrics": "icapwatch_build_info", "/api/v1/events": `"events": [`,
			"/api/v1/exchanges": `"exchanges": []`, "/": "tc_egress",
		} {
			if code, got := status(t, base+path, "", ""); code != 200 || !strings.Contains(got, body) {
				t.Errorf("GET %s: %d %q, want 200 with %q", path, code, got, body)
			}
		}
		_, page := status(t, base+"/", "", "")
		if strings.Contains(page, "<stall>") {
			t.Error("landing page does not escape event text")
		}
		for _, want := range []string{"the 1 oldest", "12.5s", "acked_silent", "scanapp (pid 4121)", "192.0.2.9:40001"} {
			if !strings.Contains(page, want) {
				t.Errorf("landing page lacks the open exchange's %q:\n%s", want, page)
			}
		}
		if code, _ := status(t, base+"/nothing", "", ""); code != 404 {
			t.Errorf("unknown path: %d", code)
		}
	}
}

// --web.config.file brings exporter-toolkit's basic auth (and TLS).
func TestWebConfigBasicAuth(t *testing.T) {
	hash, err := bcrypt.GenerateFromPassword([]byte("s3cret"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "web.yml")
	if err := os.WriteFile(file, []byte("basic_auth_users:\n  prometheus: "+string(hash)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	base := serve(t, WebConfig{ListenAddresses: []string{"127.0.0.1:0"}, ConfigFile: file}, fakeBackend{ready: true})
	if code, _ := status(t, base+"/metrics", "", ""); code != http.StatusUnauthorized {
		t.Errorf("without credentials: %d", code)
	}
	if code, _ := status(t, base+"/metrics", "prometheus", "s3cret"); code != 200 {
		t.Errorf("with credentials: %d", code)
	}
	bad := filepath.Join(t.TempDir(), "bad.yml")
	os.WriteFile(bad, []byte("tls_server_config: [\n"), 0o600)
	if _, _, err := Serve(context.Background(), WebConfig{ListenAddresses: []string{"127.0.0.1:0"}, ConfigFile: bad},
		http.NotFoundHandler(), logging.Slog(hclog.NewNullLogger())); err == nil || !strings.Contains(err.Error(), "--web.config.file") {
		t.Errorf("a bad config file: %v", err)
	}
}

// Bad web flags are found before anything starts, naming the flag.
func TestWebConfigValidate(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yml")
	os.WriteFile(bad, []byte("tls_server_config: [\n"), 0o600)
	good := filepath.Join(dir, "good.yml")
	os.WriteFile(good, []byte("http_server_config:\n  http2: false\n"), 0o600)
	for _, tc := range []struct {
		cfg  WebConfig
		flag string // "" when valid
	}{
		{WebConfig{ListenAddresses: []string{":9344"}}, ""},
		{WebConfig{ListenAddresses: []string{"127.0.0.1:0"}}, ""},
		{WebConfig{ListenAddresses: []string{"[::1]:9344"}}, ""},
		{WebConfig{ListenAddresses: []string{"localhost:9344"}}, ""},
		{WebConfig{ListenAddresses: []string{":9344"}, ConfigFile: good}, ""},
		{WebConfig{ListenAddresses: []string{"999.1.1.1:99999"}}, "--web.listen-address"},
		{WebConfig{ListenAddresses: []string{"999.1.1.1:9344"}}, "--web.listen-address"},
		{WebConfig{ListenAddresses: []string{"127.0.0.1"}}, "--web.listen-address"},
		{WebConfig{ListenAddresses: []string{"127.0.0.1:http-alt-nope"}}, "--web.listen-address"},
		{WebConfig{ListenAddresses: []string{":9344"}, ConfigFile: filepath.Join(dir, "missing.yml")}, "--web.config.file"},
		{WebConfig{ListenAddresses: []string{":9344"}, ConfigFile: bad}, "--web.config.file"},
	} {
		err := tc.cfg.Validate()
		switch {
		case tc.flag == "" && err != nil:
			t.Errorf("%+v: %v", tc.cfg, err)
		case tc.flag != "" && (err == nil || !strings.Contains(err.Error(), tc.flag)):
			t.Errorf("%+v: %v, want an error naming %s", tc.cfg, err, tc.flag)
		}
	}
}
