package correlate

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"time"
)

// Event kinds, as DESIGN.md's Events table names them.
const (
	KindStall          = "stall"
	KindStallEnd       = "stall_end"
	KindRelease        = "release"
	KindRace           = "race"
	KindTLSAlert       = "tls_alert"
	KindClose          = "close"
	KindPoolAboveLimit = "pool_above_server_limit"
)

// Event is one diagnosis: a JSON object with time, kind, server,
// client_addr, client, pid when known, and the kind's own fields.
type Event struct {
	Time       time.Time
	Kind       string
	Server     string // ip:port
	ClientAddr string // ip:port
	Client     string // the application's comm, "unknown" or "icapwatch"
	PID        uint32
	// Fields are the kind's own, by their JSON names. A nil value is
	// written as null (acked_after_seconds of an unacked stall).
	Fields map[string]any
}

// MarshalJSON writes the flat object of the contract.
func (e Event) MarshalJSON() ([]byte, error) {
	m := make(map[string]any, len(e.Fields)+6)
	for k, v := range e.Fields {
		m[k] = v
	}
	m["time"] = e.Time.UTC().Format(time.RFC3339Nano)
	m["kind"] = e.Kind
	m["server"] = e.Server
	m["client_addr"] = e.ClientAddr
	m["client"] = e.Client
	if e.PID != 0 {
		m["pid"] = e.PID
	}
	return json.Marshal(m)
}

// LogArgs are the event's fields as hclog key/value pairs, sorted.
func (e Event) LogArgs() []any {
	args := []any{"kind", e.Kind, "server", e.Server, "client_addr", e.ClientAddr, "client", e.Client}
	if e.PID != 0 {
		args = append(args, "pid", e.PID)
	}
	keys := make([]string, 0, len(e.Fields))
	for k := range e.Fields {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		args = append(args, k, e.Fields[k])
	}
	return args
}

// seconds rounds a duration for the events: microseconds are plenty.
func seconds(d time.Duration) float64 {
	return float64(d.Round(time.Microsecond)) / float64(time.Second)
}

// Summary is the event in one line for people: what the demo prints.
func (e Event) Summary() string {
	who := e.Client + " " + e.ClientAddr
	switch {
	case e.PID != 0:
		who = fmt.Sprintf("%s (pid %d) %s", e.Client, e.PID, e.ClientAddr)
	case e.Client == ClientUnknown || e.Client == "":
		who = e.ClientAddr
	}
	f := e.Fields
	what := "request"
	if f["phase"] == "handshake" {
		what = "TLS handshake"
	}
	switch e.Kind {
	case KindStall:
		acked := "not ACKed by the server"
		if v, ok := f["acked_after_seconds"].(float64); ok {
			acked = fmt.Sprintf("ACKed by the server %s after it was sent", human(v))
		}
		if f["state"] == StateUnread {
			return fmt.Sprintf("answer to %s from %s has sat unread in the receive queue for %s (unread)",
				who, e.Server, human(f["age_seconds"].(float64)))
		}
		return fmt.Sprintf("%s from %s to %s %s, no answer for %s (%s)",
			what, who, e.Server, acked, human(f["age_seconds"].(float64)), f["state"])
	case KindStallEnd:
		return fmt.Sprintf("stalled %s from %s to %s ended after %s: %s",
			what, who, e.Server, human(f["duration_seconds"].(float64)), f["outcome"])
	case KindRelease:
		return fmt.Sprintf("%s from %s to %s answered after %s, %s after the server idle-closed a sibling connection (%s): server workers held by idle persistent connections",
			what, who, e.Server, human(f["stalled_seconds"].(float64)),
			human(f["after_close_seconds"].(float64)), f["sibling_client_addr"])
	case KindRace:
		return fmt.Sprintf("idle-close race %s on %s to %s (idle %s)",
			f["race_kind"], who, e.Server, human(f["idle_age_seconds"].(float64)))
	case KindTLSAlert:
		return fmt.Sprintf("TLS alert from the %s on %s to %s (TLS %s)", f["direction"], who, e.Server, f["tls_version"])
	case KindClose:
		return fmt.Sprintf("connection of %s to %s closed by the %s (%s)%s", who, e.Server, f["initiator"], f["how"],
			map[bool]string{true: " with an exchange open", false: ""}[f["open_exchange"] == true])
	case KindPoolAboveLimit:
		return fmt.Sprintf("%d connections open to %s, it advertises Max-Connections %d",
			f["connections"], e.Server, f["max_connections"])
	}
	var parts []string
	for _, a := range e.LogArgs() {
		parts = append(parts, fmt.Sprint(a))
	}
	return strings.Join(parts, " ")
}

// human writes seconds the way the one-line diagnosis does: 41 ms, 10 s, 293.3 s.
func human(s float64) string {
	switch {
	case s < 1:
		return fmt.Sprintf("%.0f ms", s*1000)
	case s < 60:
		return fmt.Sprintf("%.3g s", s)
	default:
		return fmt.Sprintf("%.1f s", s)
	}
}
