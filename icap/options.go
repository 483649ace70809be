package icap

import (
	"math"
	"strconv"
	"strings"
	"time"
)

// Options is what a server advertises in its OPTIONS response
// (RFC 3507 section 4.10.2).
type Options struct {
	Methods          []string
	Service          string
	ISTag            string
	ServiceID        string
	MaxConnections   int           // 0 when not advertised
	TTL              time.Duration // Options-TTL; 0 when not advertised
	Preview          int           // -1 when not advertised
	Allow204         bool
	TransferPreview  []string
	TransferIgnore   []string
	TransferComplete []string
}

// ParseOptions reads the OPTIONS fields from a 200 response. Numeric fields
// that do not parse are errors: a client sizing its pool by a garbled
// Max-Connections is worse off than one told the value is bad.
func ParseOptions(resp *Response) (Options, error) {
	if resp.StatusCode != 200 {
		return Options{}, &StatusError{Method: "OPTIONS", Code: resp.StatusCode, Reason: resp.Reason}
	}
	h := resp.Header
	o := Options{
		Methods:          splitList(h.Get("Methods")),
		Service:          h.Get("Service"),
		ISTag:            strings.Trim(h.Get("ISTag"), `"`),
		ServiceID:        h.Get("Service-ID"),
		Preview:          -1,
		TransferPreview:  splitList(h.Get("Transfer-Preview")),
		TransferIgnore:   splitList(h.Get("Transfer-Ignore")),
		TransferComplete: splitList(h.Get("Transfer-Complete")),
	}
	var err error
	if o.MaxConnections, err = optionalInt(h, "Max-Connections"); err != nil {
		return o, err
	}
	ttl, err := optionalInt(h, "Options-TTL")
	if err != nil {
		return o, err
	}
	o.TTL = time.Duration(ttl) * time.Second
	if int64(ttl) > math.MaxInt64/int64(time.Second) {
		// Multiplying would wrap, even to a negative TTL that reads as
		// already expired; a TTL this long means "keep it".
		o.TTL = math.MaxInt64
	}
	if h.Get("Preview") != "" {
		if o.Preview, err = optionalInt(h, "Preview"); err != nil {
			return o, err
		}
	}
	o.Allow204 = hasToken(h.Get("Allow"), "204")
	return o, nil
}

// Header encodes o as OPTIONS response fields.
func (o Options) Header() Header {
	h := make(Header)
	set := func(name, v string) {
		if v != "" {
			h.Set(name, v)
		}
	}
	set("Methods", strings.Join(o.Methods, ", "))
	set("Service", o.Service)
	if o.ISTag != "" {
		h.Set("ISTag", `"`+o.ISTag+`"`)
	}
	set("Service-ID", o.ServiceID)
	if o.MaxConnections > 0 {
		h.Set("Max-Connections", strconv.Itoa(o.MaxConnections))
	}
	if o.TTL > 0 {
		h.Set("Options-TTL", strconv.Itoa(int(o.TTL/time.Second)))
	}
	if o.Preview >= 0 {
		h.Set("Preview", strconv.Itoa(o.Preview))
	}
	if o.Allow204 {
		h.Set("Allow", "204")
	}
	set("Transfer-Preview", strings.Join(o.TransferPreview, ", "))
	set("Transfer-Ignore", strings.Join(o.TransferIgnore, ", "))
	set("Transfer-Complete", strings.Join(o.TransferComplete, ", "))
	return h
}

func optionalInt(h Header, name string) (int, error) {
	v := h.Get(name)
	if v == "" {
		return 0, nil
	}
	n, ok := parseDecimal(strings.TrimSpace(v))
	if !ok {
		return 0, malformed("options", "bad "+name+" "+strconv.Quote(v))
	}
	return n, nil
}

// hasToken reports whether the comma-separated list holds tok.
func hasToken(list, tok string) bool {
	for _, f := range splitList(list) {
		if f == tok {
			return true
		}
	}
	return false
}

func splitList(v string) []string {
	var out []string
	for _, f := range strings.Split(v, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}
