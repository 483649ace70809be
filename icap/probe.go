package icap

import (
	"context"
	"errors"
)

// ProbeResult is one OPTIONS probe, classified the one way both
// `icapwatch probe` and the agent's canary report it.
type ProbeResult struct {
	// Response is the server's answer; nil when none was read. It is set
	// for a non-200 answer too, which is a failure.
	Response *Response
	// Options are the fields the server advertised; complete only when
	// Err is nil.
	Options Options
	// Trace holds the phase timings (Trace.Phases); never nil.
	Trace *Trace
	// Err is why the probe failed; nil when the server answered 200 with
	// valid OPTIONS fields.
	Err error
	// Conn is "fresh" or "reused": the connection the probe ended on
	// (after a retry, the fresh one). "" when the probe got no
	// connection, as when connect or the TLS handshake failed.
	Conn string
	// FailedPhase is where a failed probe failed: the phase a *PhaseError
	// names (pool, connect, tls, write, first_byte, read), or "status"
	// when the server answered but not 200. "" on success and for a
	// failure in no phase, such as a garbled Max-Connections.
	FailedPhase string
}

// OK reports whether the probe succeeded.
func (r ProbeResult) OK() bool { return r.Err == nil }

// Reason names a failure for the icapwatch_probe_failures_total metric:
// the phase of a *PhaseError, else "error". A non-200 answer is "error"
// there: the server is serving, so no phase of the exchange failed.
// "" when the probe succeeded.
func (r ProbeResult) Reason() string {
	switch {
	case r.Err == nil:
		return ""
	case r.FailedPhase == "" || r.FailedPhase == "status":
		return "error"
	}
	return r.FailedPhase
}

// Probe sends OPTIONS for the target's service, like Options, and
// classifies the outcome. Give ctx the probe's deadline.
func (c *Client) Probe(ctx context.Context) ProbeResult {
	resp, opts, tr, err := c.Options(ctx)
	r := ProbeResult{Response: resp, Options: opts, Trace: tr, Err: err}
	if tr.Conn.ID != 0 { // IDs start at 1: 0 is no connection
		r.Conn = "fresh"
		if tr.Reused {
			r.Conn = "reused"
		}
	}
	var (
		pe *PhaseError
		se *StatusError
	)
	switch {
	case err == nil:
	case errors.As(err, &pe):
		r.FailedPhase = pe.Phase
	case errors.As(err, &se):
		r.FailedPhase = "status"
	}
	return r
}
