package cicap

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/icapwatch/icapwatch/icap"
)

// The instance answers over the TLS version it is given, closes idle
// connections itself after its idle time, and leaves no process behind.
func TestInstance(t *testing.T) {
	for _, tc := range []struct {
		name  string
		tls12 bool
		want  uint16
	}{{"tls13", false, 0x0304}, {"tls12", true, 0x0303}} {
		t.Run(tc.name, func(t *testing.T) {
			s := StartTest(t, Config{Workers: 2, KeepAlive: time.Second, Timeout: time.Second, TLS12: tc.tls12})
			closed := make(chan icap.CloseInfo, 1)
			c, err := icap.NewClient(icap.Config{Target: s.Target(), CAFile: s.CAFile(), MaxIdle: time.Minute,
				Observer: &icap.Observer{ConnClosed: func(_ icap.ConnInfo, ci icap.CloseInfo) { closed <- ci }}})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			resp, opts, tr, err := c.Options(context.Background())
			if err != nil {
				t.Fatalf("%v\n%s", err, s.Log())
			}
			if resp.StatusCode != 200 || tr.Conn.TLSVersion != tc.want {
				t.Errorf("status %d over TLS %#x (options %+v), want 200 over %#x", resp.StatusCode, tr.Conn.TLSVersion, opts, tc.want)
			}
			// The log's ends are to the second: the readiness check's are
			// before this one, the idle close (two seconds on) after it.
			from := time.Now().Truncate(time.Second).Add(time.Second)
			select {
			case ci := <-closed:
				if ci.Initiator != "server" || ci.Alert != "close_notify" || ci.IdleAge < s.IdleClose()-500*time.Millisecond {
					t.Errorf("closed %+v, want the server's close_notify after about %v", ci, s.IdleClose())
				}
			case <-time.After(s.IdleClose() + 5*time.Second):
				t.Errorf("the idle connection was not closed within %v", s.IdleClose()+5*time.Second)
			}
			// The server's log has the idle connection's end, logged as it
			// closed it.
			var ends []time.Time
			for deadline := time.Now().Add(5 * time.Second); len(ends) == 0 && time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
				all, err := s.Ends()
				if err != nil {
					t.Fatal(err)
				}
				ends = slices.DeleteFunc(all, func(at time.Time) bool { return at.Before(from) })
			}
			if len(ends) != 1 {
				t.Errorf("the server log has %d connection ends from %v on, want 1, the idle close\n%s", len(ends), from, s.Log())
			} else if since := time.Since(ends[0]); since > 3*time.Second {
				t.Errorf("the idle close is logged at %v, %v ago, want within the last seconds", ends[0], since)
			}
			pid := s.cmd.Process.Pid
			if err := s.Stop(); err != nil {
				t.Fatal(err)
			}
			if groupAlive(pid) {
				t.Errorf("c-icap's process group %d outlived Stop", pid)
			}
		})
	}
}
