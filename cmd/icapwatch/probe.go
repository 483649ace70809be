package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/alecthomas/kingpin/v2"

	"github.com/icapwatch/icapwatch/icap"
	"github.com/icapwatch/icapwatch/internal/humanize"
)

// probeCmd is `icapwatch probe URL`: OPTIONS with phase timings.
type probeCmd struct {
	cmd        *kingpin.CmdClause
	url        string
	insecure   bool
	ca         string
	serverName string
	timeout    time.Duration
	count      int
	interval   time.Duration
	json       bool
}

func registerProbe(app *kingpin.Application) *probeCmd {
	p := &probeCmd{cmd: app.Command("probe", "Send OPTIONS to an ICAP service and show phase timings, TLS details and the server's OPTIONS headers.")}
	c := p.cmd
	c.Arg("url", "icaps://host[:11344]/SERVICE (TLS) or icap://host[:1344]/SERVICE (plain).").Required().StringVar(&p.url)
	flag(c, "probe", "insecure", "Do not verify the server's certificate.").BoolVar(&p.insecure)
	flag(c, "probe", "ca", "PEM file of CAs to trust instead of the system's.").PlaceHolder("FILE").StringVar(&p.ca)
	flag(c, "probe", "server-name", "Name to verify in the certificate; default the URL's host.").StringVar(&p.serverName)
	flag(c, "probe", "timeout", "Deadline for each probe.").Default("10s").DurationVar(&p.timeout)
	flag(c, "probe", "count", "Number of probes; after the first they reuse the pooled connection.").Default("1").IntVar(&p.count)
	flag(c, "probe", "interval", "Pause between probes.").Default("1s").DurationVar(&p.interval)
	flag(c, "probe", "json", "Print one JSON object per probe (JSON Lines).").BoolVar(&p.json)
	return p
}

// probeResult is one probe as printed with --json.
type probeResult struct {
	Probe      int                `json:"probe"`
	Target     string             `json:"target"`
	OK         bool               `json:"ok"`
	Error      string             `json:"error,omitempty"`
	FailedIn   string             `json:"failed_phase,omitempty"`
	Conn       string             `json:"conn,omitempty"` // fresh or reused
	IdleAge    *float64           `json:"idle_age_seconds,omitempty"`
	Retried    bool               `json:"retried,omitempty"`
	Local      string             `json:"local,omitempty"`
	Remote     string             `json:"remote,omitempty"`
	TLSVersion string             `json:"tls_version,omitempty"`
	Cipher     string             `json:"cipher,omitempty"`
	Phases     map[string]float64 `json:"phases_seconds,omitempty"`
	Status     int                `json:"status,omitempty"`
	Reason     string             `json:"reason,omitempty"`
	Headers    icap.Header        `json:"headers,omitempty"`
	Closes     []string           `json:"closes_before,omitempty"`
}

func (p *probeCmd) validate() error {
	switch {
	case p.count < 1:
		return usagef("--count must be at least 1")
	case p.timeout <= 0:
		return usagef("--timeout must be positive")
	case p.interval < 0:
		return usagef("--interval must not be negative")
	case p.insecure && p.ca != "":
		return usagef("--insecure and --ca contradict each other: pick one")
	}
	if _, err := icap.ParseTarget(p.url); err != nil {
		return usagef("url: %v", err)
	}
	return nil
}

func (p *probeCmd) run(ctx context.Context, stdout io.Writer) error {
	if err := p.validate(); err != nil {
		return err
	}
	var (
		mu     sync.Mutex
		closes []string // connection closes seen since the last probe
	)
	c, err := icap.NewClient(icap.Config{
		Target:     p.url,
		CAFile:     p.ca,
		ServerName: p.serverName,
		Insecure:   p.insecure,
		MaxConns:   1,
		// Keep the connection across the interval, so that reuse and
		// the server's own idle close are what the probes show.
		MaxIdle: max(icap.DefaultMaxIdle, p.interval+p.timeout),
		Timeout: p.timeout,
		Observer: &icap.Observer{ConnClosed: func(_ icap.ConnInfo, ci icap.CloseInfo) {
			mu.Lock()
			closes = append(closes, describeClose(ci))
			mu.Unlock()
		}},
	})
	if err != nil {
		// The URL was validated above: what is left is the CA file.
		return usagef("--ca: %v", err)
	}
	defer c.Close()

	failures := 0
	for i := 1; i <= p.count; i++ {
		if i > 1 {
			select {
			case <-ctx.Done():
				return p.summary(stdout, i-1, failures)
			case <-time.After(p.interval):
			}
		}
		pctx, cancel := context.WithTimeout(ctx, p.timeout)
		pr := c.Probe(pctx)
		cancel()
		mu.Lock()
		res := p.result(i, c.Target(), pr, closes)
		closes = nil
		mu.Unlock()
		if !res.OK {
			failures++
		}
		if p.json {
			enc := json.NewEncoder(stdout)
			enc.Encode(res)
		} else {
			p.print(stdout, res, pr, i == 1 || !res.OK)
		}
	}
	return p.summary(stdout, p.count, failures)
}

func (p *probeCmd) summary(stdout io.Writer, done, failures int) error {
	if !p.json && p.count > 1 {
		fmt.Fprintf(stdout, "\n%d probes, %d ok, %d failed\n", done, done-failures, failures)
	}
	if failures > 0 {
		return failed{}
	}
	return nil
}

func (p *probeCmd) result(n int, t icap.Target, pr icap.ProbeResult, closes []string) probeResult {
	r := probeResult{Probe: n, Target: t.URL, OK: pr.OK(), Conn: pr.Conn, FailedIn: pr.FailedPhase, Closes: closes}
	if tr := pr.Trace; pr.Conn != "" {
		if tr.Reused {
			age := tr.IdleAge.Seconds()
			r.IdleAge = &age
		}
		r.Retried = tr.Retried
		r.Local, r.Remote = tr.Conn.Local.String(), tr.Conn.Remote.String()
		if tr.Conn.TLSVersion != 0 {
			r.TLSVersion = tls.VersionName(tr.Conn.TLSVersion)
			r.Cipher = tls.CipherSuiteName(tr.Cipher)
		}
		r.Phases = map[string]float64{}
		for _, ph := range tr.Phases() {
			r.Phases[ph.Name] = ph.Duration.Seconds()
		}
	}
	if resp := pr.Response; resp != nil {
		r.Status, r.Reason, r.Headers = resp.StatusCode, resp.Reason, resp.Header
	}
	if pr.Err != nil {
		r.Error = explain(pr.Err, p)
	}
	return r
}

// explain turns an error into a sentence that names the failing phase and,
// where there is one, the fix.
func explain(err error, p *probeCmd) string {
	var (
		pe   *icap.PhaseError
		cve  *tls.CertificateVerificationError
		opEr *net.OpError
		se   *icap.StatusError
	)
	phase := "request"
	if errors.As(err, &pe) {
		phase = pe.Phase
	}
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return fmt.Sprintf("timeout in phase %s: no progress within --timeout %v (%v)", phase, p.timeout, err)
	case errors.As(err, &cve):
		return fmt.Sprintf("TLS verification failed: %v; trust the server's CA with --ca FILE (or --insecure for a test server)", cve.Err)
	case phase == "connect" && errors.As(err, &opEr):
		return fmt.Sprintf("unreachable: %v", err)
	case errors.As(err, &se):
		hint := ""
		if se.Code == 404 {
			hint = " (is the service name in the URL right?)"
		}
		return fmt.Sprintf("server answered %d %s%s", se.Code, se.Reason, hint)
	case phase == "pool":
		return fmt.Sprintf("no connection available: %v", err)
	}
	return fmt.Sprintf("failed in phase %s: %v", phase, err)
}

// print writes r for people; the durations come from pr's trace, r holds
// them only as the JSON's float seconds.
func (p *probeCmd) print(w io.Writer, r probeResult, pr icap.ProbeResult, headers bool) {
	fmt.Fprintf(w, "probe %d/%d %s", r.Probe, p.count, r.Target)
	switch r.Conn {
	case "fresh":
		fmt.Fprintf(w, "  fresh connection %s -> %s\n", r.Local, r.Remote)
	case "reused":
		fmt.Fprintf(w, "  reused connection %s -> %s, idle %s\n", r.Local, r.Remote, humanize.Fixed(pr.Trace.IdleAge))
	default:
		fmt.Fprintln(w)
	}
	for _, c := range r.Closes {
		fmt.Fprintf(w, "  before this probe: %s\n", c)
	}
	if r.Retried {
		fmt.Fprintln(w, "  the reused connection failed before the answer; retried on a fresh one")
	}
	if r.TLSVersion != "" {
		fmt.Fprintf(w, "  %s, %s\n", r.TLSVersion, r.Cipher)
	}
	if len(r.Phases) > 0 {
		for _, ph := range pr.Trace.Phases() {
			fmt.Fprintf(w, "  %-11s %10s\n", strings.ReplaceAll(ph.Name, "_", " "), humanize.Fixed(ph.Duration))
		}
	}
	if !r.OK {
		fmt.Fprintf(w, "  FAILED: %s\n", r.Error)
		return
	}
	fmt.Fprintf(w, "  ICAP/1.0 %d %s\n", r.Status, r.Reason)
	if headers {
		keys := make([]string, 0, len(r.Headers))
		for k := range r.Headers {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			for _, v := range r.Headers[k] {
				fmt.Fprintf(w, "    %s: %s\n", k, v)
			}
		}
		if pr.Options.MaxConnections > 0 {
			fmt.Fprintf(w, "  the server serves at most %d connections at once (Max-Connections)\n", pr.Options.MaxConnections)
		}
	}
}

func describeClose(ci icap.CloseInfo) string {
	who := "client"
	if ci.Initiator == "server" {
		who = "server"
	}
	s := fmt.Sprintf("%s closed the connection (%s, %s", who, ci.Reason, ci.How)
	if ci.Alert != "" {
		s += ", TLS alert " + ci.Alert
	}
	s += ")"
	if ci.Idle {
		s += " after it was idle " + humanize.Fixed(ci.IdleAge)
	}
	return s
}
