// Command icapwatch watches ICAP-over-TLS scanning traffic. See README.md.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"github.com/alecthomas/kingpin/v2"

	"github.com/icapwatch/icapwatch/internal/logging"
	"github.com/icapwatch/icapwatch/internal/version"
)

// Exit codes: 0 success, 1 the work failed, 2 bad usage or configuration.
const (
	exitOK    = 0
	exitFail  = 1
	exitUsage = 2
)

func main() {
	// SIGHUP too: a closed terminal or a service manager's hang-up must
	// not end the agent without taking its hooks off.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// flagger is what both the application and its commands offer for flags.
type flagger interface {
	Flag(name, help string) *kingpin.FlagClause
}

// flag declares a flag with its environment variable: ICAPWATCH_, the
// command, then the flag name in upper case with . and - as _.
func flag(f flagger, cmd, name, help string) *kingpin.FlagClause {
	env := "ICAPWATCH_"
	if cmd != "" {
		env += cmd + "_"
	}
	env += strings.NewReplacer(".", "_", "-", "_").Replace(name)
	return f.Flag(name, help).Envar(strings.ToUpper(env))
}

// wholeNumber is an int flag that takes only a whole number: kingpin's
// own reads "1.5" as 1 and says "strconv.ParseFloat" for "abc". Ranges
// are checked with the rest of the configuration, which names the flag.
type wholeNumber struct{ p *int }

func (w wholeNumber) Set(s string) error {
	n, err := strconv.Atoi(strings.TrimSpace(s))
	if err != nil {
		return errors.New("want a whole number")
	}
	*w.p = n
	return nil
}

func (w wholeNumber) String() string { return strconv.Itoa(*w.p) }

// intVar makes f a whole-number flag stored in p.
func intVar(f *kingpin.FlagClause, p *int) { f.SetValue(wholeNumber{p}) }

// stdinFile stands for "-", standard input, among the arguments: kingpin
// reads a lone "-" as an empty value.
const stdinFile = "/dev/stdin"

// usageError is a configuration problem found after parsing; run prints it
// and exits 2.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usagef(format string, a ...any) error { return usageError{fmt.Sprintf(format, a...)} }

// exitPanic carries kingpin's exit status out of its Terminate hook, so that
// --help and --version return from run instead of exiting the process.
type exitPanic int

// run parses args and runs one subcommand. It returns the exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) (code int) {
	app := kingpin.New("icapwatch", "eBPF observability for ICAP-over-TLS scanning: request/answer gaps, stalls and why.")
	app.UsageWriter(stdout).ErrorWriter(stderr)
	app.Terminate(func(c int) { panic(exitPanic(c)) })
	app.HelpFlag.Short('h')
	app.Version(version.String())
	defer func() {
		if r := recover(); r != nil {
			c, ok := r.(exitPanic)
			if !ok {
				panic(r)
			}
			code = int(c)
		}
	}()

	logLevel := flag(app, "", "log.level", "Log level: "+strings.Join(logging.Levels, ", ")+".").Default("info").String()
	logFormat := flag(app, "", "log.format", "Log format: text or json.").Default("text").String()

	versionCmd := app.Command("version", "Print build information.")
	versionJSON := flag(versionCmd, "version", "json", "Print JSON.").Bool()
	lab := registerLab(app)
	probe := registerProbe(app)
	check := registerCheck(app)
	agentC := registerAgent(app)
	demo := registerDemo(app)
	work := registerWorkload(app)
	analyze := registerAnalyze(app)

	args = slices.Clone(args)
	for i, a := range args {
		if a == "-" {
			args[i] = stdinFile
		}
	}
	cmd, err := app.Parse(args)
	if err != nil {
		fmt.Fprintf(stderr, "icapwatch: error: %v; try --help\n", nameBadFlag(app, args, err))
		return exitUsage
	}
	logger, err := logging.New("icapwatch", *logLevel, *logFormat, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "icapwatch: error: %v\n", err)
		return exitUsage
	}

	switch cmd {
	case versionCmd.FullCommand():
		if *versionJSON {
			return printJSON(stdout, version.Info())
		}
		fmt.Fprintln(stdout, version.String())
		return exitOK
	case lab.cmd.FullCommand():
		return finish(stderr, lab.run(ctx, logger.Named("lab"), stdout))
	case probe.cmd.FullCommand():
		return finish(stderr, probe.run(ctx, stdout))
	case analyze.cmd.FullCommand():
		return finish(stderr, analyze.run(stdout, stderr))
	case demo.cmd.FullCommand():
		return finish(stderr, demo.run(ctx, logger, stdout))
	case work.cmd.FullCommand():
		return finish(stderr, work.run(ctx, logger.Named("workload")))
	case agentC.cmd.FullCommand():
		return finish(stderr, agentC.run(ctx, logger))
	case check.cmd.FullCommand():
		return finish(stderr, check.run(logger.Named("check"), stdout))
	}
	return exitUsage
}

// nameBadFlag puts the flag's name on a value error: kingpin reports
// `strconv.ParseInt: parsing "x"` without saying which flag held "x".
func nameBadFlag(app *kingpin.Application, args []string, err error) error {
	pc, perr := app.ParseContext(args)
	if perr != nil {
		return err
	}
	for _, el := range pc.Elements {
		fc, ok := el.Clause.(*kingpin.FlagClause)
		if !ok || el.Value == nil {
			continue
		}
		if verr := fc.Model().Value.Set(*el.Value); verr != nil {
			return fmt.Errorf("--%s %q: %w", fc.Model().Name, *el.Value, verr)
		}
	}
	// Otherwise the bad value may have come from a flag's environment
	// variable.
	m := app.Model()
	flags := m.Flags
	for _, c := range m.Commands {
		flags = append(flags, c.Flags...)
	}
	for _, f := range flags {
		if v, ok := os.LookupEnv(f.Envar); ok && f.Envar != "" {
			if verr := f.Value.Set(v); verr != nil {
				return fmt.Errorf("$%s (--%s) %q: %w", f.Envar, f.Name, v, verr)
			}
		}
	}
	return err
}

// finish maps a command's error to the exit code and says what went wrong.
func finish(stderr io.Writer, err error) int {
	switch e := err.(type) {
	case nil:
		return exitOK
	case usageError:
		fmt.Fprintf(stderr, "icapwatch: error: %s\n", e.msg)
		return exitUsage
	case failed:
		return exitFail // the command already said why
	default:
		fmt.Fprintf(stderr, "icapwatch: error: %v\n", err)
		return exitFail
	}
}

func printJSON(w io.Writer, v any) int {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return exitFail
	}
	return exitOK
}

// failed is returned by a command that reported its failure itself.
type failed struct{}

func (failed) Error() string { return "failed" }
