package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/alecthomas/kingpin/v2"
	"github.com/hashicorp/go-hclog"
	"github.com/icapwatch/icapwatch/agent"
	"github.com/icapwatch/icapwatch/agent/correlate"
	"github.com/icapwatch/icapwatch/bpf"
	"github.com/icapwatch/icapwatch/icap"
	"github.com/icapwatch/icapwatch/internal/humanize"
	"github.com/icapwatch/icapwatch/internal/workload"
)

// demoCmd is `icapwatch demo`: lab server, workload and agent on loopback.
type demoCmd struct {
	cmd         *kingpin.CmdClause
	duration    time.Duration
	listen      string
	workers     int
	idleTimeout time.Duration
	conns       int
	seed        uint64
	cfg         agent.DaemonConfig
}

func registerDemo(app *kingpin.Application) *demoCmd {
	d := &demoCmd{cmd: app.Command("demo", "Show the seed's hang being caught: the lab server (2 workers, 20 s idle timeout), an application whose pool is larger, and the agent, on loopback."),
		cfg: agent.DefaultDaemonConfig()}
	c := d.cmd
	flag(c, "demo", "duration", "How long to run.").Default("90s").DurationVar(&d.duration)
	flag(c, "demo", "listen", "The lab server's TLS address.").Default("127.0.0.1:11344").StringVar(&d.listen)
	intVar(flag(c, "demo", "workers", "The lab server's workers.").Default("2"), &d.workers)
	flag(c, "demo", "idle-timeout", "The lab server's idle timeout.").Default("20s").DurationVar(&d.idleTimeout)
	intVar(flag(c, "demo", "conns", "The application's pool size; one more than the workers reproduces the seed.").Default("3"), &d.conns)
	flag(c, "demo", "seed", "Seed of the application's random pauses and requests.").Default("1").Uint64Var(&d.seed)
	flag(c, "demo", "source", "auto, bpf or sockdiag.").Default(agent.SourceAuto).EnumVar(&d.cfg.Source, agent.SourceAuto, agent.SourceBPF, agent.SourceSockDiag)
	flag(c, "demo", "kernel.events", "The kernel's event buffer: auto, ringbuf or perf.").Default(bpf.ModeAuto).
		EnumVar(&d.cfg.KernelEvents, bpf.ModeAuto, bpf.OutputRing, bpf.OutputPerf)
	flag(c, "demo", "stall-threshold", "An exchange open this long is a stall.").Default("10s").DurationVar(&d.cfg.Correlator.StallThreshold)
	webFlags(c, "demo", &d.cfg.Web, "127.0.0.1:9344")
	return d
}

func (d *demoCmd) run(ctx context.Context, log hclog.Logger, stdout io.Writer) error {
	if d.duration <= 0 || d.workers < 1 || d.conns < 1 || d.idleTimeout <= 0 {
		return usagef("--duration, --workers, --conns and --idle-timeout must be positive")
	}
	// The rest of the agent's configuration is checked once the lab is up;
	// a bad web flag must not wait for that, nor fail as a busy lab port.
	if err := d.cfg.Web.Validate(); err != nil {
		return usageError{err.Error()}
	}
	ctx, cancel := context.WithTimeout(ctx, d.duration)
	defer cancel()
	// The timeline is the demo's output; logs only say what goes wrong,
	// unless --log.level asks for more.
	quiet := log.Named("demo")
	if log.GetLevel() >= hclog.Info {
		quiet = hclog.New(&hclog.LoggerOptions{Name: "demo", Level: hclog.Warn, Output: os.Stderr})
	}

	labCfg := icap.LabDefaults()
	labCfg.Listen, labCfg.PlainListen = d.listen, ""
	labCfg.Workers, labCfg.IdleTimeout = d.workers, d.idleTimeout
	labCfg.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	// Handshakes cut when the demo ends are expected: the lab says only errors.
	labCfg.Logger = hclog.New(&hclog.LoggerOptions{Name: "lab", Level: hclog.Error, Output: os.Stderr})
	lab, err := icap.StartLab(labCfg)
	if err != nil {
		return fmt.Errorf("lab server: %w", err)
	}
	defer lab.Shutdown(context.Background())
	labAddr := lab.TLSAddr().(*net.TCPAddr)
	target := fmt.Sprintf("icaps://%s/%s", labAddr, labCfg.Service)

	start := time.Now()
	var out sync.Mutex
	say := func(format string, a ...any) {
		out.Lock()
		defer out.Unlock()
		fmt.Fprintf(stdout, "%+7.1fs  %s\n", time.Since(start).Seconds(), fmt.Sprintf(format, a...))
	}
	cfg := d.cfg
	cfg.Ports = []uint16{uint16(labAddr.Port)}
	cfg.Interfaces = []string{"lo"}
	cfg.Logger = quiet.Named("agent")
	cfg.Canary = agent.CanaryConfig{Targets: []string{target}, Interval: 30 * time.Second, Insecure: true,
		PoolSize: 1, MaxIdle: 2 * time.Second}
	// OnEvent runs under the agent's lock: the source is read here, not
	// from the daemon.
	var source atomic.Value
	source.Store(cfg.Source)
	// The summary at the end counts what the timeline said.
	var tally correlate.Tally
	tl := &timeline{}
	cfg.OnEvent = func(e correlate.Event) {
		tally.Event(e)
		tl.source = source.Load().(string)
		say("%s", tl.line(e))
	}
	cfg.OnGap = tally.Gap
	if err := cfg.Validate(); err != nil {
		return usageError{err.Error()}
	}
	daemon, err := agent.NewDaemon(cfg)
	if err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() { done <- daemon.Run(ctx) }()
	var base string
	select {
	case a := <-daemon.Addr():
		base = "http://" + a.String()
	case err := <-done:
		return err
	}

	fmt.Fprintf(stdout, "icapwatch demo, %v\n", d.duration)
	fmt.Fprintf(stdout, "  lab server   %s  (%d workers, idle timeout %v; a connection holds its worker while open)\n",
		target, d.workers, d.idleTimeout)
	fmt.Fprintf(stdout, "  application  scanapp, a pool of %d connections: OPTIONS and RESPMOD (some with EICAR) in bursts\n", d.conns)
	fmt.Fprintf(stdout, "  agent        %s/  metrics %s/metrics  events %s/api/v1/events  exchanges %s/api/v1/exchanges\n\n",
		base, base, base, base)

	// Wait for the source to be chosen before saying which.
	for daemon.Source() == "" && ctx.Err() == nil {
		time.Sleep(20 * time.Millisecond)
	}
	src := daemon.Source()
	source.Store(src)
	switch {
	case src == agent.SourceBPF:
		say("agent attached its eBPF hooks to lo: watching port %d, events through the %s buffer",
			labAddr.Port, map[string]string{bpf.OutputPerf: "perf", bpf.OutputRing: "ring"}[daemon.KernelEvents()])
	case cfg.Source == agent.SourceSockDiag:
		say("the agent runs on sock_diag as asked, with coarser timing: %s", sockDiagLimits)
	case src != "":
		say("eBPF is not available here (root or CAP_BPF is needed): the agent runs on sock_diag, with coarser timing: %s",
			sockDiagLimits)
	}

	wdone := make(chan error, 1)
	go func() { wdone <- d.runWorkload(ctx, target, quiet) }()
	say("the application starts: %d connections fill the %d workers, then every burst needs one more", d.conns-1, d.workers)

	err = <-done
	if werr := <-wdone; werr != nil && err == nil {
		err = werr
	}
	fmt.Fprintln(stdout)
	writeSummary(stdout, tally.Servers(), src) // the daemon has stopped: the tally is still
	return err
}

// sockDiagLimits says what the sock_diag source cannot show.
const sockDiagLimits = "it polls the sockets every second, so it sees stalls but not when the server ACKed, " +
	"no TLS alerts, and rarely the server closes that release a stall (those need eBPF)"

// timeline writes the demo's lines for events: the event's summary, with
// what a newcomer needs to read it.
type timeline struct {
	source    string // the agent's source
	explained bool   // the TLS 1.3 close_notify rule was explained once
}

// line is the timeline's line for an event. On sock_diag the ACK is
// known only from a poll, not when it came: the line says so rather than
// give a time. The canary's own connections are marked as the canary's,
// and a probable TLS 1.3 close_notify reads as the ordinary close it is.
func (tl *timeline) line(e correlate.Event) string {
	if st, ok := e.Detail.(*correlate.Stall); ok && tl.source == agent.SourceSockDiag {
		untimed := *st
		untimed.AckUntimed = true
		e.Detail = &untimed
	}
	line := e.Summary()
	if a, ok := e.Detail.(*correlate.TLSAlert); ok && a.TLSVersion == "1.3?" {
		line += ": probably close_notify, an ordinary close"
		if !tl.explained {
			tl.explained = true
			line += " (TLS 1.3 encrypts the alert's type; a lone 19-byte record before the close tells it, " +
				"hence the question mark)"
		}
	}
	if e.Client == correlate.ClientCanary {
		line = "canary: " + line
	}
	return line
}

// runWorkload runs the application as its own process named scanapp, as
// a real one would be, so the agent sees its own PID and name; in this
// process when that cannot be arranged.
func (d *demoCmd) runWorkload(ctx context.Context, target string, log hclog.Logger) error {
	args := []string{"workload", "--target", target, "--conns", strconv.Itoa(d.conns),
		"--seed", strconv.FormatUint(d.seed, 10)}
	runtime.LockOSThread() // see startScanapp
	defer runtime.UnlockOSThread()
	if cmd := startScanapp(ctx, args); cmd != nil {
		if err := cmd.Wait(); err != nil && ctx.Err() == nil {
			return fmt.Errorf("application: %w", err)
		}
		return nil
	}
	_, err := workload.Run(ctx, workload.Config{Target: target, Insecure: true, Conns: d.conns,
		MinPause: 3 * time.Second, MaxPause: 8 * time.Second, Timeout: time.Minute, Seed: d.seed, Logger: log})
	return err
}

// startScanapp starts this executable as a process named scanapp, through
// a symbolic link in a temporary directory. The directory goes as soon as
// the process runs (the kernel has resolved the link by then), so a demo
// that is killed leaves nothing in /tmp; and the process is told to stop
// when the demo dies. It returns nil when that cannot be arranged. The
// caller keeps its OS thread locked until Wait returns: the parent-death
// signal follows the thread that started the process, and Go ends a
// thread when a goroutine that locked it exits without unlocking.
func startScanapp(ctx context.Context, args []string) *exec.Cmd {
	self, err := os.Executable()
	if err != nil {
		return nil
	}
	dir, err := os.MkdirTemp("", "icapwatch-demo-")
	if err != nil {
		return nil
	}
	defer os.RemoveAll(dir)
	app := filepath.Join(dir, "scanapp")
	if os.Symlink(self, app) != nil {
		return nil
	}
	cmd := exec.CommandContext(ctx, app, args...)
	cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
	cmd.WaitDelay = 5 * time.Second
	cmd.Stderr = os.Stderr
	stopWithParent(cmd)
	if cmd.Start() != nil {
		return nil
	}
	return cmd
}

// writeSummary prints a table per server of a run on source.
func writeSummary(w io.Writer, servers []correlate.ServerTally, source string) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	// sock_diag cannot see some of the columns, or only some of the time:
	// they are marked, and the note under the table says why.
	sockDiag := source == agent.SourceSockDiag
	partial := func(v int) string {
		if sockDiag {
			return strconv.Itoa(v) + "*"
		}
		return strconv.Itoa(v)
	}
	fmt.Fprintln(tw, "SERVER\tEXCHANGES\tMEAN GAP\tSTALLS\tRELEASES\tRACES\tTLS ALERTS\tSERVER CLOSES")
	for _, s := range servers {
		mean := "-"
		if s.Answered > 0 {
			mean = humanize.Precise(s.MeanGap())
		}
		alerts := strconv.Itoa(s.TLSAlerts)
		if sockDiag {
			alerts = "n/a*"
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%d\t%s\t%d\t%s\t%s\n", s.Server, s.Answered, mean, s.Stalls, partial(s.Releases),
			s.Races, alerts, partial(s.ServerCloses))
	}
	tw.Flush()
	if len(servers) == 0 {
		fmt.Fprintln(w, "(no exchanges seen)")
	}
	if sockDiag && len(servers) > 0 {
		fmt.Fprint(w, "\n* needs eBPF: sock_diag reads the sockets once a second. It sees no TLS alert, only the\n"+
			"server closes that last until a read, and so rarely a release; gaps are timed to the second.\n"+
			"Run the demo as root (or with CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN) to count them.\n")
	}
	fmt.Fprintf(w, "\nsource: %s. A release is a stalled request answered right after the server closed another\n"+
		"connection: its workers were held by idle persistent connections.\n", source)
	fmt.Fprint(w, "What to do: hold fewer idle connections than the server has workers (a client pool at or below\n"+
		"its Max-Connections, and a client idle timeout below the server's), or give the server more workers.\n"+
		"See docs/runbook.md, ICAPServerWorkersHeldByIdleConnections.\n")
}

// workloadCmd is the demo's application, run as its own process.
type workloadCmd struct {
	cmd *kingpin.CmdClause
	cfg workload.Config
}

func registerWorkload(app *kingpin.Application) *workloadCmd {
	w := &workloadCmd{cmd: app.Command("workload", "An application-like ICAP client for the demo.").Hidden()}
	c := w.cmd
	flag(c, "workload", "target", "ICAP service URL.").Required().StringVar(&w.cfg.Target)
	intVar(flag(c, "workload", "conns", "Pool size.").Default("3"), &w.cfg.Conns)
	flag(c, "workload", "seed", "Random seed.").Default("1").Uint64Var(&w.cfg.Seed)
	flag(c, "workload", "min-pause", "Shortest pause between bursts.").Default("3s").DurationVar(&w.cfg.MinPause)
	flag(c, "workload", "max-pause", "Longest pause between bursts.").Default("8s").DurationVar(&w.cfg.MaxPause)
	return w
}

func (w *workloadCmd) run(ctx context.Context, log hclog.Logger) error {
	w.cfg.Insecure, w.cfg.Timeout, w.cfg.Logger = true, time.Minute, log
	_, err := workload.Run(ctx, w.cfg)
	return err
}
