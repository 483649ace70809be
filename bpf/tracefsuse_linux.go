package bpf

import (
	"errors"
	"os"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"
)

// TracefsLock is the file icapwatch processes lock while they read or
// attach through tracefs: shared while in use, exclusive to unmount.
var TracefsLock = "/run/icapwatch-tracefs.lock"

// tracefsUse is one process's use of tracefs, from finding it (mounting
// it where it is not) to done. The probes need tracefs only while they
// load and attach; after, a tracefs this process mounted is unmounted
// unless another icapwatch process (an agent starting, `icapwatch
// check`) holds the lock too: then it stays mounted, rather than go from
// under the other.
type tracefsUse struct {
	root    string
	mounted bool
	lock    *os.File // nil: no lock could be had, and nothing is unmounted
}

func useTracefs(log hclog.Logger) (*tracefsUse, error) {
	u := &tracefsUse{}
	var err error
	if u.lock, err = lockTracefs(); err != nil {
		log.Debug("no tracefs lock: a tracefs mounted here stays mounted", "error", err)
	}
	if u.root, u.mounted, err = ensureTracefs(); err != nil {
		u.done(log)
		return nil, err
	}
	if u.mounted {
		log.Info("mounted tracefs", "path", u.root)
	}
	return u, nil
}

// done ends the use: a tracefs this process mounted is unmounted when no
// other icapwatch process uses it.
func (u *tracefsUse) done(log hclog.Logger) {
	if u.lock == nil {
		return
	}
	defer u.lock.Close() // and with it the lock
	if !u.mounted {
		return
	}
	// Shared to exclusive is not atomic, which does not matter: another
	// process that takes the lock in between finds tracefs mounted and
	// does not unmount it, and it is unmounted only if none holds it.
	err := unix.Flock(int(u.lock.Fd()), unix.LOCK_EX|unix.LOCK_NB)
	switch {
	case errors.Is(err, unix.EWOULDBLOCK):
		log.Info("tracefs stays mounted: another icapwatch process uses it", "path", u.root)
	case err != nil:
		log.Warn("tracefs stays mounted", "path", u.root, "error", err)
	default:
		if err := unix.Unmount(u.root, unix.MNT_DETACH); err != nil {
			log.Warn("unmount tracefs", "path", u.root, "error", err)
		}
	}
}

// lockTracefs takes the lock shared, waiting while a process unmounts;
// closing the file lets it go.
func lockTracefs() (*os.File, error) {
	f, err := os.OpenFile(TracefsLock, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_SH); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}
