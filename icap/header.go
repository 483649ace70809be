package icap

import (
	"bufio"
	"bytes"
	"io"
	"net/textproto"
	"sort"
	"strings"
)

// Header holds ICAP header fields keyed by canonical name. Names keep the
// spelling ICAP servers use on the wire (ISTag, not Istag) when encoded.
type Header map[string][]string

// canonicalExceptions lists names whose RFC 3507 spelling (sections 4.7 and
// 4.10.2) differs from textproto's canonical form; SPE and c-icap send them
// so.
var canonicalExceptions = map[string]string{
	"Istag":       "ISTag",
	"Options-Ttl": "Options-TTL",
	"Service-Id":  "Service-ID",
}

// CanonicalKey returns the canonical spelling of a header name.
func CanonicalKey(name string) string {
	k := textproto.CanonicalMIMEHeaderKey(name)
	if e, ok := canonicalExceptions[k]; ok {
		return e
	}
	return k
}

// Get returns the first value of the named field, or "".
func (h Header) Get(name string) string {
	v := h[CanonicalKey(name)]
	if len(v) == 0 {
		return ""
	}
	return v[0]
}

// Values returns all values of the named field.
func (h Header) Values(name string) []string { return h[CanonicalKey(name)] }

// Has reports whether the named field is present.
func (h Header) Has(name string) bool { _, ok := h[CanonicalKey(name)]; return ok }

// Set replaces the named field's values with value.
func (h Header) Set(name, value string) { h[CanonicalKey(name)] = []string{value} }

// Add appends a value to the named field.
func (h Header) Add(name, value string) {
	k := CanonicalKey(name)
	h[k] = append(h[k], value)
}

// Del removes the named field.
func (h Header) Del(name string) { delete(h, CanonicalKey(name)) }

// Clone returns a deep copy of h.
func (h Header) Clone() Header {
	c := make(Header, len(h))
	for k, v := range h {
		c[k] = append([]string(nil), v...)
	}
	return c
}

// write encodes the fields in name order so that output is deterministic.
// Values containing line breaks are written as folded continuation lines,
// the form SPE uses for X-Violations-Found.
func (h Header) write(w *bufio.Writer) error {
	keys := make([]string, 0, len(h))
	for k := range h {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		for _, v := range h[k] {
			w.WriteString(k)
			w.WriteString(": ")
			lines := strings.Split(v, "\n")
			for i, l := range lines {
				if i > 0 {
					w.WriteString("\r\n\t")
				}
				w.WriteString(strings.TrimRight(l, "\r"))
			}
			if _, err := w.WriteString("\r\n"); err != nil {
				return err
			}
		}
	}
	return nil
}

// lineReader reads CRLF (or bare LF) terminated lines from a bufio.Reader
// while charging every byte against a budget, so that no line and no header
// block can grow past the configured limit.
type lineReader struct {
	br     *bufio.Reader
	budget int
	part   string
	buf    []byte
}

// readLine returns the next line without its terminator. The returned slice
// is valid until the next call.
func (lr *lineReader) readLine() ([]byte, error) {
	lr.buf = lr.buf[:0]
	for {
		frag, err := lr.br.ReadSlice('\n')
		lr.budget -= len(frag)
		if lr.budget < 0 {
			return nil, tooLarge(lr.part, "line or header block longer than the limit")
		}
		lr.buf = append(lr.buf, frag...)
		if err == bufio.ErrBufferFull {
			continue
		}
		if err != nil {
			if err == io.EOF && len(lr.buf) > 0 {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
		line := lr.buf[:len(lr.buf)-1]
		return bytes.TrimSuffix(line, []byte{'\r'}), nil
	}
}

// readHeader reads header fields up to the empty line that ends the block.
// Continuation lines (starting with space or tab) are joined to the previous
// value with a newline, which write turns back into a folded line.
func readHeader(lr *lineReader, maxFields int) (Header, error) {
	h := make(Header)
	var lastKey string
	fields := 0
	for {
		line, err := lr.readLine()
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
		if len(line) == 0 {
			return h, nil
		}
		if line[0] == ' ' || line[0] == '\t' {
			if lastKey == "" {
				return nil, malformed(lr.part, "continuation line before any field")
			}
			vals := h[lastKey]
			vals[len(vals)-1] += "\n" + strings.TrimSpace(string(line))
			continue
		}
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 {
			return nil, malformed(lr.part, "header line without a field name: "+quoteShort(line))
		}
		name := line[:colon]
		if !isToken(name) {
			return nil, malformed(lr.part, "invalid field name "+quoteShort(name))
		}
		fields++
		if fields > maxFields {
			return nil, tooLarge(lr.part, "too many header fields")
		}
		lastKey = CanonicalKey(string(name))
		h[lastKey] = append(h[lastKey], strings.TrimSpace(string(line[colon+1:])))
	}
}

// isToken reports whether b is a non-empty RFC 7230 token.
func isToken(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	for _, c := range b {
		if c <= ' ' || c >= 0x7f || strings.IndexByte(`()<>@,;:\"/[]?={}`, c) >= 0 {
			return false
		}
	}
	return true
}

// quoteShort quotes at most 64 bytes of b for error messages.
func quoteShort(b []byte) string {
	const max = 64
	if len(b) > max {
		return strings.TrimSuffix(quote(b[:max]), `"`) + `…"`
	}
	return quote(b)
}
