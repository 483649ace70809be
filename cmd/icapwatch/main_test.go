package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/alecthomas/kingpin/v2"
	"github.com/icapwatch/icapwatch/icap"
	"github.com/icapwatch/icapwatch/internal/testutil"
)

// syncBuffer lets a test read output that a running command still writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func runCLI(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr syncBuffer
	code := run(context.Background(), args, &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

func TestUsageErrorsExit2NamingTheFlag(t *testing.T) {
	for _, tc := range []struct {
		args []string
		env  map[string]string
		want string
	}{
		{args: []string{"lab", "--workers=abc"}, want: "--workers"},
		{args: []string{"lab", "--workers=0"}, want: "--workers"},
		{args: []string{"lab", "--idle-timeout=5"}, want: "--idle-timeout"},
		{args: []string{"lab", "--fault=explode"}, want: "--fault"},
		{args: []string{"lab", "--cert=x.pem"}, want: "--key"},
		{args: []string{"lab"}, env: map[string]string{"ICAPWATCH_LAB_WORKERS": "many"}, want: "ICAPWATCH_LAB_WORKERS"},
		{args: []string{"probe"}, want: "url"},
		{args: []string{"probe", "http://x/y"}, want: "icaps://"},
		{args: []string{"probe", "--count=0", "icaps://x/y"}, want: "--count"},
		{args: []string{"probe", "--insecure", "--ca=x", "icaps://x/y"}, want: "--insecure"},
		{args: []string{"probe", "--ca=/nonexistent", "icaps://x/y"}, want: "--ca"},
		{args: []string{"--log.level=loud", "version"}, want: "--log.level"},
		{args: []string{"agent", "--web.listen-address=999.1.1.1:99999"}, want: "--web.listen-address"},
		{args: []string{"agent", "--web.listen-address=999.1.1.1:9344"}, want: "--web.listen-address"},
		{args: []string{"agent", "--web.config.file=/nonexistent/web.yml"}, want: "--web.config.file"},
		{args: []string{"agent", "--source=kernel"}, want: "--source"},
		{args: []string{"agent", "--tc-mode=both"}, want: "--tc-mode"},
		{args: []string{"agent", "--ports=0"}, want: "--ports"},
		{args: []string{"agent", "--stall-threshold=0s"}, want: "--stall-threshold"},
		{args: []string{"agent", "--canary.target=http://x/y"}, want: "--canary.target"},
		{args: []string{"agent", "--events.keep=0"}, want: "--events.keep"},
		{args: []string{"agent", "--events.keep=100000000"}, want: "--events.keep"},
		{args: []string{"agent", "--max-clients=0"}, want: "--max-clients"},
		{args: []string{"agent", "--max-clients=1000000"}, want: "--max-clients"},
		{args: []string{"agent", "--interfaces=nosuch0"}, want: "--interfaces"},
		{args: []string{"agent", "--source=sockdiag", "--interfaces=lo,nosuch0"}, want: "--interfaces"},
		{args: []string{"agent", "--canary.ca=."}, want: "--canary.ca"},
		{args: []string{"agent", "--canary.ca=main.go"}, want: "--canary.ca"},
		{args: []string{"agent"}, env: map[string]string{"ICAPWATCH_AGENT_MAX_FLOWS": "lots"}, want: "ICAPWATCH_AGENT_MAX_FLOWS"},
		{args: []string{"demo", "--web.listen-address=999.1.1.1:99999"}, want: "--web.listen-address"},
		{args: []string{"demo", "--duration=0s"}, want: "--duration"},
		{args: []string{"demo", "--source=kernel"}, want: "--source"},
		{args: []string{"nosuchcommand"}, want: "nosuchcommand"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			code, _, stderr := runCLI(t, tc.args...)
			if code != exitUsage {
				t.Errorf("exit %d, want %d", code, exitUsage)
			}
			if !strings.Contains(stderr, tc.want) {
				t.Errorf("stderr should name %s:\n%s", tc.want, stderr)
			}
		})
	}
}

func TestHelpAndVersion(t *testing.T) {
	code, out, _ := runCLI(t, "--help")
	if code != 0 || !strings.Contains(out, "probe") || !strings.Contains(out, "lab") {
		t.Errorf("--help: exit %d\n%s", code, out)
	}
	code, out, _ = runCLI(t, "version", "--json")
	var info map[string]string
	if code != 0 || json.Unmarshal([]byte(out), &info) != nil || info["goversion"] == "" {
		t.Errorf("version --json: exit %d\n%s", code, out)
	}
}

func startLab(t *testing.T) (*icap.Lab, string) {
	t.Helper()
	cert, certPEM, err := icap.SelfSignedCert()
	if err != nil {
		t.Fatal(err)
	}
	cfg := icap.LabDefaults()
	cfg.Listen, cfg.PlainListen, cfg.Certificate = "127.0.0.1:0", "127.0.0.1:0", &cert
	lab, err := icap.StartLab(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lab.Shutdown(context.Background()) })
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, certPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	return lab, ca
}

func TestProbe(t *testing.T) {
	lab, ca := startLab(t)
	url := "icaps://" + lab.TLSAddr().String() + "/SYMCScanResp-AV"

	code, out, stderr := runCLI(t, "probe", "--ca", ca, "--count=2", "--interval=20ms", url)
	if code != 0 {
		t.Fatalf("exit %d\n%s\n%s", code, out, stderr)
	}
	for _, want := range []string{"fresh connection", "reused connection", "TLS 1.3", "first byte", "ICAP/1.0 200 OK",
		"Max-Connections: 16", "Options-TTL: 3600", "2 probes, 2 ok, 0 failed"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}

	code, out, _ = runCLI(t, "probe", "--insecure", "--json", "--count=2", "--interval=0s",
		"icap://"+lab.PlainAddr().String()+"/SYMCScanResp-AV")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if code != 0 || len(lines) != 2 {
		t.Fatalf("json: exit %d\n%s", code, out)
	}
	var first, second probeResult
	if err := json.Unmarshal([]byte(lines[0]), &first); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(lines[1]), &second); err != nil {
		t.Fatal(err)
	}
	if first.Conn != "fresh" || second.Conn != "reused" || second.IdleAge == nil || first.Status != 200 ||
		first.Phases["first_byte"] <= 0 || first.TLSVersion != "" {
		t.Errorf("json probes: %+v / %+v", first, second)
	}
}

func TestProbeFailuresNameThePhase(t *testing.T) {
	lab, _ := startLab(t)
	addr := lab.TLSAddr().String()
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"unverified certificate", []string{"icaps://" + addr + "/SYMCScanResp-AV"}, "TLS verification failed"},
		{"unknown service", []string{"--insecure", "icaps://" + addr + "/nope"}, "server answered 404"},
		{"unreachable", []string{"--timeout=2s", "icap://127.0.0.1:1/x"}, "unreachable"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out, _ := runCLI(t, append([]string{"probe"}, tc.args...)...)
			if code != exitFail || !strings.Contains(out, tc.want) {
				t.Errorf("exit %d, want 1 with %q:\n%s", code, tc.want, out)
			}
		})
	}
}

func TestProbeTimeoutNamesThePhase(t *testing.T) {
	cfg := icap.LabDefaults()
	cfg.Listen, cfg.PlainListen, cfg.Fault = "", "127.0.0.1:0", icap.FaultDrop
	lab, err := icap.StartLab(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer lab.Shutdown(context.Background())
	code, out, _ := runCLI(t, "probe", "--timeout=200ms", "icap://"+lab.PlainAddr().String()+"/SYMCScanResp-AV")
	if code != exitFail || !strings.Contains(out, "timeout in phase first_byte") {
		t.Errorf("exit %d:\n%s", code, out)
	}
}

// TestLabCommand runs `icapwatch lab` as a user would, probes it with the
// certificate it wrote, and stops it as SIGTERM would.
func TestLabCommand(t *testing.T) {
	ca := filepath.Join(t.TempDir(), "lab.pem")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stdout, stderr syncBuffer
	done := make(chan int)
	go func() {
		done <- run(ctx, []string{"lab", "--listen=127.0.0.1:0", "--plain-listen=", "--workers=2",
			"--idle-timeout=1m", "--cert-out=" + ca}, &stdout, &stderr)
	}()
	re := regexp.MustCompile(`icaps://\S+`)
	var url string
	for deadline := time.Now().Add(5 * time.Second); url == "" && time.Now().Before(deadline); {
		url = re.FindString(stdout.String())
		time.Sleep(10 * time.Millisecond)
	}
	if url == "" {
		t.Fatalf("lab did not say where it listens:\n%s\n%s", stdout.String(), stderr.String())
	}
	code, out, _ := runCLI(t, "probe", "--ca", ca, url)
	if code != 0 || !strings.Contains(out, "Max-Connections: 2") {
		t.Errorf("probe of the lab: exit %d\n%s", code, out)
	}
	cancel()
	select {
	case code := <-done:
		if code != 0 {
			t.Errorf("lab exit %d\n%s", code, stderr.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("lab did not stop after cancellation")
	}
	if !strings.Contains(stderr.String(), "stopped") {
		t.Errorf("lab should log its stop:\n%s", stderr.String())
	}
}

func TestCheckCommand(t *testing.T) {
	testutil.RequireRoot(t)
	var out, errb bytes.Buffer
	code := run(context.Background(), []string{"check", "--json"}, &out, &errb)
	var r struct {
		CanRun bool `json:"can_run"`
		Hooks  []struct {
			Name     string `json:"name"`
			Attached bool   `json:"attached"`
		} `json:"hooks"`
	}
	if err := json.Unmarshal(out.Bytes(), &r); err != nil {
		t.Fatalf("check --json: %v\n%s\n%s", err, out.String(), errb.String())
	}
	if code != 0 || !r.CanRun {
		t.Fatalf("check: exit %d, can_run %v\n%s\n%s", code, r.CanRun, out.String(), errb.String())
	}
	attached := map[string]bool{}
	for _, h := range r.Hooks {
		attached[h.Name] = h.Attached
	}
	for _, h := range []string{"tc_ingress", "tc_egress", "tracepoint/sock/inet_sock_set_state", "tracepoint/tcp/tcp_retransmit_skb"} {
		if !attached[h] {
			t.Errorf("hook %s not attached: %s", h, out.String())
		}
	}
}

// TestDemo runs the demo briefly on both sources, and on eBPF through the
// buffer the kernel offers and through the perf buffer, side by side: the
// hang is caught, explained as a release, and summed up per server.
func TestDemo(t *testing.T) {
	testutil.RequireRoot(t)
	for _, tc := range []struct{ name, source, events string }{
		{"bpf", "bpf", "auto"},
		{"bpf-perf", "bpf", "perf"},
		{"sockdiag", "sockdiag", "auto"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var out, errb syncBuffer
			code := run(context.Background(), []string{"demo", "--duration", "22s", "--listen", "127.0.0.1:0",
				"--idle-timeout", "6s", "--stall-threshold", "2s", "--web.listen-address", "127.0.0.1:0",
				"--source", tc.source, "--kernel.events", tc.events}, &out, &errb)
			text := out.String()
			if code != 0 {
				t.Fatalf("exit %d\n%s\n%s", code, text, errb.String())
			}
			wants := []string{"no answer for", "(acked_silent)", "SERVER", "source: " + tc.source}
			if tc.source == "bpf" {
				// sock_diag polls: it sees the stall, but the closes that
				// release it come and go between two polls.
				wants = append(wants, "a sibling connection (",
					"server workers held by idle persistent connections")
			}
			if tc.events == "perf" {
				wants = append(wants, "events through the perf buffer")
			}
			for _, want := range wants {
				if !strings.Contains(text, want) {
					t.Errorf("output lacks %q:\n%s\n%s", want, text, errb.String())
				}
			}
			// A stall that ends evicted is one the agent lost track of:
			// what an answer read before its request looks like.
			if strings.Contains(text, "evicted") {
				t.Errorf("a stall ended evicted:\n%s", text)
			}
			if tc.source == "sockdiag" && !strings.Contains(text, "runs on sock_diag") {
				t.Errorf("the demo does not say it runs on sock_diag:\n%s", text)
			}
		})
	}
}

// TestMain lets the test binary stand in for icapwatch when the demo
// starts its application as a child process (`scanapp workload ...`).
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == "workload" {
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
		stop()
		os.Exit(code)
	}
	os.Exit(m.Run())
}

func TestAnalyzeCommand(t *testing.T) {
	capture := filepath.Join("..", "..", "agent", "analyze", "testdata", "captures", "seed-tls13.pcap")
	for _, tc := range []struct {
		name string
		args []string
		code int
		out  []string
	}{
		{"report", []string{"analyze", "--ports", "21344", "--stall-threshold", "1s", capture}, 0,
			[]string{"server 127.0.0.1:21344", "(acked_silent)", "server workers held by idle persistent connections", "GAP P50",
				"TLS handshake answered after 2.00", "request answered after", "127.0.0.1:21344  handshake  3 ",
				"127.0.0.1:21344  request    5 "}},
		{"json", []string{"analyze", "--ports", "21344", "--stall-threshold", "1s", "--json", capture}, 0,
			[]string{`"kind":"release"`, `"kind":"stall"`}},
		{"other ports", []string{"analyze", capture}, 0, []string{"no exchange on the watched ports"}},
		{"not a capture", []string{"analyze", "main.go"}, 1, nil},
		{"missing file", []string{"analyze", "nothing.pcap"}, 2, nil},
		{"bad server", []string{"analyze", "--server", "x", capture}, 2, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			code := run(context.Background(), tc.args, &out, &errb)
			if code != tc.code {
				t.Fatalf("exit %d, want %d\n%s%s", code, tc.code, out.String(), errb.String())
			}
			for _, want := range tc.out {
				if !strings.Contains(out.String(), want) {
					t.Errorf("output lacks %q:\n%s", want, out.String())
				}
			}
		})
	}
}

// The report is one timeline per connection, exchanges and events in
// the order they happened: the race fixture's close comes before the
// race it caused, though the correlator reports the close later.
func TestAnalyzeTimelineOrder(t *testing.T) {
	capture := filepath.Join("..", "..", "agent", "analyze", "testdata", "captures", "race-tls12.pcap")
	var out, errb bytes.Buffer
	if code := run(context.Background(), []string{"analyze", "--ports", "21344", capture}, &out, &errb); code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	var order []string
	for _, line := range strings.Split(out.String(), "\n") {
		for _, what := range []string{"TLS handshake answered", "request answered", "TLS alert", "closed by the server", "idle-close race"} {
			if strings.Contains(line, what) && !slices.Contains(order, what) {
				order = append(order, what)
			}
		}
	}
	want := []string{"TLS handshake answered", "request answered", "TLS alert", "closed by the server", "idle-close race"}
	if !slices.Equal(order, want) {
		t.Errorf("timeline order %q, want %q:\n%s", order, want, out.String())
	}
}

// A capture of a link type analyze does not read says which, and exits 1.
func TestAnalyzeUnknownLinkType(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "..", "agent", "analyze", "testdata", "captures", "seed-tls13.pcap"))
	if err != nil {
		t.Fatal(err)
	}
	b[20], b[21], b[22], b[23] = 0xdc, 0, 0, 0 // the pcap header's link type: 220, USB
	usb := filepath.Join(t.TempDir(), "usb.pcap")
	if err := os.WriteFile(usb, b, 0o644); err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	code := run(context.Background(), []string{"analyze", usb}, &out, &errb)
	if code != 1 || !strings.Contains(errb.String(), "link type 220 (USB) is not supported; icapwatch reads Ethernet (1)") {
		t.Errorf("exit %d, stderr %q", code, errb.String())
	}
}

// TestDeployEnvironmentNamesFlags: every variable the systemd environment
// file and the Kubernetes ConfigMap set (or suggest) is a flag's.
func TestDeployEnvironmentNamesFlags(t *testing.T) {
	var help bytes.Buffer
	run(context.Background(), []string{"agent", "--help"}, &help, &help)
	known := map[string]bool{}
	for _, m := range regexp.MustCompile(`\$(ICAPWATCH_[A-Z0-9_]+)`).FindAllStringSubmatch(help.String(), -1) {
		known[m[1]] = true
	}
	if len(known) < 15 {
		t.Fatalf("only %d environment variables in agent --help", len(known))
	}
	for _, file := range []string{"../../deploy/systemd/icapwatch.env", "../../deploy/kubernetes/base/configmap.yaml"} {
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		names := regexp.MustCompile(`\b(ICAPWATCH_[A-Z0-9_]+)\s*[=:]`).FindAllStringSubmatch(string(b), -1)
		if len(names) < 5 {
			t.Errorf("%s: only %d variables", file, len(names))
		}
		for _, m := range names {
			if !known[m[1]] {
				t.Errorf("%s sets %s, which is no flag's variable", file, m[1])
			}
		}
	}
}

// Numeric flags take whole numbers and say so: kingpin's own read "1.5"
// as 1 and answered "abc" with strconv.ParseFloat.
func TestNumericFlagsWantWholeNumbers(t *testing.T) {
	for _, v := range []string{"1.5", "abc", "1e3", ""} {
		code, _, stderr := runCLI(t, "agent", "--max-flows="+v)
		if code != exitUsage || !strings.Contains(stderr, "--max-flows") || !strings.Contains(stderr, "whole number") ||
			strings.Contains(stderr, "strconv") {
			t.Errorf("--max-flows=%s: exit %d, %s", v, code, stderr)
		}
	}
}

// "-" is standard input, as --help says, also without "--" before it.
func TestAnalyzeReadsStandardInput(t *testing.T) {
	f, err := os.Open(filepath.Join("..", "..", "agent", "analyze", "testdata", "captures", "seed-tls13.pcap"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	stdin := os.Stdin
	os.Stdin = f
	defer func() { os.Stdin = stdin }()
	code, stdout, stderr := runCLI(t, "analyze", "--ports", "21344", "-")
	if code != exitOK || !strings.Contains(stdout, "server 127.0.0.1:21344") || !strings.HasPrefix(stdout, "- (pcap)") {
		t.Errorf("analyze -: exit %d\n%s%s", code, stdout, stderr)
	}
}

// SIGHUP stops the agent as SIGTERM does: it takes its hooks off and
// exits 0, rather than dying with them attached.
func TestAgentStopsCleanlyOnSIGHUP(t *testing.T) {
	bin := testutil.BuildIcapwatch(t)
	var out syncBuffer
	cmd := exec.Command(bin, "agent", "--source", "sockdiag", "--web.listen-address", "127.0.0.1:0")
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	for deadline := time.Now().Add(30 * time.Second); !strings.Contains(out.String(), "serving"); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the agent does not serve:\n%s", out.String())
		}
	}
	if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil || !strings.Contains(out.String(), "stopped") {
			t.Errorf("after SIGHUP: %v\n%s", err, out.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("the agent did not stop on SIGHUP:\n%s", out.String())
	}
}

// --version, as every exporter has it.
func TestVersionFlag(t *testing.T) {
	code, stdout, stderr := runCLI(t, "--version")
	if code != exitOK || !strings.HasPrefix(stdout+stderr, "icapwatch ") {
		t.Errorf("--version: exit %d, %q %q", code, stdout, stderr)
	}
}

// freePort is a loopback TCP port that was free a moment ago.
func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// The web flags of exporter-toolkit: --web.listen-address repeats, and
// --web.systemd-socket serves on the sockets systemd passes.
func TestWebListenFlags(t *testing.T) {
	bin := testutil.BuildIcapwatch(t)
	serve := func(t *testing.T, urls []string, args ...string) {
		var out syncBuffer
		cmd := exec.Command(args[0], args[1:]...)
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() {
			cmd.Process.Signal(syscall.SIGTERM)
			cmd.Wait()
		}()
		client := &http.Client{Timeout: 2 * time.Second}
		for _, url := range urls {
			for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
				resp, err := client.Get(url + "/healthz")
				if err == nil {
					resp.Body.Close()
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("%s does not answer: %v\n%s", url, err, out.String())
				}
			}
		}
	}
	t.Run("repeated", func(t *testing.T) {
		a, b := freePort(t), freePort(t)
		serve(t, []string{"http://" + a, "http://" + b}, bin, "agent", "--source", "sockdiag",
			"--web.listen-address", a, "--web.listen-address", b)
	})
	t.Run("systemd socket", func(t *testing.T) {
		activate, err := exec.LookPath("systemd-socket-activate")
		if err != nil {
			testutil.SkipOrFail(t, "systemd-socket-activate (Debian's systemd) not found: %v", err)
		}
		a := freePort(t)
		serve(t, []string{"http://" + a}, activate, "-l", a, bin, "agent", "--source", "sockdiag", "--web.systemd-socket")
	})
}

// A --web.listen-address given replaces the default; it is not added to
// it (kingpin appends a repeatable flag's values to what the field holds).
func TestWebListenAddressReplacesTheDefault(t *testing.T) {
	app := kingpin.New("t", "")
	a := registerAgent(app)
	if _, err := app.Parse([]string{"agent", "--web.listen-address", "127.0.0.1:1"}); err != nil {
		t.Fatal(err)
	}
	if got := a.cfg.Web.ListenAddresses; !slices.Equal(got, []string{"127.0.0.1:1"}) {
		t.Errorf("listen addresses %q", got)
	}
	a = registerAgent(kingpin.New("t", ""))
	if got := a.cfg.Web.ListenAddresses; len(got) != 0 {
		t.Errorf("before parsing: %q", got)
	}
}
