package bpf

import (
	"errors"
	"strings"
	"testing"
)

// inetSockSetState618 is the format file of sock:inet_sock_set_state as a
// 6.18 kernel prints it.
const inetSockSetState618 = `name: inet_sock_set_state
ID: 2287
format:
	field:unsigned short common_type;	offset:0;	size:2;	signed:0;
	field:unsigned char common_flags;	offset:2;	size:1;	signed:0;
	field:unsigned char common_preempt_count;	offset:3;	size:1;	signed:0;
	field:int common_pid;	offset:4;	size:4;	signed:1;

	field:const void * skaddr;	offset:8;	size:8;	signed:0;
	field:int oldstate;	offset:16;	size:4;	signed:1;
	field:int newstate;	offset:20;	size:4;	signed:1;
	field:__u16 sport;	offset:24;	size:2;	signed:0;
	field:__u16 dport;	offset:26;	size:2;	signed:0;
	field:__u16 family;	offset:28;	size:2;	signed:0;
	field:__u16 protocol;	offset:30;	size:2;	signed:0;
	field:__u8 saddr[4];	offset:32;	size:4;	signed:0;
	field:__u8 daddr[4];	offset:36;	size:4;	signed:0;
	field:__u8 saddr_v6[16];	offset:40;	size:16;	signed:0;
	field:__u8 daddr_v6[16];	offset:56;	size:16;	signed:0;

print fmt: "family=%s protocol=%s sport=%hu", REC->family, REC->protocol, REC->sport
`

func TestParseFormat(t *testing.T) {
	f, err := ParseFormat(strings.NewReader(inetSockSetState618))
	if err != nil {
		t.Fatal(err)
	}
	if f.Name != "inet_sock_set_state" || f.ID != 2287 || len(f.Fields) != 15 {
		t.Fatalf("name %q, ID %d, %d fields", f.Name, f.ID, len(f.Fields))
	}
	for _, want := range []Field{
		{Name: "common_pid", Type: "int", Offset: 4, Size: 4, Signed: true},
		{Name: "skaddr", Type: "const void *", Offset: 8, Size: 8},
		{Name: "newstate", Type: "int", Offset: 20, Size: 4, Signed: true},
		{Name: "dport", Type: "__u16", Offset: 26, Size: 2},
		{Name: "saddr", Type: "__u8", Offset: 32, Size: 4},
		{Name: "daddr_v6", Type: "__u8", Offset: 56, Size: 16},
	} {
		got, err := f.Field(want.Name)
		if err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Errorf("field %s: got %+v, want %+v", want.Name, got, want)
		}
	}
	if _, err := f.Field("protocol_v2"); err == nil || !strings.Contains(err.Error(), "inet_sock_set_state") {
		t.Errorf("a missing field should be an error naming the tracepoint, got %v", err)
	}
}

// A kernel whose record lacks a field moves the rest: the offsets must be
// taken from the file, whatever the layout.
func TestParseFormatOtherLayout(t *testing.T) {
	older := strings.Replace(inetSockSetState618, "\tfield:__u16 protocol;\toffset:30;\tsize:2;\tsigned:0;\n", "", 1)
	older = strings.Replace(older, "saddr[4];\toffset:32", "saddr[4];\toffset:30", 1)
	f, err := ParseFormat(strings.NewReader(older))
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := f.Fields["protocol"]; ok {
		t.Error("protocol should be absent")
	}
	if got := f.Fields["saddr"].Offset; got != 30 {
		t.Errorf("saddr offset %d, want 30", got)
	}
}

func TestParseFormatRejects(t *testing.T) {
	for name, in := range map[string]string{
		"empty":            "",
		"no fields":        "name: x\nID: 1\nformat:\n",
		"no name":          "ID: 1\n\tfield:int a;\toffset:0;\tsize:4;\tsigned:1;\n",
		"bad ID":           "name: x\nID: one\n",
		"bad offset":       "name: x\n\tfield:int a;\toffset:-1;\tsize:4;\tsigned:1;\n",
		"no size":          "name: x\n\tfield:int a;\toffset:0;\tsigned:1;\n",
		"zero size":        "name: x\n\tfield:int a;\toffset:0;\tsize:0;\tsigned:1;\n",
		"no field name":    "name: x\n\tfield:int ;\toffset:0;\tsize:4;\tsigned:1;\n",
		"html not tracefs": "<html><body>hello</body></html>\n",
	} {
		if _, err := ParseFormat(strings.NewReader(in)); err == nil {
			t.Errorf("%s: want an error", name)
		}
	}
}

func FuzzParseFormat(f *testing.F) {
	f.Add(inetSockSetState618)
	f.Add("name: x\nID: 1\n\tfield:__u8 a[4];\toffset:8;\tsize:4;\tsigned:0;\n")
	f.Fuzz(func(t *testing.T, in string) {
		ft, err := ParseFormat(strings.NewReader(in))
		if err != nil {
			return
		}
		if ft.Name == "" || len(ft.Fields) == 0 {
			t.Fatalf("parsed without name or fields: %+v", ft)
		}
		for name, fd := range ft.Fields {
			if name == "" || name != fd.Name || fd.Size <= 0 || fd.Offset < 0 || strings.ContainsAny(name, " *[;") {
				t.Fatalf("bad field %q: %+v", name, fd)
			}
		}
	})
}

func TestFindTracefsError(t *testing.T) {
	saved := TracefsPaths
	defer func() { TracefsPaths = saved }()
	TracefsPaths = []string{t.TempDir()}
	if _, err := FindTracefs(); !errors.Is(err, ErrNoTracefs) || !strings.Contains(err.Error(), "mount -t tracefs") {
		t.Errorf("want ErrNoTracefs saying how to mount, got %v", err)
	}
}
