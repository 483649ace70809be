package bpf

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/cilium/ebpf/btf"
)

// kernelSpec is kernel BTF with what the kprobes read: struct pt_regs and
// struct sock_common, without the members named in lacking.
func kernelSpec(t *testing.T, lacking ...string) *btf.Spec {
	t.Helper()
	u64 := &btf.Int{Name: "u64", Size: 8}
	// Members are u64s, but for those of a type given here.
	types := map[string]btf.Type{}
	strct := func(name string, members ...string) *btf.Struct {
		s := &btf.Struct{Name: name}
		for _, m := range members {
			if !slices.Contains(lacking, m) {
				typ := types[m]
				if typ == nil {
					typ = u64
				}
				s.Members = append(s.Members, btf.Member{Name: m, Type: typ, Offset: btf.Bits(64 * len(s.Members))})
			}
		}
		s.Size = uint32(8 * len(s.Members))
		return s
	}
	regs := strct("pt_regs", "di", "si", "dx")
	if runtime.GOARCH == "arm64" {
		regs = strct("pt_regs", "regs")
	}
	// possible_net_t is a typedef of an unnamed struct holding the pointer.
	types["skc_net"] = &btf.Typedef{Name: "possible_net_t", Type: strct("", "net")}
	types["ns"] = strct("ns_common", "stashed", "inum")
	net := strct("net", "passive", "ns")
	b, err := btf.NewBuilder([]btf.Type{regs, net, strct("sock_common", "skc_daddr", "skc_rcv_saddr", "skc_dport",
		"skc_num", "skc_family", "skc_v6_daddr", "skc_v6_rcv_saddr", "skc_state", "skc_net")}, nil)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := b.Marshal(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	spec, err := btf.LoadSpecFromReader(bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	return spec
}

// The loader's search for kernel BTF, over what the files hold: the
// first file with BTF is taken, a missing one or one without BTF is
// passed over, and the error says what was found where.
func TestFindKernelBTF(t *testing.T) {
	paths := btfPaths("4.19.304")
	if paths[0] != "/sys/kernel/btf/vmlinux" || paths[1] != "/boot/vmlinux-4.19.304" {
		t.Fatalf("search order %q", paths)
	}
	noBTF := errors.New("no .BTF section")
	for _, tc := range []struct {
		name    string
		files   map[string]error // nil: the file has BTF; absent: no file
		want    string           // the path taken
		wantErr []string
	}{
		{"sysfs", map[string]error{paths[0]: nil, paths[1]: nil}, paths[0], nil},
		{"boot", map[string]error{paths[1]: nil}, "/boot/vmlinux-4.19.304", nil},
		{"debug", map[string]error{paths[1]: noBTF, "/usr/lib/debug/boot/vmlinux-4.19.304": nil},
			"/usr/lib/debug/boot/vmlinux-4.19.304", nil},
		{"none", map[string]error{}, "", []string{"none of /sys/kernel/btf/vmlinux", "not supported"}},
		{"without BTF", map[string]error{paths[1]: noBTF}, "", []string{"/boot/vmlinux-4.19.304: no .BTF section"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			spec := kernelSpec(t)
			load := func(path string) (*btf.Spec, error) {
				err, ok := tc.files[path]
				if !ok {
					return nil, fmt.Errorf("open %s: %w", path, fs.ErrNotExist)
				}
				if err != nil {
					return nil, err
				}
				return spec, nil
			}
			got, from, err := findKernelBTF(paths, load)
			if tc.wantErr == nil {
				if err != nil || from != tc.want || got != spec {
					t.Errorf("found %q, %v; want %q", from, err, tc.want)
				}
				return
			}
			if err == nil {
				t.Fatalf("found %q, want an error", from)
			}
			for _, want := range tc.wantErr {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q lacks %q", err, want)
				}
			}
		})
	}
}

// check's btf line says what the kprobe loader finds: the file the
// offsets come from, or why there are none; its netns line, whether the
// socket hooks can tell network namespaces apart. Both are optional.
func TestCheckBTF(t *testing.T) {
	const apart = "flows of other network namespaces with the same addresses are not told apart"
	for _, tc := range []struct {
		name          string
		spec          *btf.Spec
		from          string
		err           error
		ok, netnsOK   bool
		detail, netns string
	}{
		{"sysfs", kernelSpec(t), "/sys/kernel/btf/vmlinux", nil, true, true,
			"struct offsets for the kprobes from /sys/kernel/btf/vmlinux",
			"sockets' network namespaces from /sys/kernel/btf/vmlinux"},
		{"boot", kernelSpec(t), "/boot/vmlinux-4.19.304", nil, true, true,
			"struct offsets for the kprobes from /boot/vmlinux-4.19.304",
			"sockets' network namespaces from /boot/vmlinux-4.19.304"},
		{"none", nil, "", fmt.Errorf("none found: %w", btf.ErrNotSupported), false, false,
			"no kernel BTF: the kprobes cannot find their struct offsets (none found: not supported)",
			"no kernel BTF: " + apart},
		{"lacking", kernelSpec(t, "skc_num"), "/boot/vmlinux-4.19.304", nil, false, true,
			"/boot/vmlinux-4.19.304: the kprobes cannot find their struct offsets: kernel BTF: struct sock_common has no member skc_num",
			"sockets' network namespaces from /boot/vmlinux-4.19.304"},
		{"no skc_net", kernelSpec(t, "skc_net"), "/boot/vmlinux-4.19.304", nil, true, false,
			"struct offsets for the kprobes from /boot/vmlinux-4.19.304",
			"/boot/vmlinux-4.19.304: kernel BTF: struct sock_common has no member skc_net: " + apart},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := Report{CanRun: true}
			r.checkBTF(func() (*btf.Spec, string, error) { return tc.spec, tc.from, tc.err })
			want := []CheckItem{{Name: "btf", OK: tc.ok, Optional: true, Detail: tc.detail},
				{Name: "netns", OK: tc.netnsOK, Optional: true, Detail: tc.netns}}
			got := map[string]CheckItem{}
			for _, it := range r.Items {
				got[it.Name] = it
			}
			for _, w := range want {
				if got[w.Name] != w {
					t.Errorf("item %+v, want %+v", got[w.Name], w)
				}
			}
			if tc.netnsOK {
				// The pointer is the first member of skc_net; inum the
				// second of ns, the second of struct net.
				var c icapwatchConfig
				skNet, _ := memberOffset(tc.spec, "sock_common", "skc_net")
				if err := netnsOffsets(tc.spec, &c); err != nil || c.SkNet != skNet || c.NetInum != 8+8 {
					t.Errorf("netns offsets %d and %d (%v), want %d and 16", c.SkNet, c.NetInum, err, skNet)
				}
			}
			if len(r.Items) != len(want) {
				t.Errorf("items %+v, want two", r.Items)
			}
			if !r.CanRun {
				t.Error("without BTF the agent cannot run, says the report; the kprobes are optional")
			}
		})
	}
}
