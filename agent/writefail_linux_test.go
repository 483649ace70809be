package agent

import (
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/icapwatch/icapwatch/agent/correlate"
	"github.com/icapwatch/icapwatch/bpf"
	"github.com/icapwatch/icapwatch/internal/testutil"
	"golang.org/x/sys/unix"
)

// TestReuseAfterServerReset: the server resets a pooled connection that
// sits idle (linger 0, as c-icap's idle close ends in a reset), and the
// application writes on it later: the write fails at once and nothing
// reaches the wire. The agent, with real eBPF on loopback, reports the
// race from the failed write, with server_close rst, once.
func TestReuseAfterServerReset(t *testing.T) {
	testutil.RequireRoot(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cfg := loopbackAgent(ln.Addr().(*net.TCPAddr).Port)
	base := startDaemon(t, cfg)
	if got := sum(scrape(t, base+"/metrics"), "icapwatch_kernel_hook_attached",
		map[string]string{"hook": bpf.HookSendLength}); got != 1 {
		testutil.SkipOrFail(t, "icapwatch_kernel_hook_attached{hook=%q} = %v: this kernel has no sock:sock_send_length (6.x)",
			bpf.HookSendLength, got)
	}

	cli, srv := testutil.Connect(t, ln, (&net.Dialer{}).DialContext)
	req := "OPTIONS icap://127.0.0.1/x ICAP/1.0\r\nEncapsulated: null-body=0\r\n\r\n"
	if _, err := io.WriteString(cli, req); err != nil {
		t.Fatal(err)
	}
	srv.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(srv, make([]byte, len(req))); err != nil {
		t.Fatal(err)
	}
	answer := "ICAP/1.0 200 OK\r\nEncapsulated: null-body=0\r\n\r\n"
	if _, err := io.WriteString(srv, answer); err != nil {
		t.Fatal(err)
	}
	cli.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(cli, make([]byte, len(answer))); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond) // idle in the pool
	srv.SetLinger(0)
	srv.Close()

	// The client's socket reaches CLOSE with the reset; then the
	// application writes.
	var werr error
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if _, werr = io.WriteString(cli, req); werr != nil {
			break
		}
	}
	if !errors.Is(werr, unix.ECONNRESET) {
		t.Fatalf("write after the server's reset: %v, want %v", werr, unix.ECONNRESET)
	}
	io.WriteString(cli, req) // EPIPE now: the same race, not counted again

	clientAddr := cli.LocalAddr().String()
	races := func() []map[string]any {
		var api struct {
			Events []map[string]any `json:"events"`
		}
		getJSON(t, base+"/api/v1/events", &api)
		var out []map[string]any
		for _, e := range api.Events {
			if e["kind"] == string(correlate.KindRace) && e["client_addr"] == clientAddr {
				out = append(out, e)
			}
		}
		return out
	}
	for deadline := time.Now().Add(10 * time.Second); len(races()) == 0 && time.Now().Before(deadline); {
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond) // a second race would be here by now
	if races := races(); len(races) != 1 || races[0]["race_kind"] != correlate.RaceReuseAfterClose || races[0]["server_close"] != "rst" {
		t.Fatalf("race events of %s: %v, want one %s with server_close rst", clientAddr, races, correlate.RaceReuseAfterClose)
	}
	if got := sum(scrape(t, base+"/metrics"), "icapwatch_idle_close_races_total",
		map[string]string{"kind": correlate.RaceReuseAfterClose}); got != 1 {
		t.Errorf("icapwatch_idle_close_races_total{kind=%q} = %v, want 1", correlate.RaceReuseAfterClose, got)
	}
}
