package bpf

import (
	"testing"

	"github.com/hashicorp/go-hclog"
	"github.com/icapwatch/icapwatch/internal/testutil"
)

// TestKernelFormats reads the tracepoints the agent attaches to from this
// kernel's tracefs, mounting it for the test when it is not mounted.
func TestKernelFormats(t *testing.T) {
	testutil.RequireRoot(t)
	// As the agent does: not unmounted from under another test's agent.
	u, err := useTracefs(hclog.NewNullLogger())
	if err != nil {
		testutil.SkipOrFail(t, "no tracefs: %v", err)
		return
	}
	defer u.done(hclog.NewNullLogger())
	root := u.root
	for _, tc := range []struct {
		system, event string
		fields        map[string]int // name: size
	}{
		{"sock", "inet_sock_set_state", map[string]int{
			"skaddr": 8, "oldstate": 4, "newstate": 4, "sport": 2, "dport": 2, "family": 2,
			"saddr": 4, "daddr": 4, "saddr_v6": 16, "daddr_v6": 16,
		}},
		{"tcp", "tcp_retransmit_skb", map[string]int{
			"skaddr": 8, "sport": 2, "dport": 2, "saddr": 4, "daddr": 4,
		}},
	} {
		f, err := ReadFormat(root, tc.system, tc.event)
		if err != nil {
			t.Fatal(err)
		}
		for name, size := range tc.fields {
			fd, err := f.Field(name)
			if err != nil {
				t.Error(err)
				continue
			}
			if fd.Size != size || fd.Offset < 8 {
				t.Errorf("%s:%s %s: %+v, want size %d after the common fields", tc.system, tc.event, name, fd, size)
			}
		}
	}
}
