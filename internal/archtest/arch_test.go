package archtest

import (
	"bytes"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/icapwatch/icapwatch/internal/testutil"
)

const module = "github.com/icapwatch/icapwatch"

// rule forbids the packages that pkgs matches, and with tests their tests,
// to depend on a package that a forbid pattern matches, directly or not.
type rule struct {
	pkgs   string   // a go list pattern
	tests  bool     // their tests' imports count too (go list -test)
	forbid []string // import paths; "x/..." is x and everything under it
	why    string
}

// rules is the module's layering, one rule a line: the data flow runs
// kernel and captures → observe → correlate → exporter, and nothing
// points back.
var rules = []rule{
	{
		pkgs: module + "/bpf/...", tests: true,
		forbid: []string{module + "/agent/..."},
		why:    "the kernel side knows nothing of the agent: the agent converts bpf's events into its model",
	},
	{
		pkgs: module + "/agent/observe", tests: true,
		forbid: []string{module + "/agent", module + "/agent/correlate", module + "/bpf/...", module + "/exporter/...",
			"github.com/prometheus/..."},
		why: "the event model is the standard library's only: every source speaks it without the rest",
	},
	{
		pkgs: module + "/agent/correlate", tests: true,
		forbid: []string{module + "/agent", module + "/agent/analyze", module + "/agent/wire", module + "/bpf/...",
			module + "/exporter/...", module + "/icap/...", "github.com/prometheus/..."},
		why: "the correlator is pure: no I/O, no Prometheus, no source; the daemon and analyze drive it",
	},
	{
		pkgs: module + "/agent/wire", tests: true,
		forbid: []string{module + "/agent", module + "/agent/correlate", module + "/bpf/...", "github.com/prometheus/..."},
		why:    "the capture parser only speaks the event model",
	},
	{
		pkgs: module + "/agent/analyze", tests: true,
		forbid: []string{module + "/agent", module + "/bpf/...", module + "/exporter/...", "github.com/prometheus/..."},
		why:    "offline analysis runs the correlator on a capture, without the daemon, the kernel or Prometheus",
	},
	{
		pkgs: module + "/exporter/...", tests: true,
		forbid: []string{module + "/agent/...", module + "/bpf/..."},
		why:    "the exporter defines and serves metrics; the agent feeds it",
	},
	{
		pkgs: module + "/icap/...", tests: true,
		forbid: []string{module + "/agent/...", module + "/bpf/...", module + "/exporter/..."},
		why:    "the ICAP package stands alone: the canary and the lab use it",
	},
}

func TestImportRules(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		testutil.SkipOrFail(t, "the go command is not on PATH: %v", err)
	}
	for _, r := range rules {
		t.Run(r.pkgs, func(t *testing.T) {
			deps, importers := list(t, goTool, r)
			if len(deps) == 0 {
				t.Fatalf("%s matches no packages", r.pkgs)
			}
			for _, dep := range deps {
				for _, f := range r.forbid {
					if match(f, dep) {
						t.Errorf("%s depends on %s, imported by %s: %s",
							r.pkgs, dep, strings.Join(importers[dep], ", "), r.why)
					}
				}
			}
		})
	}
}

// list returns the packages r.pkgs depends on, themselves included, and
// for each the packages among them that import it.
func list(t *testing.T, goTool string, r rule) (deps []string, importers map[string][]string) {
	t.Helper()
	args := []string{"list", "-deps", "-f", `{{.ImportPath}}{{"\t"}}{{join .Imports " "}}`}
	if r.tests {
		args = append(args, "-test")
	}
	cmd := exec.Command(goTool, append(args, r.pkgs)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, stderr.Bytes())
	}
	importers = map[string][]string{}
	for line := range strings.SplitSeq(strings.TrimSpace(string(out)), "\n") {
		path, imports, _ := strings.Cut(line, "\t")
		path = plain(path)
		if path == "" {
			continue
		}
		// A package and its test variant: one dependency, the imports of both.
		if !slices.Contains(deps, path) {
			deps = append(deps, path)
		}
		for _, imp := range strings.Fields(imports) {
			if imp = plain(imp); !slices.Contains(importers[imp], path) {
				importers[imp] = append(importers[imp], path)
			}
		}
	}
	slices.Sort(deps)
	return deps, importers
}

// plain drops the suffix go list -test gives a package compiled for a
// test: "x [x.test]" is x.
func plain(path string) string {
	path, _, _ = strings.Cut(path, " ")
	return path
}

// match reports whether path is pattern, or under it for "x/...".
func match(pattern, path string) bool {
	if base, ok := strings.CutSuffix(pattern, "/..."); ok {
		return path == base || strings.HasPrefix(path, base+"/")
	}
	return path == pattern
}

func TestMatch(t *testing.T) {
	for _, c := range []struct {
		pattern, path string
		want          bool
	}{
		{module + "/agent/...", module + "/agent", true},
		{module + "/agent/...", module + "/agent/observe", true},
		{module + "/agent/...", module + "/agentx", false},
		{module + "/agent", module + "/agent/observe", false},
		{"github.com/prometheus/...", "github.com/prometheus/client_golang/prometheus", true},
	} {
		if got := match(c.pattern, c.path); got != c.want {
			t.Errorf("match(%q, %q) = %v, want %v", c.pattern, c.path, got, c.want)
		}
	}
}
