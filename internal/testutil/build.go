package testutil

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// BuildIcapwatch builds the icapwatch command into a directory of the test
// and returns its path, for tests that run it as a user would: its own
// process, signals, exit codes. The directory and its parent are opened
// to every user (0755), so that a test can run the binary as another user.
func BuildIcapwatch(t testing.TB) string {
	t.Helper()
	goTool, err := exec.LookPath("go")
	if err != nil {
		SkipOrFail(t, "the go command is not on PATH: %v", err)
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "icapwatch")
	cmd := exec.Command(goTool, "build", "-o", bin, "github.com/icapwatch/icapwatch/cmd/icapwatch")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build icapwatch: %v\n%s", err, out)
	}
	for _, d := range []string{dir, filepath.Dir(dir)} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return bin
}
