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
	strct := func(name string, members ...string) *btf.Struct {
		s := &btf.Struct{Name: name}
		for _, m := range members {
			if !slices.Contains(lacking, m) {
				s.Members = append(s.Members, btf.Member{Name: m, Type: u64, Offset: btf.Bits(64 * len(s.Members))})
			}
		}
		s.Size = uint32(8 * len(s.Members))
		return s
	}
	regs := strct("pt_regs", "di", "si", "dx")
	if runtime.GOARCH == "arm64" {
		regs = strct("pt_regs", "regs")
	}
	b, err := btf.NewBuilder([]btf.Type{regs, strct("sock_common", "skc_daddr", "skc_rcv_saddr", "skc_dport",
		"skc_num", "skc_family", "skc_v6_daddr", "skc_v6_rcv_saddr", "skc_state")}, nil)
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
// offsets come from, or why there are none; it is optional either way.
func TestCheckBTF(t *testing.T) {
	for _, tc := range []struct {
		name   string
		spec   *btf.Spec
		from   string
		err    error
		ok     bool
		detail string
	}{
		{"sysfs", kernelSpec(t), "/sys/kernel/btf/vmlinux", nil, true,
			"struct offsets for the kprobes from /sys/kernel/btf/vmlinux"},
		{"boot", kernelSpec(t), "/boot/vmlinux-4.19.304", nil, true,
			"struct offsets for the kprobes from /boot/vmlinux-4.19.304"},
		{"none", nil, "", fmt.Errorf("none found: %w", btf.ErrNotSupported), false,
			"no kernel BTF: the kprobes cannot find their struct offsets (none found: not supported)"},
		{"lacking", kernelSpec(t, "skc_num"), "/boot/vmlinux-4.19.304", nil, false,
			"/boot/vmlinux-4.19.304: the kprobes cannot find their struct offsets: kernel BTF: struct sock_common has no member skc_num"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := Report{CanRun: true}
			r.checkBTF(func() (*btf.Spec, string, error) { return tc.spec, tc.from, tc.err })
			want := CheckItem{Name: "btf", OK: tc.ok, Optional: true, Detail: tc.detail}
			if len(r.Items) != 1 || r.Items[0] != want {
				t.Errorf("items %+v, want %+v", r.Items, want)
			}
			if !r.CanRun {
				t.Error("without BTF the agent cannot run, says the report; the kprobes are optional")
			}
		})
	}
}
