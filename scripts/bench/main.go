// Command bench measures what the agent costs on this machine, as ratios
// taken in one run: the observer effect on ICAP-over-TLS requests (no
// agent, the agent, tcpdump, alternating), the agent's CPU and memory at
// a fixed request rate, and how long after a stall crosses the threshold
// the metric shows it. make bench runs it and appends the Go benchmarks.
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/icapwatch/icapwatch/icap"
)

func main() {
	bin := flag.String("bin", "bin/icapwatch", "the icapwatch binary")
	out := flag.String("out", "bench-results.md", "markdown results file")
	requests := flag.Int("requests", 40000, "requests per observer-effect round")
	concurrency := flag.Int("concurrency", 8, "concurrent requests")
	rounds := flag.Int("rounds", 5, "rounds of each mode, alternating")
	parts := flag.String("parts", "observer,footprint,idle,detection", "which measures to take, comma-separated")
	holdN := flag.Int("hold", 0, "(internal) hold this many idle connections until stdin closes")
	holdFrom := flag.String("hold-from", "", "(internal) their source address")
	holdTo := flag.String("hold-to", "", "(internal) their server")
	flag.Parse()
	if *holdN > 0 {
		hold(*holdN, *holdFrom, *holdTo)
		return
	}
	want := map[string]bool{}
	for _, p := range strings.Split(*parts, ",") {
		switch p {
		case "observer", "footprint", "idle", "detection":
			want[p] = true
		default:
			fmt.Fprintf(os.Stderr, "bench: -parts: unknown measure %q (observer, footprint, idle, detection)\n", p)
			os.Exit(2)
		}
	}

	lab := startLab(0, 0)
	defer lab.Shutdown(context.Background())
	target := fmt.Sprintf("icaps://%s/SYMCScanResp-AV", lab.TLSAddr())
	port := lab.TLSAddr().(*net.TCPAddr).Port

	var md strings.Builder
	fmt.Fprintf(&md, "## Results (%s, %s)\n\n", time.Now().UTC().Format("2006-01-02 15:04 UTC"), kernel())
	if want["observer"] {
		observerEffect(&md, *bin, target, port, *requests, *concurrency, *rounds)
	}
	if want["footprint"] {
		fp := footprint(*bin, port, target, 1000, 10*time.Second)
		fmt.Fprintf(&md, "\n### 4. Agent footprint at %.0f requests/s for 10 s\n\n", fp.rate)
		fmt.Fprintf(&md, "| CPU (share of one core) | RSS |\n|---|---|\n| %.2f%% | %.1f MiB |\n", 100*fp.cpu, fp.rssMiB)
		fmt.Fprintln(&md, "\nTarget: <= 2% of one core at 1,000 requests/s. Flow-table memory: see the correlator benchmarks below.")
	}
	if want["idle"] {
		fmt.Fprintln(&md, "\n| idle connections | CPU while idle (share of one core) | RSS | note |\n|---|---|---|---|")
		for _, n := range []int{10000, 100000} {
			u, note := idleFlows(*bin, n)
			fmt.Fprintf(&md, "| %d | %.2f%% | %.1f MiB | %s |\n", n, 100*u.cpu, u.rssMiB, note)
		}
		fmt.Fprintln(&md, "\nTargets: RSS <= 64 MiB at 10,000 flows; memory bounded at 100,000 (the kernel's LRU table holds 65,536 by default, the correlator --max-flows).")
	}
	if want["detection"] {
		lat := detection(*bin, 3)
		fmt.Fprintf(&md, "\n### 5. Detection latency (stall threshold 2 s, %d stalls)\n\n", len(lat))
		fmt.Fprintln(&md, "| stall | metric visible after the threshold |\n|---|---|")
		for i, d := range lat {
			fmt.Fprintf(&md, "| %d | %v |\n", i+1, d.Round(time.Millisecond))
		}
		fmt.Fprintln(&md, "\nTarget: <= 1 s after the threshold (the agent sweeps when an exchange is due).")
	}

	if err := os.WriteFile(*out, []byte(md.String()), 0o644); err != nil {
		log.Fatal(err)
	}
	fmt.Print(md.String())
}

// settle is how long an observer runs before a round is timed.
const settle = time.Second

// observerEffect runs the load with no observer, the agent and tcpdump in
// rotating order, round after round, and tabulates the medians.
func observerEffect(md *strings.Builder, bin, target string, port, requests, concurrency, rounds int) {
	modes := []string{"none", "agent", "tcpdump"}
	results := map[string][]load{}
	source := ""
	for r := 0; r < rounds; r++ {
		for i := range modes {
			mode := modes[(i+r)%len(modes)] // rotate the order every round
			stop, src, pid := startObserver(bin, mode, port)
			if src != "" {
				source = src
			}
			time.Sleep(settle) // the steady state, not the observer's start
			cpu0 := cpuTime(pid)
			l := runLoad(target, concurrency, requests, 0)
			l.observerCPU = (cpuTime(pid) - cpu0) / time.Duration(requests)
			stop()
			results[mode] = append(results[mode], l)
			log.Printf("observer %-8s round %d: %.0f req/s p50 %v p99 %v, observer CPU %v a request", mode, r+1, l.rate, l.p50, l.p99, l.observerCPU)
		}
	}
	base := median(results["none"])
	fmt.Fprintf(md, "### 1. Observer effect (%d requests x %d rounds, concurrency %d, loopback TLS; agent source: %s)\n\n",
		requests, rounds, concurrency, source)
	fmt.Fprintln(md, "| mode | throughput (req/s) | vs none | p50 | p99 | p99 vs none | observer CPU a request |\n|---|---|---|---|---|---|---|")
	for _, mode := range modes {
		m := median(results[mode])
		fmt.Fprintf(md, "| %s | %.0f | %.3f | %v | %v | %+.1f%% | %v |\n", mode, m.rate, m.rate/base.rate,
			m.p50.Round(time.Microsecond), m.p99.Round(time.Microsecond), 100*(float64(m.p99)/float64(base.p99)-1),
			m.observerCPU.Round(10*time.Nanosecond))
	}
	fmt.Fprintln(md, "\nObserver CPU: the observer process's user and system time over the round, a request; the kernel's work for the classifier is in the load's own time.")
	fmt.Fprintln(md, "\nTargets: throughput with the agent >= 0.98 of without, p99 up by <= 3%, better than tcpdump.")
}

func kernel() string {
	var u syscall.Utsname
	syscall.Uname(&u)
	var b []byte
	for _, c := range u.Release {
		if c == 0 {
			break
		}
		b = append(b, byte(c))
	}
	return "kernel " + string(b)
}

func startLab(stallEvery int, stallFor time.Duration) *icap.Lab {
	cfg := icap.LabDefaults()
	cfg.Listen, cfg.PlainListen = "127.0.0.1:0", ""
	cfg.Workers, cfg.MaxConnections = 64, 64
	cfg.StallEvery, cfg.StallFor = stallEvery, stallFor
	if stallFor == 0 {
		cfg.StallFor = time.Second
	}
	lab, err := icap.StartLab(cfg)
	if err != nil {
		log.Fatal(err)
	}
	return lab
}

// startAgent runs the agent as its own process on lo; it returns its
// process, web address and source once ready.
func startAgent(bin string, port int, extra ...string) (*exec.Cmd, string, string) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	web := ln.Addr().String()
	ln.Close()
	args := append([]string{"agent", "--interfaces", "lo", "--ports", strconv.Itoa(port),
		"--web.listen-address", web, "--log.level", "warn"}, extra...)
	cmd := exec.Command(bin, args...)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		log.Fatal(err)
	}
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		resp, err := http.Get("http://" + web + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return cmd, web, metricLabel(scrape(web), "icapwatch_source{source=\"")
			}
		}
	}
	cmd.Process.Kill()
	log.Fatal("agent not ready")
	return nil, "", ""
}

func stopProcess(cmd *exec.Cmd) {
	cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		<-done
	}
}

// startObserver starts the observer of a mode and says which process it
// is (0: none).
func startObserver(bin, mode string, port int) (stop func(), source string, pid int) {
	switch mode {
	case "agent":
		cmd, _, src := startAgent(bin, port)
		return func() { stopProcess(cmd) }, src, cmd.Process.Pid
	case "tcpdump":
		dir, _ := os.MkdirTemp("", "icapwatch-bench-")
		cmd := exec.Command("tcpdump", "-n", "-i", "lo", "-w", filepath.Join(dir, "c.pcap"), "tcp", "port", strconv.Itoa(port))
		stderr, _ := cmd.StderrPipe()
		if err := cmd.Start(); err != nil {
			log.Fatalf("tcpdump: %v", err)
		}
		sc := bufio.NewScanner(stderr)
		for sc.Scan() && !strings.Contains(sc.Text(), "listening on") {
		}
		go io.Copy(io.Discard, stderr)
		return func() { cmd.Process.Signal(syscall.SIGINT); cmd.Wait(); os.RemoveAll(dir) }, "", cmd.Process.Pid
	}
	return func() {}, "", 0
}

type load struct {
	rate        float64
	p50, p99    time.Duration
	observerCPU time.Duration // the observer's CPU time a request
}

// runLoad sends count OPTIONS over concurrency pooled connections, paced
// at perSecond when it is not 0.
func runLoad(target string, concurrency, count int, perSecond int) load {
	c, err := icap.NewClient(icap.Config{Target: target, Insecure: true, MaxConns: concurrency, WaitTimeout: time.Minute})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	var mu sync.Mutex
	var lat []time.Duration
	jobs := make(chan struct{})
	var wg sync.WaitGroup
	for i := 0; i < concurrency; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range jobs {
				start := time.Now()
				if _, _, _, err := c.Options(context.Background()); err != nil {
					log.Printf("request: %v", err)
					continue
				}
				mu.Lock()
				lat = append(lat, time.Since(start))
				mu.Unlock()
			}
		}()
	}
	start := time.Now()
	for i := 0; i < count; i++ {
		if perSecond > 0 {
			time.Sleep(time.Until(start.Add(time.Duration(i) * time.Second / time.Duration(perSecond))))
		}
		jobs <- struct{}{}
	}
	close(jobs)
	wg.Wait()
	took := time.Since(start)
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	if len(lat) == 0 {
		return load{}
	}
	return load{rate: float64(len(lat)) / took.Seconds(), p50: lat[len(lat)/2], p99: lat[len(lat)*99/100]}
}

func median(ls []load) load {
	pick := func(f func(load) float64) float64 {
		v := make([]float64, len(ls))
		for i, l := range ls {
			v[i] = f(l)
		}
		sort.Float64s(v)
		return v[len(v)/2]
	}
	return load{rate: pick(func(l load) float64 { return l.rate }),
		p50:         time.Duration(pick(func(l load) float64 { return float64(l.p50) })),
		p99:         time.Duration(pick(func(l load) float64 { return float64(l.p99) })),
		observerCPU: time.Duration(pick(func(l load) float64 { return float64(l.observerCPU) }))}
}

type usage struct {
	rate, cpu, rssMiB float64
}

// footprint runs the agent while requests come at a fixed rate, and reads
// its CPU time and resident memory from /proc.
func footprint(bin string, port int, target string, perSecond int, d time.Duration) usage {
	cmd, _, _ := startAgent(bin, port)
	defer stopProcess(cmd)
	pid := cmd.Process.Pid
	cpu0, start := cpuTime(pid), time.Now()
	l := runLoad(target, 8, int(d.Seconds())*perSecond, perSecond)
	cpu1, wall := cpuTime(pid), time.Since(start)
	return usage{rate: l.rate, cpu: (cpu1 - cpu0).Seconds() / wall.Seconds(), rssMiB: rss(pid)}
}

// idleFlows opens n idle TCP connections to a watched port on loopback
// and measures the agent while they sit: its CPU over 10 s and its RSS.
// A process can hold fewer connections than there are open files allowed,
// so the server ends are spread over lab processes (one a loopback
// address) and the client ends over holder processes (this program run
// again with -hold).
func idleFlows(bin string, n int) (usage, string) {
	var lim syscall.Rlimit
	syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim)
	lim.Cur = lim.Max // the children inherit it
	syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
	// Connections a process; also below the ephemeral port range, as each
	// holder has a source address and a server of its own.
	per := min(int(lim.Cur)-1000, 20000)
	if per < 1000 {
		return usage{}, fmt.Sprintf("not measured: the open file limit is %d", lim.Cur)
	}
	ln, err := net.Listen("tcp", "127.0.2.1:0")
	if err != nil {
		log.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	self, err := os.Executable()
	if err != nil {
		log.Fatal(err)
	}
	cmd, web, _ := startAgent(bin, port)
	defer stopProcess(cmd)
	for k := 0; k*per < n; k++ {
		server := fmt.Sprintf("127.0.2.%d:%d", k+1, port)
		lab := exec.Command(bin, "lab", "--listen", fmt.Sprintf("127.0.2.%d:0", k+1), "--plain-listen", server,
			"--workers", "1", "--log.level", "error")
		if err := lab.Start(); err != nil {
			log.Fatal(err)
		}
		defer stopProcess(lab)
		if err := waitListening(server); err != nil {
			return usage{}, "not measured: " + err.Error()
		}
		holder := exec.Command(self, "-hold", strconv.Itoa(min(per, n-k*per)),
			"-hold-from", fmt.Sprintf("127.1.%d.%d", idleRuns, k+1), "-hold-to", server)
		holder.Stderr = os.Stderr
		stdin, _ := holder.StdinPipe()
		stdout, _ := holder.StdoutPipe()
		if err := holder.Start(); err != nil {
			log.Fatal(err)
		}
		defer func() { stdin.Close(); holder.Wait() }()
		line, _ := bufio.NewReader(stdout).ReadString('\n')
		if line != "ready\n" {
			return usage{}, "not measured: " + strings.TrimSpace(line)
		}
	}
	idleRuns++
	time.Sleep(3 * time.Second) // the agent takes them in
	pid := cmd.Process.Pid
	cpu0, start := cpuTime(pid), time.Now()
	time.Sleep(10 * time.Second)
	u := usage{cpu: (cpuTime(pid) - cpu0).Seconds() / time.Since(start).Seconds(), rssMiB: rss(pid)}
	tracked := metricLabel(scrape(web), "icapwatch_flows_tracked ")
	log.Printf("idle flows %d: agent tracks %s flows, CPU %.2f%%, RSS %.1f MiB", n, tracked, 100*u.cpu, u.rssMiB)
	return u, "flows tracked: " + tracked
}

// idleRuns numbers the source addresses of each idleFlows: the client ends
// of the last run linger in TIME_WAIT and hold their ports.
var idleRuns int

// hold is the holder process: n connections from one address to one
// server, kept until stdin closes.
func hold(n int, from, to string) {
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
	conns := make([]net.Conn, 0, n)
	for i := range n {
		c, err := d.Dial("tcp", to)
		if err != nil {
			fmt.Printf("connection %d of %d from %s: %v\n", i+1, n, from, err)
			os.Exit(1)
		}
		conns = append(conns, c)
	}
	fmt.Println("ready")
	io.Copy(io.Discard, os.Stdin)
	for _, c := range conns {
		c.Close()
	}
}

// waitListening waits up to 10 s for a server to accept.
func waitListening(addr string) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			return c.Close()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: %v", addr, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func cpuTime(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	ut, _ := strconv.Atoi(f[11])
	st, _ := strconv.Atoi(f[12])
	return time.Duration(ut+st) * time.Second / 100 // USER_HZ
}

func rss(pid int) float64 {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.Atoi(strings.Fields(v)[0])
			return float64(kb) / 1024
		}
	}
	return 0
}

// detection stalls n requests (the lab holds their answers) and times
// when the agent's metric shows each, after the 2 s threshold.
func detection(bin string, n int) []time.Duration {
	lab := startLab(1, 6*time.Second)
	defer lab.Shutdown(context.Background())
	port := lab.TLSAddr().(*net.TCPAddr).Port
	cmd, web, _ := startAgent(bin, port, "--stall-threshold", "2s")
	defer stopProcess(cmd)
	target := fmt.Sprintf("icaps://%s/SYMCScanResp-AV", lab.TLSAddr())
	var out []time.Duration
	for i := 1; i <= n; i++ {
		sent := make(chan time.Time, 1)
		c, err := icap.NewClient(icap.Config{Target: target, Insecure: true, Timeout: time.Minute,
			Observer: &icap.Observer{RequestWritten: func(_ icap.ConnInfo, ri icap.RequestInfo) {
				select {
				case sent <- ri.Start:
				default:
				}
			}}})
		if err != nil {
			log.Fatal(err)
		}
		go c.Options(context.Background())
		at := <-sent
		for {
			if v, _ := strconv.ParseFloat(metricLabel(scrape(web), "icapwatch_stalls_total{"), 64); int(v) >= i {
				out = append(out, time.Since(at.Add(2*time.Second)))
				break
			}
			if time.Since(at) > 20*time.Second {
				log.Printf("stall %d not seen", i)
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		time.Sleep(5 * time.Second) // let the held answer come
		c.Close()
	}
	return out
}

func scrape(web string) string {
	resp, err := http.Get("http://" + web + "/metrics")
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// metricLabel finds the first line starting with prefix and returns, for
// a label prefix, the label's value, else the sample's value.
func metricLabel(text, prefix string) string {
	for _, line := range strings.Split(text, "\n") {
		if !strings.HasPrefix(line, prefix) {
			continue
		}
		if strings.HasSuffix(prefix, "=\"") {
			rest := line[len(prefix):]
			return rest[:strings.IndexByte(rest, '"')]
		}
		return line[strings.LastIndexByte(line, ' ')+1:]
	}
	return ""
}
