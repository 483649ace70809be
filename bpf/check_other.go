//go:build !linux

package bpf

import "runtime"

// Check reports that the kernel side needs Linux.
func Check(Config) Report {
	r := Report{CanRun: true, Kernel: runtime.GOOS}
	r.add("linux", false, false, ErrNotSupported.Error())
	return r
}
