package bpf

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"runtime"

	"github.com/cilium/ebpf/btf"
	"golang.org/x/sys/unix"
)

// ensureTracefs finds tracefs or mounts it at the standard place.
func ensureTracefs() (root string, mounted bool, err error) {
	root, err = FindTracefs()
	if err == nil {
		return root, false, nil
	}
	if !errors.Is(err, ErrNoTracefs) {
		return "", false, err // there, but not for us
	}
	root = TracefsPaths[0]
	if err := unix.Mount("nodev", root, "tracefs", 0, ""); err != nil {
		if errors.Is(err, unix.EPERM) {
			return "", false, fmt.Errorf("%w (mounting it needs CAP_SYS_ADMIN)", ErrNoTracefs)
		}
		return "", false, fmt.Errorf("%w (mount failed: %v)", ErrNoTracefs, err)
	}
	return root, true, nil
}

// tracepointSettings takes the tracepoint field offsets from tracefs. An
// optional tracepoint this kernel does not have (sock:sock_send_length
// came in 6.x), or whose fields are not as expected, leaves its offsets at
// offNone (haveSendLength says so), and missing says why, by hook name.
func tracepointSettings(root string) (c icapwatchConfig, missing map[string]string, err error) {
	type want struct {
		name     string
		dst      *uint16
		sizes    []int
		optional bool
	}
	tuple := func(o *icapwatchTupleOffsets, familyOptional bool) []want {
		return []want{
			{"skaddr", &o.Skaddr, []int{8}, false},
			{"sport", &o.Sport, []int{2}, false},
			{"dport", &o.Dport, []int{2}, false},
			{"family", &o.Family, []int{2}, familyOptional},
			{"saddr", &o.Saddr, []int{4}, false},
			{"daddr", &o.Daddr, []int{4}, false},
			{"saddr_v6", &o.SaddrV6, []int{16}, false},
			{"daddr_v6", &o.DaddrV6, []int{16}, false},
		}
	}
	read := func(system, event string, fields []want) error {
		format, err := ReadFormat(root, system, event)
		if err != nil {
			return err
		}
		for _, w := range fields {
			*w.dst = offNone
			f, err := format.Field(w.name)
			if err != nil {
				if w.optional {
					continue
				}
				return err
			}
			if !containsInt(w.sizes, f.Size) || f.Offset < 0 || f.Offset+f.Size > 0xfffe {
				return fmt.Errorf("field %s has size %d at offset %d, want size %v",
					w.name, f.Size, f.Offset, w.sizes)
			}
			*w.dst = uint16(f.Offset)
		}
		return nil
	}
	for _, tp := range []struct {
		hook          string
		system, event string
		fields        []want
		optional      bool
	}{
		{HookSetState, "sock", "inet_sock_set_state", append(tuple(&c.Ss, false),
			want{"oldstate", &c.SsOldstate, []int{4}, false},
			want{"newstate", &c.SsNewstate, []int{4}, false},
			want{"protocol", &c.SsProtocol, []int{1, 2}, false}), false},
		{HookRetransmitSKB, "tcp", "tcp_retransmit_skb", tuple(&c.Rt, true), false},
		{HookSendLength, "sock", "sock_send_length", []want{
			{"sk", &c.SlSk, []int{8}, false},
			{"protocol", &c.SlProtocol, []int{2}, false},
			{"ret", &c.SlRet, []int{4}, false}}, true},
	} {
		err := read(tp.system, tp.event, tp.fields)
		switch {
		case err == nil:
		case tp.optional:
			for _, w := range tp.fields {
				*w.dst = offNone
			}
			if missing == nil {
				missing = map[string]string{}
			}
			if errors.Is(err, fs.ErrNotExist) {
				missing[tp.hook] = "this kernel has no tracepoint " + tp.system + ":" + tp.event
			} else {
				missing[tp.hook] = err.Error()
			}
		default:
			return c, nil, fmt.Errorf("tracepoint %s/%s: %w", tp.system, tp.event, err)
		}
	}
	return c, missing, nil
}

// haveSendLength says whether settings hold sock:sock_send_length's offsets.
func haveSendLength(c *icapwatchConfig) bool { return c.SlRet != offNone }

const offNone = 0xffff

func containsInt(list []int, v int) bool {
	for _, x := range list {
		if x == v {
			return true
		}
	}
	return false
}

// kprobeSettings fills the pt_regs and sock_common offsets from the
// kernel's BTF. It returns the file the BTF came from, or why kprobes
// cannot run.
func kprobeSettings(c *icapwatchConfig, loadBTF func() (*btf.Spec, string, error)) (from, reason string) {
	c.KpArg1, c.KpArg2, c.KpArg3 = offNone, offNone, offNone
	if _, err := os.Stat("/sys/bus/event_source/devices/kprobe"); err != nil {
		if root, err := FindTracefs(); err != nil || !exists(root+"/kprobe_events") {
			return "", "this kernel has no kprobes"
		}
	}
	spec, from, err := loadBTF()
	if err != nil {
		return "", fmt.Sprintf("no kernel BTF for struct sock_common offsets: %v", err)
	}
	if err := kprobeOffsets(spec, c); err != nil {
		return "", fmt.Sprintf("kernel BTF at %s: %v", from, err)
	}
	return from, ""
}

// kprobeOffsets fills what the kprobes read from the kernel's structs:
// where struct pt_regs holds the first three arguments, and the members
// of struct sock_common.
func kprobeOffsets(spec *btf.Spec, c *icapwatchConfig) error {
	args, err := argOffsets(spec, runtime.GOARCH)
	if err != nil {
		return err
	}
	for _, f := range []struct {
		name string
		dst  *uint16
	}{
		{"skc_daddr", &c.SkDaddr}, {"skc_rcv_saddr", &c.SkRcvSaddr}, {"skc_dport", &c.SkDport},
		{"skc_num", &c.SkNum}, {"skc_family", &c.SkFamily}, {"skc_v6_daddr", &c.SkV6Daddr},
		{"skc_v6_rcv_saddr", &c.SkV6RcvSaddr}, {"skc_state", &c.SkState},
	} {
		off, err := memberOffset(spec, "sock_common", f.name)
		if err != nil {
			return err
		}
		*f.dst = off
	}
	c.KpArg1, c.KpArg2, c.KpArg3 = args[0], args[1], args[2]
	return nil
}

// netnsSettings fills where a socket's network namespace is (struct
// sock_common's skc_net, a possible_net_t holding a struct net pointer,
// and struct net's ns.inum) and the inode of this thread's namespace,
// the one whose interfaces the TC programs watch. Without them, it says
// why, and the socket hooks take every namespace's sockets for one.
func netnsSettings(c *icapwatchConfig, loadBTF func() (*btf.Spec, string, error)) (reason string) {
	c.SkNet, c.NetInum, c.Netns = offNone, offNone, 0
	spec, from, err := loadBTF()
	if err != nil {
		return fmt.Sprintf("no kernel BTF for a socket's network namespace: %v", err)
	}
	if err := netnsOffsets(spec, c); err != nil {
		return fmt.Sprintf("kernel BTF at %s: %v", from, err)
	}
	var st unix.Stat_t
	if err := unix.Stat("/proc/thread-self/ns/net", &st); err != nil {
		c.SkNet, c.NetInum = offNone, offNone
		return fmt.Sprintf("own network namespace: %v", err)
	}
	c.Netns = uint32(st.Ino)
	return ""
}

// netnsOffsets finds the two offsets of netnsSettings in the kernel's BTF.
func netnsOffsets(spec *btf.Spec, c *icapwatchConfig) error {
	skNet, err := memberPath(spec, "sock_common", "skc_net", "net")
	if err != nil {
		return err
	}
	inum, err := memberPath(spec, "net", "ns", "inum")
	if err != nil {
		return err
	}
	c.SkNet, c.NetInum = skNet, inum
	return nil
}

// memberPath is the byte offset of a member inside a member of a struct
// (typ.outer.inner), through the outer member's type and its typedefs.
func memberPath(spec *btf.Spec, typ, outer, inner string) (uint16, error) {
	var s *btf.Struct
	if err := spec.TypeByName(typ, &s); err != nil {
		return 0, fmt.Errorf("kernel BTF: struct %s: %w", typ, err)
	}
	m, off, ok := findMember(s.Members, outer, 0)
	if !ok {
		return 0, fmt.Errorf("kernel BTF: struct %s has no member %s", typ, outer)
	}
	in, ok := btf.UnderlyingType(m.Type).(*btf.Struct)
	if !ok {
		return 0, fmt.Errorf("kernel BTF: %s.%s is not a struct", typ, outer)
	}
	if _, off, ok = findMember(in.Members, inner, off); !ok {
		return 0, fmt.Errorf("kernel BTF: %s.%s has no member %s", typ, outer, inner)
	}
	return uint16(off / 8), nil
}

// onceBTF is kernelBTF, loaded at most once however often it is asked
// for: the loader's settings take several things from it.
func onceBTF() func() (*btf.Spec, string, error) {
	var (
		done bool
		spec *btf.Spec
		from string
		err  error
	)
	return func() (*btf.Spec, string, error) {
		if !done {
			spec, from, err = kernelBTF()
			done = true
		}
		return spec, from, err
	}
}

// kernelBTF loads the running kernel's BTF and says from which file:
// /sys/kernel/btf/vmlinux, else a vmlinux carrying BTF where libbpf and
// cilium/ebpf's btf.LoadKernelSpec look for one (kernels built without
// CONFIG_DEBUG_INFO_BTF, such as 4.19, may have one under /boot).
func kernelBTF() (*btf.Spec, string, error) {
	var uts unix.Utsname
	if err := unix.Uname(&uts); err != nil {
		return nil, "", fmt.Errorf("uname: %w", err)
	}
	return findKernelBTF(btfPaths(unix.ByteSliceToString(uts.Release[:])), btf.LoadSpec)
}

// btfPaths are where kernel BTF is looked for, in order: libbpf's list
// (btf__load_vmlinux_btf), which cilium/ebpf's btf.LoadKernelSpec uses too.
func btfPaths(release string) []string {
	paths := []string{"/sys/kernel/btf/vmlinux"}
	for _, p := range []string{
		"/boot/vmlinux-%s",
		"/lib/modules/%s/vmlinux-%[1]s",
		"/lib/modules/%s/build/vmlinux",
		"/usr/lib/modules/%s/kernel/vmlinux",
		"/usr/lib/debug/boot/vmlinux-%s",
		"/usr/lib/debug/boot/vmlinux-%s.debug",
		"/usr/lib/debug/lib/modules/%s/vmlinux",
	} {
		paths = append(paths, fmt.Sprintf(p, release))
	}
	return paths
}

// findKernelBTF loads the first of paths that load does, skipping those
// that do not exist and, as libbpf does, those that carry no BTF (a
// vmlinux built without it). The error names each file that was there.
func findKernelBTF(paths []string, load func(string) (*btf.Spec, error)) (*btf.Spec, string, error) {
	var errs []error
	for _, path := range paths {
		spec, err := load(path)
		if err == nil {
			return spec, path, nil
		}
		if !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, fmt.Errorf("%s: %w", path, err))
		}
	}
	if len(errs) == 0 {
		return nil, "", fmt.Errorf("none of /sys/kernel/btf/vmlinux and a vmlinux under /boot, /lib/modules or /usr/lib/debug: %w",
			btf.ErrNotSupported)
	}
	return nil, "", errors.Join(errs...)
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// argOffsets gives where struct pt_regs holds the first three arguments.
func argOffsets(spec *btf.Spec, arch string) ([3]uint16, error) {
	var out [3]uint16
	switch arch {
	case "amd64": // System V ABI: rdi, rsi, rdx
		for i, reg := range []string{"di", "si", "dx"} {
			off, err := memberOffset(spec, "pt_regs", reg)
			if err != nil {
				return out, err
			}
			out[i] = off
		}
	case "arm64": // AAPCS64: x0, x1, x2 are regs[0..2]
		off, err := memberOffset(spec, "pt_regs", "regs")
		if err != nil {
			return out, err
		}
		out = [3]uint16{off, off + 8, off + 16}
	default:
		return out, fmt.Errorf("kprobe arguments are not mapped for %s", arch)
	}
	return out, nil
}

// memberOffset finds a member of a struct, looking into anonymous unions
// and structs, and returns its byte offset.
func memberOffset(spec *btf.Spec, typ, member string) (uint16, error) {
	var s *btf.Struct
	if err := spec.TypeByName(typ, &s); err != nil {
		return 0, fmt.Errorf("kernel BTF: struct %s: %w", typ, err)
	}
	if _, off, ok := findMember(s.Members, member, 0); ok {
		return uint16(off / 8), nil
	}
	return 0, fmt.Errorf("kernel BTF: struct %s has no member %s", typ, member)
}

// findMember finds a member by name, looking into anonymous unions and
// structs, and returns it with its offset from base.
func findMember(members []btf.Member, name string, base btf.Bits) (btf.Member, btf.Bits, bool) {
	for _, m := range members {
		if m.Name == name {
			return m, base + m.Offset, true
		}
		if m.Name != "" {
			continue
		}
		var inner []btf.Member
		switch t := btf.UnderlyingType(m.Type).(type) {
		case *btf.Struct:
			inner = t.Members
		case *btf.Union:
			inner = t.Members
		}
		if found, off, ok := findMember(inner, name, base+m.Offset); ok {
			return found, off, true
		}
	}
	return btf.Member{}, 0, false
}
