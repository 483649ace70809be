package icap_test

import (
	"context"
	"testing"
	"time"

	"github.com/icapwatch/icapwatch/icap"
)

// probeOnce probes c's target and returns the result; a 2 s deadline
// keeps a stalled server from holding the test.
func probeOnce(t *testing.T, c *icap.Client) icap.ProbeResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	r := c.Probe(ctx)
	if r.Trace == nil {
		t.Fatal("a probe always has a trace")
	}
	return r
}

func TestProbeClassifiesConnection(t *testing.T) {
	lab := startLab(t, nil)
	for _, target := range []string{plainURL(lab), tlsURL(lab)} {
		c := newClient(t, icap.Config{Target: target, Insecure: true})
		for i, want := range []string{"fresh", "reused"} {
			r := probeOnce(t, c)
			if !r.OK() || r.Err != nil || r.Reason() != "" || r.FailedPhase != "" {
				t.Fatalf("%s probe %d: %+v", target, i+1, r)
			}
			if r.Conn != want || r.Trace.Reused != (want == "reused") {
				t.Errorf("%s probe %d: conn %q (reused %v), want %q", target, i+1, r.Conn, r.Trace.Reused, want)
			}
			if r.Response == nil || r.Response.StatusCode != 200 || r.Options.MaxConnections != icap.LabDefaults().Workers {
				t.Errorf("%s probe %d: answer %+v, options %+v", target, i+1, r.Response, r.Options)
			}
		}
	}
}

// After the server closes a reused connection under the request, the
// probe is retried on a fresh one: the result is of the connection it
// ended on.
func TestProbeAfterRetryIsFresh(t *testing.T) {
	lab := startLab(t, func(c *icap.LabConfig) { c.Fault, c.FaultEvery = icap.FaultAlert, 2 })
	c := newClient(t, icap.Config{Target: tlsURL(lab), Insecure: true})
	probeOnce(t, c)
	r := probeOnce(t, c)
	if !r.OK() || r.Conn != "fresh" || !r.Trace.Retried {
		t.Errorf("retried probe: ok %v, conn %q, retried %v (%v)", r.OK(), r.Conn, r.Trace.Retried, r.Err)
	}
}

func TestProbeFailures(t *testing.T) {
	lab := startLab(t, nil)
	drop := startLab(t, func(c *icap.LabConfig) { c.Fault = icap.FaultDrop })
	for _, tc := range []struct {
		name     string
		cfg      icap.Config
		conn     string
		phase    string
		reason   string
		answered int // status code of the answer; 0: none
	}{
		{"unreachable", icap.Config{Target: "icap://127.0.0.1:1/x"}, "", "connect", "connect", 0},
		{"unverified certificate", icap.Config{Target: tlsURL(lab)}, "", "tls", "tls", 0},
		{"no answer", icap.Config{Target: plainURL(drop)}, "fresh", "first_byte", "first_byte", 0},
		{"unknown service", icap.Config{Target: "icap://" + lab.PlainAddr().String() + "/nope"}, "fresh", "status", "error", 404},
		{"garbled options", icap.Config{Target: fakeServer(t,
			"ICAP/1.0 200 OK\r\nMax-Connections: many\r\nEncapsulated: null-body=0\r\n\r\n")}, "fresh", "", "error", 200},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newClient(t, tc.cfg)
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			defer cancel()
			r := c.Probe(ctx)
			if r.OK() || r.Err == nil {
				t.Fatalf("want a failure, got %+v", r)
			}
			if r.Conn != tc.conn || r.FailedPhase != tc.phase || r.Reason() != tc.reason {
				t.Errorf("conn %q, failed phase %q, reason %q; want %q, %q, %q (%v)",
					r.Conn, r.FailedPhase, r.Reason(), tc.conn, tc.phase, tc.reason, r.Err)
			}
			code := 0
			if r.Response != nil {
				code = r.Response.StatusCode
			}
			if code != tc.answered {
				t.Errorf("answer status %d, want %d", code, tc.answered)
			}
		})
	}
}

func TestProbeResultReason(t *testing.T) {
	for _, tc := range []struct {
		r    icap.ProbeResult
		want string
	}{
		{icap.ProbeResult{}, ""},
		{icap.ProbeResult{Err: context.Canceled, FailedPhase: "pool"}, "pool"},
		{icap.ProbeResult{Err: context.Canceled, FailedPhase: "read"}, "read"},
		{icap.ProbeResult{Err: context.Canceled, FailedPhase: "status"}, "error"},
		{icap.ProbeResult{Err: context.Canceled}, "error"},
	} {
		if got := tc.r.Reason(); got != tc.want {
			t.Errorf("Reason of %+v = %q, want %q", tc.r, got, tc.want)
		}
	}
}
