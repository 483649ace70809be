package icap

import (
	"errors"
	"strconv"
)

// Sentinel errors that callers act on. Errors from the parsers wrap either
// ErrMalformed or ErrTooLarge inside a *ProtocolError.
var (
	// ErrMalformed marks input that does not follow RFC 3507.
	ErrMalformed = errors.New("malformed ICAP message")
	// ErrTooLarge marks input beyond a configured Limits value.
	ErrTooLarge = errors.New("ICAP message exceeds a limit")
	// ErrPoolExhausted is returned when every pooled connection is busy and
	// the pool may open no more; SPE's client API calls this
	// SC_CONNPOOLSIZE_EXCEEDED.
	ErrPoolExhausted = errors.New("icap: connection pool exhausted")
	// ErrClientClosed is returned by a Client after Close.
	ErrClientClosed = errors.New("icap: client closed")
)

// StatusError is an answer whose status is not the one the call needs,
// such as 404 to OPTIONS for an unknown service.
type StatusError struct {
	Method string
	Code   int
	Reason string
}

func (e *StatusError) Error() string {
	return "icap: " + e.Method + " answered " + strconv.Itoa(e.Code) + " " + e.Reason
}

// ProtocolError describes malformed or oversized input: which part of the
// message was being read and what was wrong with it.
type ProtocolError struct {
	Part   string // "request line", "header", "encapsulated", "chunk", ...
	Reason string
	kind   error
}

func (e *ProtocolError) Error() string { return "icap: " + e.Part + ": " + e.Reason }

// Unwrap returns ErrMalformed or ErrTooLarge.
func (e *ProtocolError) Unwrap() error { return e.kind }

func malformed(part, reason string) error {
	return &ProtocolError{Part: part, Reason: reason, kind: ErrMalformed}
}

func tooLarge(part, reason string) error {
	return &ProtocolError{Part: part, Reason: reason, kind: ErrTooLarge}
}

func quote(b []byte) string { return strconv.Quote(string(b)) }
