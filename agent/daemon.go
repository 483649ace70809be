package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/icapwatch/icapwatch/agent/correlate"
	"github.com/icapwatch/icapwatch/agent/observe"
	"github.com/icapwatch/icapwatch/bpf"
	"github.com/icapwatch/icapwatch/exporter"
	"github.com/icapwatch/icapwatch/icap"
	"github.com/icapwatch/icapwatch/internal/logging"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// sockDiagBeside is how often sock_diag is read beside the kernel probes:
// well within the stall threshold, for unread answers.
const sockDiagBeside = 3 * time.Second

// kernelFlowsEvery is how often the kernel's flow table is counted for its
// evictions: a walk of the whole table, so not every sweep.
const kernelFlowsEvery = 15 * time.Second

// landingExchanges bounds the open exchanges the landing page lists.
const landingExchanges = 20

// Sources of wire observations.
const (
	SourceAuto     = "auto"
	SourceBPF      = "bpf"
	SourceSockDiag = "sockdiag"
)

// CanaryConfig is the agent's own ICAP client pool.
type CanaryConfig struct {
	Targets  []string // icaps://host:11344/SERVICE ...
	Interval time.Duration
	CA       string
	Insecure bool
	PoolSize int
	// MaxIdle retires idle canary connections; keep it below the server's
	// idle timeout so the canary does not hold a server worker for long.
	MaxIdle time.Duration
}

// DaemonConfig is everything `icapwatch agent` takes.
type DaemonConfig struct {
	Ports         []uint16
	Interfaces    []string
	Source        string
	TCMode        string // auto, tcx or netlink (clsact filters)
	KernelEvents  string // the kernel's event buffer: auto, perf or ringbuf
	Correlator    correlate.Config
	SweepInterval time.Duration
	Canary        CanaryConfig
	Web           exporter.WebConfig
	EventsKeep    int
	// MaxClients bounds the client label's values: process names beyond
	// are labelled other (see clientLabels).
	MaxClients int
	Proc       string // the host's /proc
	Logger     hclog.Logger
	// OnEvent, when set, is told of every event too (the demo's timeline),
	// and OnGap of every answered exchange. Both run under the agent's
	// lock and must not call the Daemon.
	OnEvent func(correlate.Event)
	OnGap   func(correlate.Gap)

	kernelFlowsEvery time.Duration // 0: kernelFlowsEvery; tests shorten it
	clientLinger     time.Duration // 0: clientLinger; tests shorten it
}

// DefaultDaemonConfig returns the agent's defaults.
func DefaultDaemonConfig() DaemonConfig {
	return DaemonConfig{
		Ports:         []uint16{icap.TLSPort, icap.PlainPort},
		Source:        SourceAuto,
		TCMode:        bpf.ModeAuto,
		KernelEvents:  bpf.ModeAuto,
		Correlator:    correlate.DefaultConfig(),
		SweepInterval: time.Second,
		Canary:        CanaryConfig{Interval: 30 * time.Second, PoolSize: 1, MaxIdle: 60 * time.Second},
		Web:           exporter.WebConfig{ListenAddresses: []string{":9344"}},
		EventsKeep:    1000,
		MaxClients:    64,
		Proc:          "/proc",
	}
}

// MaxEventsKeep bounds --events.keep: the ring is allocated at start.
const MaxEventsKeep = 100000

// MaxClientLabels bounds --max-clients: every metric with a client label
// has a series for each value.
const MaxClientLabels = 10000

// Validate names the flag whose value is wrong.
func (c DaemonConfig) Validate() error {
	if len(c.Ports) == 0 {
		return errors.New("--ports: at least one port is needed")
	}
	switch c.Source {
	case SourceAuto, SourceBPF, SourceSockDiag:
	default:
		return fmt.Errorf("--source %q: want auto, bpf or sockdiag", c.Source)
	}
	switch c.TCMode {
	case bpf.ModeAuto, bpf.TCModeTCX, bpf.TCModeNetlink:
	default:
		return fmt.Errorf("--tc-mode %q: want auto, tcx or netlink", c.TCMode)
	}
	switch c.KernelEvents {
	case bpf.ModeAuto, bpf.OutputPerf, bpf.OutputRing:
	default:
		return fmt.Errorf("--kernel.events %q: want auto, perf or ringbuf", c.KernelEvents)
	}
	if err := c.Correlator.Validate(); err != nil {
		return err
	}
	if c.SweepInterval <= 0 {
		return errors.New("sweep interval must be positive")
	}
	for _, t := range c.Canary.Targets {
		if _, err := icap.ParseTarget(t); err != nil {
			return fmt.Errorf("--canary.target %q: %w", t, err)
		}
	}
	if c.Canary.Interval < time.Second {
		return fmt.Errorf("--canary.interval: %v is below 1s", c.Canary.Interval)
	}
	if c.Canary.PoolSize < 1 {
		return fmt.Errorf("--canary.pool-size: %d is below 1", c.Canary.PoolSize)
	}
	if c.Canary.MaxIdle <= 0 {
		return errors.New("--canary.max-idle: must be positive")
	}
	if c.EventsKeep < 1 || c.EventsKeep > MaxEventsKeep {
		return fmt.Errorf("--events.keep: %d is not from 1 to %d", c.EventsKeep, MaxEventsKeep)
	}
	if c.MaxClients < 1 || c.MaxClients > MaxClientLabels {
		return fmt.Errorf("--max-clients: %d is not from 1 to %d", c.MaxClients, MaxClientLabels)
	}
	if c.Canary.CA != "" {
		if _, err := icap.LoadCAFile(c.Canary.CA); err != nil {
			return fmt.Errorf("--canary.ca: %w", err)
		}
	}
	for _, name := range c.Interfaces {
		if _, err := net.InterfaceByName(name); err != nil {
			return fmt.Errorf("--interfaces: no interface %q on this host (ip link lists them)", name)
		}
	}
	return c.Web.Validate()
}

// Daemon is the running agent.
type Daemon struct {
	cfg   DaemonConfig
	log   hclog.Logger
	reg   *prometheus.Registry
	m     *exporter.Metrics
	ready atomic.Bool
	addr  chan net.Addr

	mu     sync.Mutex // guards the correlator and what follows
	corr   *correlate.Correlator
	meter  *meter
	events []correlate.Event // ring of the last EventsKeep
	next   int
	full   bool
	source string
	output string // the kernel's event buffer, perf or ringbuf, on bpf
	hooks  []bpf.HookStatus
	lag    time.Duration // how late the source's events may reach the correlator
}

// NewDaemon checks the configuration.
func NewDaemon(cfg DaemonConfig) (*Daemon, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	d := &Daemon{cfg: cfg, log: cfg.Logger, reg: prometheus.NewRegistry(), addr: make(chan net.Addr, 1),
		events: make([]correlate.Event, cfg.EventsKeep)}
	d.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	d.m = exporter.NewMetrics(d.reg)
	corrCfg := cfg.Correlator
	// Live, a sweep that comes late (a suspended host) need not catch up
	// second by second: stalls due meanwhile are still found at their time.
	corrCfg.SweepInterval, corrCfg.MaxCatchUp = cfg.SweepInterval, cfg.SweepInterval
	linger := clientLinger
	if cfg.clientLinger > 0 {
		linger = cfg.clientLinger
	}
	d.meter = newMeter(d.m, cfg.MaxClients, linger, time.Now)
	corr, err := correlate.New(corrCfg, d.meter, d.onEvent)
	if err != nil {
		return nil, err
	}
	d.corr = corr
	corr.OnGap = cfg.OnGap
	d.reg.MustRegister(&stateCollector{descs: exporter.NewStateDescs(), mu: &d.mu, corr: corr,
		clients: d.meter.clients, now: time.Now})
	return d, nil
}

// Addr is the HTTP address, once listening.
func (d *Daemon) Addr() <-chan net.Addr { return d.addr }

// Registry is the daemon's metrics registry.
func (d *Daemon) Registry() *prometheus.Registry { return d.reg }

// Source is the wire source in use, once Run has chosen it.
func (d *Daemon) Source() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.source
}

// KernelEvents is the kernel's event buffer in use, perf or ringbuf, once
// Run has chosen the bpf source; "" on any other.
func (d *Daemon) KernelEvents() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.output
}

func (d *Daemon) onEvent(e correlate.Event) {
	d.events[d.next] = e
	d.next = (d.next + 1) % len(d.events)
	d.full = d.full || d.next == 0
	d.meter.count(e)
	// An ordinary close is routine: thousands an hour on a busy host. A
	// close with a request open, and every other event, is news.
	level := hclog.Info
	if cl, ok := e.Detail.(*correlate.Close); ok && !cl.OpenExchange {
		level = hclog.Debug
	}
	d.log.Log(level, string(e.Kind()), e.LogArgs()...)
	if d.cfg.OnEvent != nil {
		d.cfg.OnEvent(e)
	}
}

// The kernel reader hands over up to kernelBatch events at a time, with
// kernelBuffers batches in flight.
const (
	kernelBatch   = 256
	kernelBuffers = 4
)

// Run serves until ctx ends, then takes every hook off and returns.
func (d *Daemon) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	addr, webDone, err := exporter.Serve(ctx, d.cfg.Web, exporter.Handler(d.reg, d, logging.Slog(d.log.Named("web"))),
		logging.Slog(d.log.Named("web")))
	if err != nil {
		return err
	}
	d.addr <- addr
	d.log.Info("serving", "address", addr.String())

	obs := make(chan observe.Observation, 64) // sock_diag and the canary
	// The kernel's events come in batches, a channel operation a burst
	// rather than an event; the correlator gives each batch back. When it
	// falls behind, the reader waits and the kernel buffer counts losses.
	batches, free := make(chan []observe.Observation, kernelBuffers), make(chan []observe.Observation, kernelBuffers)
	for range kernelBuffers {
		free <- make([]observe.Observation, 0, kernelBatch)
	}
	var wg sync.WaitGroup
	probe, diag, err := d.openSource()
	if err != nil {
		return err
	}
	// The flow counter reads the probe's maps: it has stopped before the
	// probe closes, whichever way Run returns.
	counted := make(chan struct{})
	if probe != nil {
		defer probe.Close()
		wg.Add(1)
		go func() {
			defer wg.Done()
			d.readKernel(ctx, probe, batches, free)
		}()
		go func() {
			defer close(counted)
			every := kernelFlowsEvery
			if d.cfg.kernelFlowsEvery > 0 {
				every = d.cfg.kernelFlowsEvery
			}
			d.countKernelEvictions(ctx, probe, every)
		}()
		defer func() {
			cancel()
			<-counted
		}()
	}
	d.ready.Store(true)
	for _, target := range d.cfg.Canary.Targets {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d.runCanary(ctx, target, obs)
		}()
	}

	// The correlator sweeps every interval, and also when an exchange is
	// due to cross the threshold, so a stall shows at once rather than up
	// to an interval late: the timer follows its NextSweep. The kernel's
	// events reach the correlator up to d.lag after they happened, so a
	// sweep for time T runs at T+lag: an answer that came just before a
	// stall's threshold is not taken for a stall.
	d.mu.Lock()
	d.corr.Advance(time.Now()) // starts its clock
	next := d.corr.NextSweep().Add(d.lag)
	d.mu.Unlock()
	tick := time.NewTimer(time.Until(next))
	defer tick.Stop()
	var lost, late, otherNetns uint64
	// sock_diag dumps every TCP socket of the host: as the source it runs
	// every sweep; beside the kernel probes (seeding, unacked, unread) a
	// slower pace will do, which matters with tens of thousands of sockets.
	pollEvery, lastPoll := d.cfg.SweepInterval, time.Time{}
	// Client labels no open connection has are let go now and then.
	retireEvery, lastRetire := min(time.Minute, d.meter.clients.linger), time.Now()
	if probe != nil {
		pollEvery = sockDiagBeside
	}
	// feed hands observations to the correlator and brings the sweep
	// forward when an exchange is due before it.
	feed := func(batch ...observe.Observation) {
		d.mu.Lock()
		for i := range batch {
			d.corr.Observe(batch[i])
		}
		due := d.corr.NextSweep().Add(d.lag)
		d.mu.Unlock()
		if due.Before(next) {
			next = due
			tick.Reset(time.Until(next))
		}
	}
	for {
		select {
		case o := <-obs:
			feed(o)
		case batch := <-batches:
			feed(batch...)
			free <- batch
		case now := <-tick.C:
			d.mu.Lock()
			if now.Sub(lastPoll) >= pollEvery {
				lastPoll = now
				if err := diag.Poll(now, d.corr.Observe); err != nil {
					d.log.Warn("sock_diag poll failed", "error", err)
				}
			}
			d.corr.Advance(now.Add(-d.lag))
			next = d.corr.NextSweep().Add(d.lag)
			if now.Sub(lastRetire) >= retireEvery {
				lastRetire = now
				d.retireClients(now)
			}
			d.mu.Unlock()
			tick.Reset(time.Until(next))
			if probe != nil {
				if st, err := probe.Stats(false); err == nil {
					if st.EventsLost > lost {
						d.m.EventsLost.WithLabelValues(SourceBPF).Add(float64(st.EventsLost - lost))
						lost = st.EventsLost
					}
					if st.EventsLate > late {
						d.m.EventsLate.WithLabelValues(SourceBPF).Add(float64(st.EventsLate - late))
						late = st.EventsLate
					}
					if st.OtherNetns > otherNetns {
						d.m.KernelOtherNetns.Add(float64(st.OtherNetns - otherNetns))
						otherNetns = st.OtherNetns
					}
				}
			}
		case <-ctx.Done():
			return d.stop(probe, counted, &wg, <-webDone)
		case werr := <-webDone:
			// The server also ends, without error, when ctx does: only
			// an error of its own is one of Run's.
			if werr == nil && ctx.Err() != nil {
				return d.stop(probe, counted, &wg, nil)
			}
			cancel()
			err := d.stop(probe, counted, &wg, nil)
			if werr == nil {
				werr = errors.New("stopped")
			}
			return errors.Join(fmt.Errorf("http server: %w", werr), err)
		}
	}
}

// stop takes the probe off once the flow counter is done with it and
// waits for the reader and the canaries: Run's ctx has ended.
func (d *Daemon) stop(probe *bpf.Probe, counted <-chan struct{}, wg *sync.WaitGroup, webErr error) error {
	d.ready.Store(false)
	start := time.Now()
	var err error
	if probe != nil {
		<-counted
		err = probe.Close() // unblocks the reader
	}
	wg.Wait()
	d.log.Info("stopped", "detach", time.Since(start).Round(time.Millisecond))
	if err == nil {
		err = webErr
	}
	return err
}

// retireClients lets the client labels go that no open connection has
// had for the linger, with their series. Under d.mu.
func (d *Daemon) retireClients(now time.Time) {
	inUse := map[string]bool{}
	for l := range d.corr.State(now).Connections {
		inUse[l.Client] = true
	}
	d.meter.retire(inUse)
}

// openSource attaches the kernel probes, or falls back to sock_diag.
func (d *Daemon) openSource() (*bpf.Probe, *SockDiag, error) {
	source := d.cfg.Source
	var probe *bpf.Probe
	if source != SourceSockDiag {
		cfg := bpf.DefaultConfig()
		cfg.Ports, cfg.Interfaces, cfg.Logger = d.cfg.Ports, d.cfg.Interfaces, d.log.Named("bpf")
		cfg.TC, cfg.MaxFlows = d.cfg.TCMode, kernelFlows(d.cfg.Correlator.MaxFlows)
		cfg.Output, cfg.Proc = d.cfg.KernelEvents, d.cfg.Proc
		p, err := bpf.Open(cfg)
		switch {
		case err == nil:
			probe, source = p, SourceBPF
			// The reader polls: an event waits up to a poll in the kernel's
			// buffer, on the perf buffer up to the reorder window more to
			// be merged in time order, and up to another poll in the batch
			// handed over.
			d.lag = 2*cfg.Poll + p.ReorderWindow()
		case source == SourceBPF:
			return nil, nil, fmt.Errorf("--source bpf: %w", err)
		default:
			d.log.Warn("eBPF is not available here: running on sock_diag, with coarser timing", "reason", err)
			source = SourceSockDiag
		}
	}
	d.mu.Lock()
	d.source = source
	if probe != nil {
		d.hooks, d.output = probe.Hooks(), probe.Output()
	}
	d.mu.Unlock()
	d.m.Source.WithLabelValues(source).Set(1)
	// Zero matters for rate() and increase(): the series exist from the start.
	for _, src := range []string{source, observe.SourceCanary.String()} {
		d.m.Events.WithLabelValues(src)
		d.m.EventsLost.WithLabelValues(src)
	}
	if probe != nil {
		d.m.EventsLate.WithLabelValues(SourceBPF)
	}
	for _, h := range d.hooks {
		v := 0.0
		if h.Attached {
			v = 1
		}
		d.m.HookAttached.WithLabelValues(h.Name).Set(v)
	}
	if probe != nil {
		d.log.Info("source", "source", source, "ports", fmt.Sprint(d.cfg.Ports), "events", probe.Output())
	} else {
		d.log.Info("source", "source", source, "ports", fmt.Sprint(d.cfg.Ports))
	}
	return probe, NewSockDiag(d.cfg.Ports, d.cfg.Proc, source == SourceSockDiag), nil
}

// kernelFlows sizes the kernel's flow table as --max-flows, within the
// bounds bpf.Config.Validate accepts.
func kernelFlows(maxFlows int) uint32 {
	return uint32(min(max(maxFlows, 16), 1<<24))
}

// countKernelEvictions exports, every interval, how many flows the
// kernel's LRU table dropped since the last look. The count is an
// estimate that can dip while flows come and go during the walk, so only
// a rise past the highest seen is exported.
func (d *Daemon) countKernelEvictions(ctx context.Context, p *bpf.Probe, every time.Duration) {
	tick := time.NewTicker(every)
	defer tick.Stop()
	var seen uint64
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		st, err := p.Stats(true)
		if err != nil {
			if ctx.Err() == nil {
				d.log.Warn("count kernel flows", "error", err)
			}
			continue
		}
		if st.FlowEvictions > seen {
			d.m.KernelFlowEvictions.Add(float64(st.FlowEvictions - seen))
			seen = st.FlowEvictions
		}
	}
}

// kernelEvents is what readKernel takes from the probe: its events, in
// kernel-time order, in batches.
type kernelEvents interface {
	ReadBatch(buf []bpf.Event) (int, error)
}

// readKernel hands the kernel's events to the correlator's loop in
// batches, in the order the probe reads them.
func (d *Daemon) readKernel(ctx context.Context, p kernelEvents, batches chan<- []observe.Observation, free <-chan []observe.Observation) {
	evs := make([]bpf.Event, kernelBatch)
	for {
		n, err := p.ReadBatch(evs)
		if err != nil {
			if !errors.Is(err, os.ErrClosed) {
				d.log.Error("kernel events", "error", err)
			}
			return
		}
		var batch []observe.Observation
		select {
		case batch = <-free:
		case <-ctx.Done():
			return
		}
		batch = batch[:0]
		for _, ev := range evs[:n] {
			batch = append(batch, kernelObservation(ev))
		}
		select {
		case batches <- batch:
		case <-ctx.Done():
			return
		}
	}
}

// runCanary sends OPTIONS to one target every interval.
func (d *Daemon) runCanary(ctx context.Context, target string, out chan<- observe.Observation) {
	log := d.log.Named("canary").With("target", target)
	send := func(o observe.Observation) {
		select {
		case out <- o:
		case <-ctx.Done():
		}
	}
	client, err := icap.NewClient(icap.Config{Target: target, CAFile: d.cfg.Canary.CA, Insecure: d.cfg.Canary.Insecure,
		MaxConns: d.cfg.Canary.PoolSize, MaxIdle: d.cfg.Canary.MaxIdle, Observer: CanaryObserver(send)})
	if err != nil {
		log.Error("canary not started", "error", err)
		return
	}
	defer client.Close()
	var exhausted uint64
	for {
		timeout := min(d.cfg.Canary.Interval, 30*time.Second)
		pctx, cancel := context.WithTimeout(ctx, timeout)
		res := client.Probe(pctx)
		cancel()
		if ctx.Err() != nil {
			return
		}
		d.recordProbe(target, res, log, send)
		st := client.Stats()
		d.m.PoolConnections.WithLabelValues(target, "idle").Set(float64(st.Idle))
		d.m.PoolConnections.WithLabelValues(target, "busy").Set(float64(st.InUse))
		if st.Exhausted > exhausted {
			d.m.PoolExhausted.WithLabelValues(target).Add(float64(st.Exhausted - exhausted))
			exhausted = st.Exhausted
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(d.cfg.Canary.Interval):
		}
	}
}

func (d *Daemon) recordProbe(target string, res icap.ProbeResult, log hclog.Logger, send func(observe.Observation)) {
	if !res.OK() {
		d.m.ProbeSuccess.WithLabelValues(target).Set(0)
		d.m.ProbeFailures.WithLabelValues(target, res.Reason()).Inc()
		log.Warn("canary probe failed", "reason", res.Reason(), "error", res.Err)
		return
	}
	d.m.ProbeSuccess.WithLabelValues(target).Set(1)
	// Phases that did not happen (connect and tls on a reused connection,
	// tls on plain ICAP) are left out rather than observed as zero.
	for _, p := range res.Trace.Phases() {
		if p.Duration > 0 || p.Name == "first_byte" || p.Name == "total" {
			d.m.ProbePhase.WithLabelValues(target, res.Conn, p.Name).Observe(p.Duration.Seconds())
		}
	}
	if remote := res.Trace.Conn.Remote; remote.IsValid() {
		send(CanaryOptions(netip.AddrPortFrom(remote.Addr().Unmap(), remote.Port()), res.Options, time.Now()))
	}
}

// Status implements exporter.Backend.
func (d *Daemon) Status() exporter.Status {
	d.mu.Lock()
	defer d.mu.Unlock()
	st := exporter.Status{Ready: d.ready.Load(), Source: d.source, Targets: d.cfg.Canary.Targets}
	for _, h := range d.hooks {
		st.Hooks = append(st.Hooks, exporter.Hook{Name: h.Name, Attached: h.Attached, Mode: h.Mode, Error: h.Error})
	}
	open := d.openExchanges()
	for _, ex := range open {
		st.Open++
		if ex.State != "open" {
			st.Stalled++
		}
	}
	for _, ex := range open[:min(len(open), landingExchanges)] {
		client := ex.Client
		if ex.PID != 0 {
			client = fmt.Sprintf("%s (pid %d)", ex.Client, ex.PID)
		}
		st.Oldest = append(st.Oldest, exporter.Exchange{Server: ex.Server, Client: client, ClientAddr: ex.ClientAddr,
			Phase: ex.Phase, State: ex.State,
			Age: time.Duration(ex.AgeSeconds * float64(time.Second)).Round(100 * time.Millisecond)})
	}
	evs := d.recent()
	for i := max(0, len(evs)-20); i < len(evs); i++ {
		st.Recent = append(st.Recent, evs[i].Time.Format("15:04:05.000")+" "+evs[i].Summary())
	}
	return st
}

// Exchanges implements exporter.Backend: the open exchanges, oldest first.
func (d *Daemon) Exchanges() any {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.openExchanges()
}

// openExchanges lists the open exchanges oldest first (ties by client
// address, so the order is stable); d.mu is held.
func (d *Daemon) openExchanges() []correlate.OpenExchange {
	ex := d.corr.OpenExchanges(time.Now())
	if ex == nil {
		return []correlate.OpenExchange{}
	}
	sort.Slice(ex, func(i, j int) bool {
		if ex[i].AgeSeconds != ex[j].AgeSeconds {
			return ex[i].AgeSeconds > ex[j].AgeSeconds
		}
		if ex[i].ClientAddr != ex[j].ClientAddr {
			return ex[i].ClientAddr < ex[j].ClientAddr
		}
		return ex[i].Phase < ex[j].Phase
	})
	return ex
}

// Events implements exporter.Backend: the kept events, oldest first.
func (d *Daemon) Events() any {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.recent()
}

func (d *Daemon) recent() []correlate.Event {
	if !d.full {
		return append([]correlate.Event{}, d.events[:d.next]...)
	}
	return append(append([]correlate.Event{}, d.events[d.next:]...), d.events[:d.next]...)
}
