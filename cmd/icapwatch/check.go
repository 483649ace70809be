package main

import (
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/alecthomas/kingpin/v2"
	"github.com/hashicorp/go-hclog"
	"github.com/icapwatch/icapwatch/bpf"
)

// checkCmd is `icapwatch check`: what this kernel offers, tried for real.
type checkCmd struct {
	cmd  *kingpin.CmdClause
	json bool
}

func registerCheck(app *kingpin.Application) *checkCmd {
	c := &checkCmd{cmd: app.Command("check", "Show what this kernel offers (BTF, tracefs, ring buffer, TCX, kprobes, each hook) by loading and attaching every program on loopback, then detaching. Exit 0 when the agent can run.")}
	flag(c.cmd, "check", "json", "Print the report as JSON.").BoolVar(&c.json)
	return c
}

func (c *checkCmd) run(log hclog.Logger, stdout io.Writer) error {
	cfg := bpf.DefaultConfig()
	cfg.Logger = log
	r := bpf.Check(cfg)
	if c.json {
		printJSON(stdout, r)
	} else {
		printReport(stdout, r)
	}
	if !r.CanRun {
		return failed{}
	}
	return nil
}

func printReport(w io.Writer, r bpf.Report) {
	fmt.Fprintf(w, "kernel %s\n\n", r.Kernel)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "CHECK\tRESULT\tDETAIL")
	for _, it := range r.Items {
		res := "ok"
		switch {
		case !it.OK && it.Optional:
			res = "missing (optional)"
		case !it.OK:
			res = "FAILED"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\n", it.Name, res, it.Detail)
	}
	tw.Flush()
	fmt.Fprintln(w)
	if r.CanRun {
		fmt.Fprintf(w, "the agent can run here (events through %s)\n", r.Output)
		return
	}
	fmt.Fprintln(w, "the agent cannot run here:")
	for _, why := range r.Reasons {
		fmt.Fprintf(w, "  - %s\n", why)
	}
}
