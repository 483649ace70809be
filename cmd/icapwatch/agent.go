package main

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/alecthomas/kingpin/v2"
	"github.com/hashicorp/go-hclog"
	"github.com/icapwatch/icapwatch/agent"
	"github.com/icapwatch/icapwatch/bpf"
	"github.com/icapwatch/icapwatch/exporter"
)

// agentCmd is `icapwatch agent`, the daemon.
type agentCmd struct {
	cmd        *kingpin.CmdClause
	cfg        agent.DaemonConfig
	ports      string
	interfaces string
}

func registerAgent(app *kingpin.Application) *agentCmd {
	a := &agentCmd{cmd: app.Command("agent", "Run the agent: kernel probes, correlator, canary and exporter."),
		cfg: agent.DefaultDaemonConfig()}
	addAgentFlags(a.cmd, "agent", &a.cfg, &a.ports, &a.interfaces)
	return a
}

// addAgentFlags declares the agent's flags on cmd; the demo shares most.
func addAgentFlags(c *kingpin.CmdClause, name string, cfg *agent.DaemonConfig, ports, interfaces *string) {
	d := agent.DefaultDaemonConfig()
	flag(c, name, "ports", "Watched ICAP server ports, comma-separated.").Default("11344,1344").StringVar(ports)
	flag(c, name, "interfaces", "Interfaces to attach to, comma-separated; default every interface that is up, and those that come up later.").StringVar(interfaces)
	flag(c, name, "source", "Where wire observations come from: auto (eBPF, else sock_diag), bpf or sockdiag.").
		Default(d.Source).EnumVar(&cfg.Source, agent.SourceAuto, agent.SourceBPF, agent.SourceSockDiag)
	flag(c, name, "tc-mode", "How the TC classifier is attached: auto (TCX where the kernel has it, else clsact filters), tcx or netlink (clsact filters).").
		Default(d.TCMode).EnumVar(&cfg.TCMode, bpf.ModeAuto, bpf.TCModeTCX, bpf.TCModeNetlink)
	flag(c, name, "kernel.events", "The kernel's event buffer: auto (the BPF ring buffer where the kernel has it, else the perf buffer), ringbuf or perf.").
		Default(d.KernelEvents).EnumVar(&cfg.KernelEvents, bpf.ModeAuto, bpf.OutputRing, bpf.OutputPerf)
	flag(c, name, "stall-threshold", "An exchange open this long is a stall.").Default(d.Correlator.StallThreshold.String()).DurationVar(&cfg.Correlator.StallThreshold)
	flag(c, name, "race-window", "A server close this soon after a request crossed it.").Default(d.Correlator.RaceWindow.String()).DurationVar(&cfg.Correlator.RaceWindow)
	flag(c, name, "release-window", "A stalled answer this soon after the server closed another connection was released by it.").Default(d.Correlator.ReleaseWindow.String()).DurationVar(&cfg.Correlator.ReleaseWindow)
	flag(c, name, "server-idle-timeout", "The servers' idle timeout until the canary observes the real one.").Default(d.Correlator.ServerIdleTimeout.String()).DurationVar(&cfg.Correlator.ServerIdleTimeout)
	intVar(flag(c, name, "max-flows", "Flows tracked at most; the quietest are dropped beyond.").Default(strconv.Itoa(d.Correlator.MaxFlows)), &cfg.Correlator.MaxFlows)
	intVar(flag(c, name, "max-servers", "Distinct server label values at most; the rest are \"other\".").Default(strconv.Itoa(d.Correlator.MaxServers)), &cfg.Correlator.MaxServers)
	intVar(flag(c, name, "max-clients", "Distinct client label values (process names) at most; the rest are \"other\", counted in icapwatch_client_label_overflows_total.").Default(strconv.Itoa(d.MaxClients)), &cfg.MaxClients)
	flag(c, name, "canary.target", "ICAP service the canary sends OPTIONS to (repeatable): icaps://host:11344/SERVICE.").StringsVar(&cfg.Canary.Targets)
	flag(c, name, "canary.interval", "Pause between canary probes.").Default(d.Canary.Interval.String()).DurationVar(&cfg.Canary.Interval)
	flag(c, name, "canary.ca", "PEM file of CAs the canary trusts instead of the system's.").PlaceHolder("FILE").StringVar(&cfg.Canary.CA)
	flag(c, name, "canary.insecure", "The canary does not verify the server's certificate.").BoolVar(&cfg.Canary.Insecure)
	intVar(flag(c, name, "canary.pool-size", "The canary's connections per target.").Default(strconv.Itoa(d.Canary.PoolSize)), &cfg.Canary.PoolSize)
	flag(c, name, "canary.max-idle", "The canary retires connections idle this long; keep it below the server's idle timeout.").Default(d.Canary.MaxIdle.String()).DurationVar(&cfg.Canary.MaxIdle)
	webFlags(c, name, &cfg.Web, d.Web.ListenAddresses[0])
	intVar(flag(c, name, "events.keep", "How many recent events /api/v1/events keeps.").Default(strconv.Itoa(d.EventsKeep)), &cfg.EventsKeep)
	flag(c, name, "proc", "The host's /proc (in a container, where the host's is mounted).").Default(d.Proc).StringVar(&cfg.Proc)
}

// webFlags declares exporter-toolkit's web flags, as every Prometheus
// exporter has them, with icapwatch's environment variables.
func webFlags(c *kingpin.CmdClause, name string, cfg *exporter.WebConfig, listen string) {
	cfg.ListenAddresses = nil // the flag appends to it: its default, or the addresses given
	flag(c, name, "web.listen-address", "Address for /metrics, the API and the landing page; repeatable.").
		Default(listen).StringsVar(&cfg.ListenAddresses)
	flag(c, name, "web.systemd-socket", "Listen on the sockets systemd passes (socket activation) instead of --web.listen-address.").
		BoolVar(&cfg.SystemdSocket)
	flag(c, name, "web.config.file", "exporter-toolkit web configuration (TLS, basic auth).").PlaceHolder("FILE").StringVar(&cfg.ConfigFile)
}

// parsePorts reads "11344,1344".
func parsePorts(s string) ([]uint16, error) {
	var ports []uint16
	for _, p := range strings.Split(s, ",") {
		p = strings.TrimSpace(p)
		if p == "" {
			continue
		}
		n, err := strconv.ParseUint(p, 10, 16)
		if err != nil || n == 0 {
			return nil, usagef("--ports: %q is not a TCP port", p)
		}
		ports = append(ports, uint16(n))
	}
	if len(ports) == 0 {
		return nil, usagef("--ports: at least one port is needed")
	}
	return ports, nil
}

func splitList(s string) []string {
	var out []string
	for _, v := range strings.Split(s, ",") {
		if v = strings.TrimSpace(v); v != "" {
			out = append(out, v)
		}
	}
	return out
}

// prepare turns the flag values into the daemon's configuration.
func prepare(cfg *agent.DaemonConfig, ports, interfaces string, log hclog.Logger) error {
	var err error
	if cfg.Ports, err = parsePorts(ports); err != nil {
		return err
	}
	cfg.Interfaces = splitList(interfaces)
	cfg.Logger = log
	if err := cfg.Validate(); err != nil {
		return usageError{err.Error()}
	}
	return nil
}

func (a *agentCmd) run(ctx context.Context, log hclog.Logger) error {
	if err := prepare(&a.cfg, a.ports, a.interfaces, log); err != nil {
		return err
	}
	d, err := agent.NewDaemon(a.cfg)
	if err != nil {
		return usageError{err.Error()}
	}
	if err := d.Run(ctx); err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	return nil
}
