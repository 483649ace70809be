package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"os"
	"sort"
	"text/tabwriter"
	"time"

	"github.com/alecthomas/kingpin/v2"
	"github.com/icapwatch/icapwatch/agent"
)

// analyzeCmd is `icapwatch analyze FILE`: the diagnosis from a capture.
type analyzeCmd struct {
	cmd    *kingpin.CmdClause
	file   string
	ports  string
	server string
	json   bool
	cfg    agent.Config
}

func registerAnalyze(app *kingpin.Application) *analyzeCmd {
	a := &analyzeCmd{cmd: app.Command("analyze", "The agent's diagnosis from a tcpdump capture (pcap or pcapng; Ethernet, Linux cooked SLL/SLL2, raw IP, BSD loopback)."),
		cfg: agent.DefaultConfig()}
	c := a.cmd
	c.Arg("file", "Capture file, or - for standard input.").Required().StringVar(&a.file)
	flag(c, "analyze", "ports", "Watched ICAP server ports, comma-separated.").Default("11344,1344").StringVar(&a.ports)
	flag(c, "analyze", "server", "Only this server (ip:port).").StringVar(&a.server)
	flag(c, "analyze", "stall-threshold", "An exchange open this long is a stall.").Default(a.cfg.StallThreshold.String()).DurationVar(&a.cfg.StallThreshold)
	flag(c, "analyze", "json", "Print the events as JSON Lines instead of the report.").BoolVar(&a.json)
	return a
}

func (a *analyzeCmd) run(stdout, stderr io.Writer) error {
	ports, err := parsePorts(a.ports)
	if err != nil {
		return err
	}
	cfg := agent.AnalyzeConfig{Ports: ports, Correlator: a.cfg, Every: 1 << 20}
	if a.server != "" {
		if cfg.Server, err = netip.ParseAddrPort(a.server); err != nil {
			return usagef("--server %q: want ip:port (%v)", a.server, err)
		}
	}
	if err := a.cfg.Validate(); err != nil {
		return usageError{err.Error()}
	}
	in := os.Stdin
	var size int64
	if a.file != "-" {
		f, err := os.Open(a.file)
		if err != nil {
			return usagef("%v", err)
		}
		defer f.Close()
		in = f
		if st, err := f.Stat(); err == nil {
			size = st.Size()
		}
	}
	start := time.Now()
	cfg.Progress = func(packets, bytes uint64) {
		if size > 0 {
			fmt.Fprintf(stderr, "analyze: %d packets, %.0f%% of %s\n", packets, 100*float64(bytes)/float64(size), a.file)
		} else {
			fmt.Fprintf(stderr, "analyze: %d packets\n", packets)
		}
	}
	res, err := agent.Analyze(in, cfg)
	if err != nil {
		return fmt.Errorf("%s: %w", a.file, err)
	}
	if res.Err != nil {
		fmt.Fprintf(stderr, "icapwatch: warning: %s is damaged (%v); the report covers the %d frames before it\n",
			a.file, res.Err, res.Capture.Frames)
	}
	if a.json {
		enc := json.NewEncoder(stdout)
		for _, e := range res.Events {
			enc.Encode(e)
		}
	} else {
		report(stdout, a.file, res, time.Since(start))
	}
	if res.Wire.Packets == 0 {
		fmt.Fprintf(stderr, "icapwatch: error: %s: no IP packet could be read\n", a.file)
		return failed{}
	}
	return nil
}

// report prints the human-readable diagnosis: per server, per connection.
func report(w io.Writer, name string, res agent.Analysis, took time.Duration) {
	span := res.Last.Sub(res.First)
	fmt.Fprintf(w, "%s (%s): %d frames, %d IP packets, %d on watched ports, %d connections",
		name, res.Format, res.Capture.Frames, res.Wire.Packets, res.Wire.Watched, res.Wire.Flows)
	if !res.First.IsZero() {
		fmt.Fprintf(w, ", %s to %s (%s)", res.First.UTC().Format("2006-01-02 15:04:05.000"),
			res.Last.UTC().Format("15:04:05.000"), span.Round(time.Millisecond))
	}
	fmt.Fprintln(w)
	if skipped := res.Capture.NotIP + res.Capture.BadFrames + res.Wire.Malformed + res.Wire.Duplicates; skipped > 0 {
		fmt.Fprintf(w, "skipped: %d frames without IP, %d unreadable frames, %d malformed segments, %d seen twice\n",
			res.Capture.NotIP, res.Capture.BadFrames, res.Wire.Malformed, res.Wire.Duplicates)
	}

	byServer := map[string]map[string][]agent.Event{}
	for _, e := range res.Events {
		if byServer[e.Server] == nil {
			byServer[e.Server] = map[string][]agent.Event{}
		}
		byServer[e.Server][e.ClientAddr] = append(byServer[e.Server][e.ClientAddr], e)
	}
	gaps := map[string][]time.Duration{}
	for k, g := range res.Gaps {
		gaps[k.Server] = append(gaps[k.Server], g...)
		if byServer[k.Server] == nil {
			byServer[k.Server] = map[string][]agent.Event{}
		}
	}
	for _, server := range sortedKeys(byServer) {
		fmt.Fprintf(w, "\nserver %s\n", server)
		conns := byServer[server]
		for _, client := range sortedKeys(conns) {
			evs := conns[client]
			fmt.Fprintf(w, "  connection %s (%s)\n", client, evs[0].Client)
			for _, e := range evs {
				fmt.Fprintf(w, "    %s  %s\n", e.Time.UTC().Format("15:04:05.000"), e.Summary())
			}
		}
	}
	for _, ex := range res.Open {
		fmt.Fprintf(w, "\nopen at the end of the capture: %s from %s to %s, %s after %.3f s (%s)\n",
			ex.Phase, ex.ClientAddr, ex.Server, map[bool]string{true: "ACKed", false: "not ACKed"}[ex.Acked],
			ex.AgeSeconds, ex.State)
	}

	fmt.Fprintln(w, "\nsummary")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  SERVER\tEXCHANGES\tGAP P50\tP90\tP99\tMAX\tSTALLS\tRELEASES\tRACES\tTLS ALERTS\tCLOSES")
	for _, server := range sortedKeys(byServer) {
		g := gaps[server]
		sort.Slice(g, func(i, j int) bool { return g[i] < g[j] })
		count := map[string]int{}
		for _, evs := range byServer[server] {
			for _, e := range evs {
				count[e.Kind]++
			}
		}
		fmt.Fprintf(tw, "  %s\t%d\t%s\t%s\t%s\t%s\t%d\t%d\t%d\t%d\t%d\n", server, len(g), pct(g, 50), pct(g, 90), pct(g, 99),
			pct(g, 100), count[agent.KindStall], count[agent.KindRelease], count[agent.KindRace],
			count[agent.KindTLSAlert], count[agent.KindClose])
	}
	tw.Flush()
	if len(byServer) == 0 {
		fmt.Fprintln(w, "  no exchange on the watched ports (see --ports)")
	}
	fmt.Fprintf(w, "\n(%d packets in %s)\n", res.Capture.Frames, took.Round(time.Millisecond))
}

// pct is the p-th percentile of sorted durations, nearest rank.
func pct(sorted []time.Duration, p int) string {
	if len(sorted) == 0 {
		return "-"
	}
	i := (len(sorted)*p + 99) / 100
	i = min(max(i, 1), len(sorted))
	d := sorted[i-1]
	switch {
	case d < time.Millisecond:
		return d.Round(time.Microsecond).String()
	case d < time.Second:
		return d.Round(100 * time.Microsecond).String()
	}
	return d.Round(time.Millisecond).String()
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
