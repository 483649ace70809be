package packaging

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/icapwatch/icapwatch/internal/testutil"
)

// The binary the tests pack is the real command, stamped as make build
// stamps it, with a version in git describe's form past a tag.
const (
	testVersion    = "v1.2.3-4-gabc1234-dirty"
	testPkgVersion = "1.2.3+4.gabc1234.dirty" // PackageVersion(testVersion)
	testRevision   = "abc1234def5678abc1234def5678abc1234def56"
)

// testTime stands for SOURCE_DATE_EPOCH.
var testTime = time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)

// built holds the commands the tests build, each once for all of them.
var built struct {
	mu   sync.Mutex
	dir  string
	err  error
	cmds map[string]*command
}

type command struct {
	once sync.Once
	path string
	err  error
	out  []byte
}

func TestMain(m *testing.M) {
	code := m.Run()
	if built.dir != "" {
		os.RemoveAll(built.dir)
	}
	os.Exit(code)
}

// goBuild builds a command of the module once for the package's tests,
// static (CGO_ENABLED=0, as testutil.BuildIcapwatch builds, so the two
// share Go's build cache) and without the race detector even under
// make test's -race: scripts/package and scripts/image compress tens of
// megabytes, which instrumented code does twenty times slower.
func goBuild(t *testing.T, pkg, ldflags string) string {
	t.Helper()
	goTool, err := exec.LookPath("go")
	if err != nil {
		testutil.SkipOrFail(t, "the go command is not on PATH: %v", err)
	}
	built.mu.Lock()
	if built.dir == "" && built.err == nil {
		built.dir, built.err = os.MkdirTemp("", "icapwatch-packaging-")
		if built.err == nil {
			// Open to every user, so that a test can run a binary as another.
			built.err = os.Chmod(built.dir, 0o755)
		}
		built.cmds = map[string]*command{}
	}
	if built.err != nil {
		built.mu.Unlock()
		t.Fatal(built.err)
	}
	c := built.cmds[pkg]
	if c == nil {
		c = &command{path: filepath.Join(built.dir, filepath.Base(pkg))}
		built.cmds[pkg] = c
	}
	built.mu.Unlock()
	c.once.Do(func() {
		cmd := exec.Command(goTool, "build", "-o", c.path, "-ldflags", ldflags, pkg)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		c.out, c.err = cmd.CombinedOutput()
	})
	if c.err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, c.err, c.out)
	}
	return c.path
}

// stampedBinary is icapwatch with the version flags of the Makefile.
func stampedBinary(t *testing.T) string {
	t.Helper()
	const v = "github.com/icapwatch/icapwatch/internal/version"
	return goBuild(t, "github.com/icapwatch/icapwatch/cmd/icapwatch",
		"-X "+v+".Version="+testVersion+" -X "+v+".Revision="+testRevision)
}

// runProgram runs scripts/NAME, as make does, at testTime
// (SOURCE_DATE_EPOCH), and returns its standard output.
func runProgram(t *testing.T, name string, args ...string) string {
	t.Helper()
	prog := goBuild(t, "github.com/icapwatch/icapwatch/scripts/"+name, "")
	cmd := exec.Command(prog, args...)
	cmd.Env = append(os.Environ(), "SOURCE_DATE_EPOCH="+strconv.FormatInt(testTime.Unix(), 10))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("scripts/%s %v: %v\n%s", name, args, err, stderr.Bytes())
	}
	return string(out)
}

// tool finds a command the test needs, or skips (fails in CI).
func tool(t *testing.T, name string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		testutil.SkipOrFail(t, "%s not found (make deps installs it): %v", name, err)
	}
	return path
}

// output runs a command and returns its standard output; a failure shows
// both outputs.
func output(t *testing.T, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s%s", name, args, err, out, stderr.String())
	}
	return string(out)
}
