package testutil

import (
	"testing"
)

// recordingTB notes whether the helper skipped or failed; unlike testing.T
// its Fatalf and Skipf return.
type recordingTB struct {
	testing.TB
	skipped, failed bool
}

func (r *recordingTB) Helper()               {}
func (r *recordingTB) Skipf(string, ...any)  { r.skipped = true }
func (r *recordingTB) Fatalf(string, ...any) { r.failed = true }

func TestSkipOrFail(t *testing.T) {
	for _, tc := range []struct {
		env             string
		skipped, failed bool
	}{
		{"", true, false},
		{"require", false, true},
		{"no", true, false},
	} {
		t.Setenv(EnvRequire, tc.env)
		r := &recordingTB{TB: t}
		SkipOrFail(r, "no %s here", "kernel")
		if r.skipped != tc.skipped || r.failed != tc.failed {
			t.Errorf("%s=%q: skipped %v failed %v", EnvRequire, tc.env, r.skipped, r.failed)
		}
	}
}
