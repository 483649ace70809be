package bpf

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/hashicorp/go-hclog"
	"github.com/icapwatch/icapwatch/internal/testutil"
	"golang.org/x/sys/unix"
)

// tracefsChild marks the test binary run again in a mount namespace of
// its own, where it may unmount tracefs.
const tracefsChild = "ICAPWATCH_TEST_TRACEFS_CHILD"

// Two icapwatch processes in one mount namespace: the one that mounted
// tracefs unmounted it at exit from under the other. Now tracefs is
// unmounted by the process that mounted it only when no other holds the
// lock, and stays mounted otherwise. Run in a mount namespace of the
// test's own: the host's tracefs is not touched.
func TestTracefsSharedUse(t *testing.T) {
	testutil.RequireRoot(t)
	if os.Getenv(tracefsChild) == "" {
		unshare, err := exec.LookPath("unshare")
		if err != nil {
			testutil.SkipOrFail(t, "no unshare(1): %v", err)
			return
		}
		cmd := exec.Command(unshare, "--mount", "--propagation", "private", os.Args[0],
			"-test.run=^TestTracefsSharedUse$", "-test.v")
		cmd.Env = append(os.Environ(), tracefsChild+"="+filepath.Join(t.TempDir(), "tracefs.lock"))
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("in a mount namespace of its own: %v\n%s", err, out)
		}
		t.Logf("%s", out)
		return
	}
	TracefsLock = os.Getenv(tracefsChild)
	log := hclog.NewNullLogger()
	root := TracefsPaths[0]
	for _, p := range TracefsPaths {
		unix.Unmount(p, unix.MNT_DETACH) // this namespace's only
	}
	mounted := func() bool {
		_, err := FindTracefs()
		if err != nil && !errors.Is(err, ErrNoTracefs) {
			t.Fatal(err)
		}
		return err == nil
	}
	if mounted() {
		t.Fatal("tracefs still mounted after unmounting it")
	}
	use := func() *tracefsUse {
		t.Helper()
		u, err := useTracefs(log)
		if err != nil {
			t.Fatal(err)
		}
		if u.root != root {
			t.Fatalf("tracefs at %s, want %s", u.root, root)
		}
		return u
	}

	// Alone: mounted for the use, unmounted after.
	u := use()
	if !u.mounted || !mounted() {
		t.Fatal("tracefs not mounted for the use")
	}
	u.done(log)
	if mounted() {
		t.Error("tracefs left mounted by the only process that used it")
	}

	// Two uses: the first to end, which mounted it, leaves it mounted.
	first, second := use(), use()
	if !first.mounted || second.mounted {
		t.Fatalf("mounted by the first use %v, by the second %v: want the first only", first.mounted, second.mounted)
	}
	first.done(log)
	if !mounted() {
		t.Fatal("tracefs unmounted from under another use")
	}
	second.done(log)
	unix.Unmount(root, unix.MNT_DETACH)

	// `icapwatch check` holds the lock while it reads tracefs.
	check, err := lockTracefs()
	if err != nil {
		t.Fatal(err)
	}
	u = use()
	u.done(log)
	if !mounted() {
		t.Error("tracefs unmounted while check reads it")
	}
	check.Close()
	unix.Unmount(root, unix.MNT_DETACH)
}
