package main

import (
	"encoding/json"
	"errors"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/icapwatch/icapwatch/internal/testutil"
)

// TestCheckFailsUnprivileged runs the built binary as nobody, with no
// capabilities: `icapwatch check` cannot load anything, exits 1 and names
// what fails, program by program, with the capability that is missing.
func TestCheckFailsUnprivileged(t *testing.T) {
	testutil.RequireRoot(t)
	bin := testutil.BuildIcapwatch(t) // readable by every user
	dir := filepath.Dir(bin)
	check := func(args ...string) (string, int) {
		t.Helper()
		cmd := exec.Command(bin, args...)
		cmd.Dir = dir
		cmd.Env = []string{"PATH=/usr/bin:/bin", "HOME=" + dir}
		const nobody = 65534
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody, Groups: []uint32{}}}
		out, err := cmd.CombinedOutput()
		var ee *exec.ExitError
		switch {
		case err == nil:
			return string(out), 0
		case errors.As(err, &ee):
			return string(out), ee.ExitCode()
		}
		t.Fatalf("icapwatch %s: %v", strings.Join(args, " "), err)
		return "", 0
	}

	out, code := check("check")
	if code != 1 {
		t.Fatalf("check as nobody: exit %d, want 1\n%s", code, out)
	}
	for _, want := range []string{
		"the agent cannot run here:",
		"load tc_ingress", // one line per program, as the combined load failed
		"load tracepoint/sock/inet_sock_set_state",
		"FAILED",
		"CAP_BPF", // the missing capability is named
	} {
		if !strings.Contains(out, want) {
			t.Errorf("check output lacks %q:\n%s", want, out)
		}
	}

	out, code = check("check", "--json")
	var r struct {
		CanRun  bool     `json:"can_run"`
		Reasons []string `json:"reasons"`
	}
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("check --json: %v\n%s", err, out)
	}
	if code != 1 || r.CanRun || len(r.Reasons) == 0 {
		t.Errorf("check --json as nobody: exit %d, can_run %v, reasons %q", code, r.CanRun, r.Reasons)
	}
}
