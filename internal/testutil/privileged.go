// Package testutil holds helpers shared by tests that need privileges or
// kernel features. Where such a test cannot run it skips, except when
// ICAPWATCH_PRIVILEGED_TESTS=require (set by .ci/run): CI runs as root on a
// kernel with BPF, tracepoints and TC, so there a skip hides a failure.
package testutil

import (
	"os"
	"testing"
)

// EnvRequire names the environment variable that turns skips into failures.
const EnvRequire = "ICAPWATCH_PRIVILEGED_TESTS"

// Required reports whether privileged tests must run rather than skip.
func Required() bool { return os.Getenv(EnvRequire) == "require" }

// SkipOrFail skips the test with the reason, or fails it when privileged
// tests are required.
func SkipOrFail(t testing.TB, format string, args ...any) {
	t.Helper()
	if Required() {
		t.Fatalf("privileged test cannot run ("+EnvRequire+"=require): "+format, args...)
		return
	}
	t.Skipf(format, args...)
}

// RequireRoot skips (or fails) a test when the process is not root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		SkipOrFail(t, "needs root")
	}
}
