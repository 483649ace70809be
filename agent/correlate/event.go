package correlate

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"time"

	"github.com/icapwatch/icapwatch/agent/observe"
	"github.com/icapwatch/icapwatch/internal/humanize"
)

// Kind names an event, as DESIGN.md's Events table does.
type Kind string

// Event kinds.
const (
	KindStall          Kind = "stall"
	KindStallEnd       Kind = "stall_end"
	KindRelease        Kind = "release"
	KindRace           Kind = "race"
	KindTLSAlert       Kind = "tls_alert"
	KindClose          Kind = "close"
	KindPoolAboveLimit Kind = "pool_above_server_limit"
)

// Event is one diagnosis: a JSON object with time, kind, server,
// client_addr, client, pid when known, and the fields of its Detail.
type Event struct {
	Time       time.Time
	Server     string         // ip:port, or "other" past --max-servers
	ClientAddr netip.AddrPort // invalid when the event is of no one connection
	Client     string         // the application's comm, "unknown" or "icapwatch"
	PID        uint32
	Detail     Detail // what kind of event it is and its own fields
}

// Kind is the Detail's kind.
func (e Event) Kind() Kind { return e.Detail.Kind() }

// Detail is the kind-specific part of an event: *Stall, *StallEnd,
// *Release, *Race, *TLSAlert, *Close or *PoolAboveLimit.
type Detail interface {
	Kind() Kind
	// fields hands over the JSON fields, in any order. A nil value is
	// written as null.
	fields(add func(key string, value any))
	// summary is the event in one line; who names the connection.
	summary(e Event, who string) string
}

// Stall: an exchange crossed the stall threshold.
type Stall struct {
	State string
	Phase observe.Phase
	Age   time.Duration
	// AckedAfter is the time from the request to the server's ACK of it;
	// Acked false for an unacked request.
	AckedAfter  time.Duration
	Acked       bool
	IdleAge     time.Duration
	Retransmits uint32
	// AckUntimed: the source knows that the server ACKed, not when (sock_diag
	// polls); the summary says so. Not part of the JSON.
	AckUntimed bool
}

// StallEnd: a stalled exchange ended.
type StallEnd struct {
	State    string
	Phase    observe.Phase
	Outcome  string
	Duration time.Duration
}

// Release: a stalled exchange answered right after the server closed a
// sibling connection.
type Release struct {
	Phase           observe.Phase
	Sibling         netip.AddrPort
	SiblingClosedBy string
	AfterClose      time.Duration
	Stalled         time.Duration
}

// Race: a request raced the server's idle close.
type Race struct {
	RaceKind       string
	IdleAge        time.Duration
	RequestToClose time.Duration
	// ServerClose is how the server closed: fin or rst (empty: not
	// known, and not written). A reuse after a reset is seen at the
	// application's failed write, as nothing reaches the wire.
	ServerClose string
}

// TLSAlert: a TLS alert record, or a probable TLS 1.3 close_notify.
type TLSAlert struct {
	Direction  string // client or server: who sent it
	TLSVersion string // 1.2, or 1.3? for the length rule
}

// Close: a connection closed.
type Close struct {
	Initiator    string // client or server
	How          string // fin or rst
	OpenExchange bool
}

// PoolAboveLimit: this host holds more connections to a server than the
// Max-Connections it advertises.
type PoolAboveLimit struct {
	Connections, MaxConnections int
}

func (*Stall) Kind() Kind          { return KindStall }
func (*StallEnd) Kind() Kind       { return KindStallEnd }
func (*Release) Kind() Kind        { return KindRelease }
func (*Race) Kind() Kind           { return KindRace }
func (*TLSAlert) Kind() Kind       { return KindTLSAlert }
func (*Close) Kind() Kind          { return KindClose }
func (*PoolAboveLimit) Kind() Kind { return KindPoolAboveLimit }

func (d *Stall) fields(add func(string, any)) {
	var acked any // null when unacked
	if d.Acked {
		acked = seconds(d.AckedAfter)
	}
	add("state", d.State)
	add("phase", d.Phase.String())
	add("age_seconds", seconds(d.Age))
	add("acked_after_seconds", acked)
	add("idle_age_seconds", seconds(d.IdleAge))
	add("retransmits", d.Retransmits)
}

func (d *StallEnd) fields(add func(string, any)) {
	add("state", d.State)
	add("phase", d.Phase.String())
	add("outcome", d.Outcome)
	add("duration_seconds", seconds(d.Duration))
}

func (d *Release) fields(add func(string, any)) {
	add("phase", d.Phase.String())
	add("sibling_client_addr", d.Sibling.String())
	add("sibling_closed_by", d.SiblingClosedBy)
	add("after_close_seconds", seconds(d.AfterClose))
	add("stalled_seconds", seconds(d.Stalled))
}

func (d *Race) fields(add func(string, any)) {
	add("race_kind", d.RaceKind)
	add("idle_age_seconds", seconds(d.IdleAge))
	add("request_to_close_seconds", seconds(d.RequestToClose))
	if d.ServerClose != "" {
		add("server_close", d.ServerClose)
	}
}

func (d *TLSAlert) fields(add func(string, any)) {
	add("direction", d.Direction)
	add("tls_version", d.TLSVersion)
}

func (d *Close) fields(add func(string, any)) {
	add("initiator", d.Initiator)
	add("how", d.How)
	add("open_exchange", d.OpenExchange)
}

func (d *PoolAboveLimit) fields(add func(string, any)) {
	add("connections", d.Connections)
	add("max_connections", d.MaxConnections)
}

// what names the exchange of a phase for people.
func what(p observe.Phase) string {
	if p == observe.PhaseHandshake {
		return "TLS handshake"
	}
	return "request"
}

func (d *Stall) summary(e Event, who string) string {
	if d.State == StateUnread {
		return fmt.Sprintf("answer to %s from %s has sat unread in the receive queue for %s (unread)",
			who, e.Server, humanize.Duration(d.Age))
	}
	acked := "not ACKed by the server"
	switch {
	case d.Acked && d.AckUntimed:
		acked = "ACKed by the server (sock_diag cannot tell when)"
	case d.Acked:
		acked = fmt.Sprintf("ACKed by the server %s after it was sent", humanize.Duration(d.AckedAfter))
	}
	return fmt.Sprintf("%s from %s to %s %s, no answer for %s (%s)", what(d.Phase), who, e.Server, acked, humanize.Duration(d.Age), d.State)
}

func (d *StallEnd) summary(e Event, who string) string {
	return fmt.Sprintf("stalled %s from %s to %s ended after %s: %s", what(d.Phase), who, e.Server, humanize.Duration(d.Duration), d.Outcome)
}

func (d *Release) summary(e Event, who string) string {
	return fmt.Sprintf("%s from %s to %s answered after %s, %s after the server idle-closed a sibling connection (%s): "+
		"server workers held by idle persistent connections",
		what(d.Phase), who, e.Server, humanize.Duration(d.Stalled), humanize.Duration(d.AfterClose), d.Sibling)
}

func (d *Race) summary(e Event, who string) string {
	reset := ""
	if d.ServerClose == "rst" {
		reset = ", after the server's reset"
	}
	return fmt.Sprintf("idle-close race %s on %s to %s (idle %s%s)", d.RaceKind, who, e.Server, humanize.Duration(d.IdleAge), reset)
}

func (d *TLSAlert) summary(e Event, who string) string {
	return fmt.Sprintf("TLS alert from the %s on %s to %s (TLS %s)", d.Direction, who, e.Server, d.TLSVersion)
}

func (d *Close) summary(e Event, who string) string {
	open := ""
	if d.OpenExchange {
		open = " with an exchange open"
	}
	return fmt.Sprintf("connection of %s to %s closed by the %s (%s)%s", who, e.Server, d.Initiator, d.How, open)
}

func (d *PoolAboveLimit) summary(e Event, _ string) string {
	return fmt.Sprintf("%d connections open to %s, it advertises Max-Connections %d", d.Connections, e.Server, d.MaxConnections)
}

// ClientAddrString is the client address as the JSON writes it: empty
// when the event is of no one connection.
func (e Event) ClientAddrString() string {
	if !e.ClientAddr.IsValid() {
		return ""
	}
	return e.ClientAddr.String()
}

type field struct {
	key   string
	value any
}

// ownFields are the Detail's fields, sorted by key.
func (e Event) ownFields() []field {
	var fs []field
	e.Detail.fields(func(k string, v any) { fs = append(fs, field{k, v}) })
	sort.Slice(fs, func(i, j int) bool { return fs[i].key < fs[j].key })
	return fs
}

// Field is the value of one of the Detail's JSON fields by its name, as
// the JSON and the log write it (seconds as float64); nil when absent.
func (e Event) Field(name string) any {
	var v any
	e.Detail.fields(func(k string, value any) {
		if k == name {
			v = value
		}
	})
	return v
}

// MarshalJSON writes the flat object of the contract, its keys sorted.
func (e Event) MarshalJSON() ([]byte, error) {
	fs := append(e.ownFields(),
		field{"time", e.Time.UTC().Format(time.RFC3339Nano)}, field{"kind", e.Kind()},
		field{"server", e.Server}, field{"client_addr", e.ClientAddrString()}, field{"client", e.Client})
	if e.PID != 0 {
		fs = append(fs, field{"pid", e.PID})
	}
	sort.Slice(fs, func(i, j int) bool { return fs[i].key < fs[j].key })
	var b bytes.Buffer
	b.WriteByte('{')
	for i, f := range fs {
		if i > 0 {
			b.WriteByte(',')
		}
		k, _ := json.Marshal(f.key)
		v, err := json.Marshal(f.value)
		if err != nil {
			return nil, fmt.Errorf("event field %s: %w", f.key, err)
		}
		b.Write(k)
		b.WriteByte(':')
		b.Write(v)
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}

// LogArgs are the event's fields as hclog key/value pairs: the common
// ones, then the Detail's sorted.
func (e Event) LogArgs() []any {
	args := []any{"kind", string(e.Kind()), "server", e.Server, "client_addr", e.ClientAddrString(), "client", e.Client}
	if e.PID != 0 {
		args = append(args, "pid", e.PID)
	}
	for _, f := range e.ownFields() {
		args = append(args, f.key, f.value)
	}
	return args
}

// seconds rounds a duration for the events: microseconds are plenty.
func seconds(d time.Duration) float64 {
	return float64(d.Round(time.Microsecond)) / float64(time.Second)
}

// Summary is the event in one line for people: what the demo prints.
func (e Event) Summary() string {
	who := e.Client + " " + e.ClientAddrString()
	switch {
	case e.PID != 0:
		who = fmt.Sprintf("%s (pid %d) %s", e.Client, e.PID, e.ClientAddrString())
	case e.Client == ClientUnknown || e.Client == "":
		who = e.ClientAddrString()
	}
	return e.Detail.summary(e, who)
}

// String is the Summary; a log or a test may print an event as it is.
func (e Event) String() string {
	if e.Detail == nil {
		return strings.TrimSpace(fmt.Sprint(e.Time, " ", e.Server, " ", e.ClientAddrString()))
	}
	return e.Summary()
}
