package bpf

import (
	"errors"
	"os"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/features"
	"golang.org/x/sys/unix"
)

// Check loads every program and attaches every hook for real, on the
// loopback interface, then takes them off again.
func Check(cfg Config) Report {
	r := Report{CanRun: true}
	var uts unix.Utsname
	if unix.Uname(&uts) == nil {
		r.Kernel = unix.ByteSliceToString(uts.Release[:])
	}
	if _, err := os.Stat("/sys/kernel/btf/vmlinux"); err == nil {
		r.add("btf", true, true, "/sys/kernel/btf/vmlinux")
	} else {
		r.add("btf", false, true, "no kernel BTF: the kprobes cannot find struct offsets")
	}
	if root, err := FindTracefs(); err == nil {
		r.add("tracefs", true, false, root)
	} else {
		r.add("tracefs", true, false, "not mounted; the agent mounts it at "+TracefsPaths[0])
	}
	if m, err := isMountPoint("/sys/fs/bpf"); err == nil && m {
		r.add("bpffs", true, true, "/sys/fs/bpf (not needed: nothing is pinned)")
	} else {
		r.add("bpffs", true, true, "not mounted (not needed: nothing is pinned)")
	}
	r.add("perf_event_array", features.HaveMapType(ebpf.PerfEventArray) == nil, false, "event output")
	ringErr := features.HaveMapType(ebpf.RingBuf)
	r.add("ring_buffer", ringErr == nil, true, detail(ringErr, "events through the BPF ring buffer"))

	cfg.Interfaces = []string{"lo"}
	cfg.attachLoopbackIngress = true
	p, err := Open(cfg)
	if err != nil {
		r.add("load_and_attach", false, false, err.Error())
		return r
	}
	r.Output = p.Output()
	r.Hooks = p.Hooks()
	for _, h := range r.Hooks {
		if h.Name == HookTCIngress {
			r.add("tcx", h.Mode == TCModeTCX, true, "TC mode "+h.Mode)
		}
	}
	for _, h := range r.Hooks {
		why := h.Mode
		if h.Error != "" {
			why = h.Error
		}
		r.add(h.Name, h.Attached, h.Optional, why)
	}
	if err := p.Close(); err != nil {
		r.add("detach", false, false, err.Error())
	}
	return r
}

func detail(err error, ok string) string {
	if err == nil {
		return ok
	}
	if errors.Is(err, ebpf.ErrNotSupported) {
		return "not supported by this kernel"
	}
	return err.Error()
}

func isMountPoint(path string) (bool, error) {
	var st, parent unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return false, err
	}
	if err := unix.Stat(path+"/..", &parent); err != nil {
		return false, err
	}
	return st.Dev != parent.Dev, nil
}
