package bpf

import (
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/features"
	"golang.org/x/sys/unix"
)

// Check loads every program and attaches every hook for real, on the
// loopback interface, then takes them off again. When the programs do not
// load together, it loads each alone to say which one fails.
func Check(cfg Config) Report {
	r := Report{CanRun: true}
	var uts unix.Utsname
	if unix.Uname(&uts) == nil {
		r.Kernel = unix.ByteSliceToString(uts.Release[:])
	}
	r.checkBTF(kernelBTF)
	r.checkTracefs()
	if m, err := isMountPoint("/sys/fs/bpf"); err == nil && m {
		r.add("bpffs", true, true, "/sys/fs/bpf (not needed: nothing is pinned)")
	} else {
		r.add("bpffs", true, true, "not mounted (not needed: nothing is pinned)")
	}
	perfErr := features.HaveMapType(ebpf.PerfEventArray)
	r.add("perf_event_array", perfErr == nil, false, detail(perfErr, "event output"))
	ringErr := features.HaveMapType(ebpf.RingBuf)
	r.add("ring_buffer", ringErr == nil, true, detail(ringErr, "events through the BPF ring buffer"))

	cfg.Interfaces = []string{"lo"}
	cfg.attachLoopbackIngress = true
	p, err := Load(cfg)
	if err != nil {
		// The verifier's log follows the first line; the lines of each
		// program below end with its last.
		first, _, _ := strings.Cut(err.Error(), "\n")
		r.add("load", false, false, first)
		r.checkPrograms(cfg)
		return r
	}
	r.Output = p.Output()
	attachErr := p.attach(cfg)
	r.Hooks = p.Hooks()
	for _, h := range r.Hooks {
		if h.Name == HookTCIngress && h.Mode != "" {
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
	if attachErr != nil {
		r.add("attach", false, false, attachErr.Error())
	}
	if err := p.Close(); err != nil {
		r.add("detach", false, false, err.Error())
	}
	return r
}

// checkTracefs reports where tracefs is. An agent that mounted tracefs
// to start unmounts it after, unless another icapwatch process holds the
// lock, as check does while it looks (and its own Load after).
func (r *Report) checkTracefs() {
	if lock, err := lockTracefs(); err == nil {
		defer lock.Close()
	}
	switch root, err := FindTracefs(); {
	case err == nil:
		r.add("tracefs", true, false, root)
	case errors.Is(err, ErrNoTracefs):
		r.add("tracefs", true, false, "not mounted; the agent mounts it at "+TracefsPaths[0])
	default:
		r.add("tracefs", false, false, err.Error())
	}
}

// checkBTF reports the kernel BTF the kprobes would take their struct
// offsets from, found by search as the loader finds it: the file, or why
// there is none that serves; and whether the socket hooks can tell the
// network namespaces of sockets apart with it.
func (r *Report) checkBTF(search func() (*btf.Spec, string, error)) {
	spec, from, err := search()
	if err != nil {
		r.add("btf", false, true, fmt.Sprintf("no kernel BTF: the kprobes cannot find their struct offsets (%v)", err))
		r.add("netns", false, true, "no kernel BTF: flows of other network namespaces with the same addresses are not told apart")
		return
	}
	var c icapwatchConfig
	if err := netnsOffsets(spec, &c); err != nil {
		r.add("netns", false, true, fmt.Sprintf("%s: %v: flows of other network namespaces with the same addresses are not told apart", from, err))
	} else {
		r.add("netns", true, true, "sockets' network namespaces from "+from)
	}
	if err := kprobeOffsets(spec, &c); err != nil {
		r.add("btf", false, true, fmt.Sprintf("%s: the kprobes cannot find their struct offsets: %v", from, err))
		return
	}
	r.add("btf", true, true, "struct offsets for the kprobes from "+from)
}

// checkPrograms loads each program of the baseline object alone, with the
// maps, and reports one line for each.
func (r *Report) checkPrograms(cfg Config) {
	spec, specs, err := loadSpec(OutputPerf)
	if err != nil {
		r.add("object", false, false, err.Error())
		return
	}
	specs.Flows.MaxEntries = cfg.MaxFlows
	hooks := map[string]string{}
	var names []string
	// The report's order.
	for _, ph := range []struct {
		prog *ebpf.ProgramSpec
		hook string
	}{
		{specs.IcapwatchIngress, HookTCIngress},
		{specs.IcapwatchEgress, HookTCEgress},
		{specs.IcapwatchState, HookSetState},
		{specs.IcapwatchRetransmit, HookRetransmitSKB},
		{specs.IcapwatchSendLength, HookSendLength},
		{specs.IcapwatchSendmsg, HookSendmsg},
		{specs.IcapwatchCleanupRbuf, HookCleanupRbuf},
	} {
		hooks[ph.prog.Name] = ph.hook
		names = append(names, ph.prog.Name)
	}
	var others []string // none today
	for name := range spec.Programs {
		if hooks[name] == "" {
			hooks[name] = name
			others = append(others, name)
		}
	}
	sort.Strings(others)
	for _, name := range append(names, others...) {
		one := spec.Copy()
		for other := range one.Programs {
			if other != name {
				delete(one.Programs, other)
			}
		}
		hook := hooks[name]
		optional := spec.Programs[name].Type == ebpf.Kprobe || name == specs.IcapwatchSendLength.Name
		coll, err := ebpf.NewCollection(one)
		if err != nil {
			r.add("load "+hook, false, optional, fmt.Sprintf("program %s: %v", name, needs(err, capsLoad)))
			continue
		}
		coll.Close()
		r.add("load "+hook, true, optional, "program "+name+" loads")
	}
}

func detail(err error, ok string) string {
	if err == nil {
		return ok
	}
	if errors.Is(err, ebpf.ErrNotSupported) {
		return "not supported by this kernel"
	}
	return needs(err, "CAP_BPF, or CAP_SYS_ADMIN on kernels before 5.8").Error()
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
