package icap

import (
	"fmt"
	"net"
	"net/url"
	"strings"
)

// Well-known ports: 1344 is ICAP's IANA port; 11344 is the port secure
// ICAP (ICAP over TLS) servers such as Symantec Protection Engine use.
const (
	PlainPort = 1344
	TLSPort   = 11344
)

// Target is an ICAP service address taken from an icap:// or icaps:// URL.
type Target struct {
	URL     string // normalized: scheme://host:port/service
	Addr    string // host:port to dial
	Host    string // host without port, for SNI and the Host header
	TLS     bool   // icaps://
	Service string // path without the leading slash
}

// ParseTarget parses icaps://host[:port]/SERVICE (TLS, default port 11344)
// or icap://host[:port]/SERVICE (plain, default port 1344).
func ParseTarget(raw string) (Target, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return Target{}, fmt.Errorf("bad ICAP URL %q: %w", raw, err)
	}
	var t Target
	port := ""
	switch strings.ToLower(u.Scheme) {
	case "icaps":
		t.TLS, port = true, fmt.Sprint(TLSPort)
	case "icap":
		port = fmt.Sprint(PlainPort)
	default:
		return Target{}, fmt.Errorf("bad ICAP URL %q: scheme must be icaps:// (TLS) or icap:// (plain)", raw)
	}
	if u.Hostname() == "" {
		return Target{}, fmt.Errorf("bad ICAP URL %q: no host", raw)
	}
	if u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return Target{}, fmt.Errorf("bad ICAP URL %q: user info, query and fragment are not allowed", raw)
	}
	if p := u.Port(); p != "" {
		port = p
	}
	t.Host = u.Hostname()
	t.Addr = net.JoinHostPort(t.Host, port)
	t.Service = strings.TrimPrefix(u.Path, "/")
	if t.Service == "" {
		return Target{}, fmt.Errorf("bad ICAP URL %q: no service name (e.g. /SYMCScanResp-AV)", raw)
	}
	t.URL = strings.ToLower(u.Scheme) + "://" + t.Addr + "/" + t.Service
	return t, nil
}

// RequestURI is the URI for the request line. It names the icap:// scheme
// even over TLS, as SPE's own clients do: the request line names the
// service, the transport is the connection's business.
func (t Target) RequestURI() string { return "icap://" + t.Addr + "/" + t.Service }
