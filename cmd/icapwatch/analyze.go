package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/alecthomas/kingpin/v2"
	"github.com/icapwatch/icapwatch/agent/analyze"
	"github.com/icapwatch/icapwatch/agent/correlate"
	"github.com/icapwatch/icapwatch/internal/humanize"
)

// analyzeCmd is `icapwatch analyze FILE`: the diagnosis from a capture.
type analyzeCmd struct {
	cmd    *kingpin.CmdClause
	file   string
	ports  string
	server string
	json   bool
	cfg    correlate.Config
}

func registerAnalyze(app *kingpin.Application) *analyzeCmd {
	a := &analyzeCmd{cmd: app.Command("analyze", "The agent's diagnosis from a tcpdump capture (pcap or pcapng; Ethernet, Linux cooked SLL/SLL2, raw IP, BSD loopback)."),
		cfg: correlate.DefaultConfig()}
	c := a.cmd
	c.Arg("file", "Capture file, or - for standard input.").Required().StringVar(&a.file)
	flag(c, "analyze", "ports", "Watched ICAP server ports, comma-separated.").Default("11344,1344").StringVar(&a.ports)
	flag(c, "analyze", "server", "Only this server (ip:port).").StringVar(&a.server)
	flag(c, "analyze", "stall-threshold", "An exchange open this long is a stall.").Default(a.cfg.StallThreshold.String()).DurationVar(&a.cfg.StallThreshold)
	intVar(flag(c, "analyze", "max-flows", "Connections followed at once; the least recently seen are evicted beyond, and the report says how many.").
		Default(strconv.Itoa(a.cfg.MaxFlows)), &a.cfg.MaxFlows)
	flag(c, "analyze", "json", "Print the events as JSON Lines instead of the report.").BoolVar(&a.json)
	return a
}

func (a *analyzeCmd) run(stdout, stderr io.Writer) error {
	ports, err := parsePorts(a.ports)
	if err != nil {
		return err
	}
	cfg := analyze.Config{Ports: ports, Correlator: a.cfg, Every: 1 << 20}
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
	if a.file == stdinFile {
		a.file = "-"
	} else {
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
	res, err := analyze.Run(in, cfg)
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

// report prints the human-readable diagnosis: per server, per connection
// a timeline of exchanges and events, then a summary.
func report(w io.Writer, name string, res analyze.Analysis, took time.Duration) {
	span := res.Last.Sub(res.First)
	fmt.Fprintf(w, "%s (%s): %d frames, %d IP packets, %d on watched ports, %d connections",
		name, res.Format, res.Capture.Frames, res.Wire.Packets, res.Wire.Watched, res.Wire.Flows)
	if !res.First.IsZero() {
		fmt.Fprintf(w, ", %s to %s (%s)", res.First.UTC().Format("2006-01-02 15:04:05.000"),
			res.Last.UTC().Format("15:04:05.000"), span.Round(time.Millisecond))
	}
	if res.Wire.Retransmits > 0 {
		fmt.Fprintf(w, ", %d retransmitted segments", res.Wire.Retransmits)
	}
	fmt.Fprintln(w)
	if skipped := res.Capture.NotIP + res.Capture.BadFrames + res.Wire.Malformed + res.Wire.Duplicates; skipped > 0 {
		fmt.Fprintf(w, "skipped: %d frames without IP, %d unreadable frames, %d malformed segments, %d seen twice\n",
			res.Capture.NotIP, res.Capture.BadFrames, res.Wire.Malformed, res.Wire.Duplicates)
	}
	if res.Capture.OtherLink > 0 {
		fmt.Fprintf(w, "skipped: %d frames on interfaces of unsupported link types (%s)\n", res.Capture.OtherLink,
			strings.Join(res.OtherLinks, ", "))
	}
	if res.Wire.Evictions > 0 {
		fmt.Fprintf(w, "%d connections evicted, the least recently seen first, to stay within %d followed at once\n",
			res.Wire.Evictions, res.MaxFlows)
	}

	servers := map[string]map[string]*connReport{}
	conn := func(server, client string) *connReport {
		if servers[server] == nil {
			servers[server] = map[string]*connReport{}
		}
		c := servers[server][client]
		if c == nil {
			c = &connReport{client: client}
			servers[server][client] = c
		}
		return c
	}
	for k, t := range res.Timelines {
		c := conn(k.Server, k.Client.String())
		c.answered = t.Answered
		for _, x := range t.Exchanges {
			c.lines = append(c.lines, timed{x.Start, exchangeLine(x)})
		}
	}
	for _, e := range res.Events {
		c := conn(e.Server, e.ClientAddrString())
		if e.Client != "" && e.Client != correlate.ClientUnknown {
			c.comm = e.Client
		}
		c.lines = append(c.lines, timed{e.Time, e.Summary()})
	}
	gaps := map[string]map[string][]time.Duration{} // by server, phase
	for k, g := range res.Gaps {
		if gaps[k.Server] == nil {
			gaps[k.Server] = map[string][]time.Duration{}
		}
		gaps[k.Server][k.Phase] = g
		if servers[k.Server] == nil {
			servers[k.Server] = map[string]*connReport{}
		}
	}
	for _, server := range sortedKeys(servers) {
		fmt.Fprintf(w, "\nserver %s\n", server)
		conns := make([]*connReport, 0, len(servers[server]))
		for _, c := range servers[server] {
			// Exchanges were added before events: at the same instant the
			// exchange comes first.
			sort.SliceStable(c.lines, func(i, j int) bool { return c.lines[i].at.Before(c.lines[j].at) })
			conns = append(conns, c)
		}
		// Connections in the order they show up, as the story went.
		sort.Slice(conns, func(i, j int) bool {
			a, b := conns[i].lines[0].at, conns[j].lines[0].at
			if !a.Equal(b) {
				return a.Before(b)
			}
			return conns[i].client < conns[j].client
		})
		for _, c := range conns {
			fmt.Fprintf(w, "  connection %s", c.client)
			if c.comm != "" {
				fmt.Fprintf(w, " (%s)", c.comm)
			}
			fmt.Fprintf(w, ": %d exchanges answered\n", c.answered)
			for _, l := range c.lines {
				fmt.Fprintf(w, "    %s  %s\n", l.at.UTC().Format("15:04:05.000"), l.line)
			}
		}
	}
	if res.Untimed > 0 {
		fmt.Fprintf(w, "\n%d answered exchanges on connections beyond the first %d are in the summary only (--server narrows the report)\n",
			res.Untimed, len(res.Timelines))
	}
	for _, ex := range res.Open {
		fmt.Fprintf(w, "\nopen at the end of the capture: %s from %s to %s, %s after %.3f s (%s)\n",
			ex.Phase, ex.ClientAddr, ex.Server, map[bool]string{true: "ACKed", false: "not ACKed"}[ex.Acked],
			ex.AgeSeconds, ex.State)
	}

	fmt.Fprintln(w, "\nsummary")
	if len(servers) == 0 {
		fmt.Fprintln(w, "  no exchange on the watched ports (see --ports)")
	} else {
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "  SERVER\tPHASE\tEXCHANGES\tGAP P50\tP90\tP99\tMAX")
		for _, server := range sortedKeys(gaps) {
			for _, phase := range sortedKeys(gaps[server]) {
				g := gaps[server][phase]
				slices.Sort(g)
				fmt.Fprintf(tw, "  %s\t%s\t%d\t%s\t%s\t%s\t%s\n", server, phase, len(g),
					pct(g, 50), pct(g, 90), pct(g, 99), pct(g, 100))
			}
		}
		tw.Flush()
		fmt.Fprintln(w)
		fmt.Fprintln(tw, "  SERVER\tSTALLS\tRELEASES\tRACES\tTLS ALERTS\tCLOSES")
		for _, s := range res.Tally.Servers() {
			fmt.Fprintf(tw, "  %s\t%d\t%d\t%d\t%d\t%d\n", s.Server, s.Stalls, s.Releases, s.Races, s.TLSAlerts, s.Closes)
		}
		tw.Flush()
	}
	fmt.Fprintf(w, "\n(%d packets in %s)\n", res.Capture.Frames, took.Round(time.Millisecond))
}

// connReport is one connection's part of the report.
type connReport struct {
	client, comm string
	answered     int
	lines        []timed
}

type timed struct {
	at   time.Time
	line string
}

// exchangeLine says what an exchange, or a run of them, took.
func exchangeLine(x analyze.Exchange) string {
	if x.Count <= 1 {
		return fmt.Sprintf("%s answered after %s", phaseWords(x.Phase, 1), humanize.Precise(x.Gap))
	}
	return fmt.Sprintf("%d %s over %s (to %s), answered after %s to %s", x.Count, phaseWords(x.Phase, x.Count),
		humanize.Precise(x.Span), x.Start.Add(x.Span).UTC().Format("15:04:05.000"), humanize.Precise(x.Gap), humanize.Precise(x.MaxGap))
}

// phaseWords names n exchanges of a phase as the events do.
func phaseWords(phase string, n int) string {
	w := map[string]string{"handshake": "TLS handshake", "request": "request", "": "exchange"}[phase]
	if w == "" {
		w = phase
	}
	if n > 1 {
		w += "s"
	}
	return w
}

// pct is the p-th percentile of sorted durations, nearest rank.
func pct(sorted []time.Duration, p int) string {
	if len(sorted) == 0 {
		return "-"
	}
	i := (len(sorted)*p + 99) / 100
	i = min(max(i, 1), len(sorted))
	return humanize.Precise(sorted[i-1])
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
