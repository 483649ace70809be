package icap

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// Limits bounds what the readers accept. The zero value means the defaults.
type Limits struct {
	// MaxHeaderBytes bounds the start line plus the ICAP header block.
	MaxHeaderBytes int
	// MaxHeaderFields bounds the number of ICAP header fields.
	MaxHeaderFields int
	// MaxEncapsulatedBytes bounds the encapsulated HTTP header sections
	// (req-hdr and res-hdr together).
	MaxEncapsulatedBytes int
	// MaxBodyBytes bounds the decoded body, preview and continuation together.
	MaxBodyBytes int64
}

// DefaultLimits are generous for real ICAP traffic and small enough that a
// hostile peer cannot make a reader hold much memory.
var DefaultLimits = Limits{
	MaxHeaderBytes:       64 << 10,
	MaxHeaderFields:      128,
	MaxEncapsulatedBytes: 64 << 10,
	MaxBodyBytes:         64 << 20,
}

func (l Limits) withDefaults() Limits {
	if l.MaxHeaderBytes <= 0 {
		l.MaxHeaderBytes = DefaultLimits.MaxHeaderBytes
	}
	if l.MaxHeaderFields <= 0 {
		l.MaxHeaderFields = DefaultLimits.MaxHeaderFields
	}
	if l.MaxEncapsulatedBytes <= 0 {
		l.MaxEncapsulatedBytes = DefaultLimits.MaxEncapsulatedBytes
	}
	if l.MaxBodyBytes <= 0 {
		l.MaxBodyBytes = DefaultLimits.MaxBodyBytes
	}
	return l
}

// Request is an ICAP request (RFC 3507 section 4.3).
type Request struct {
	Method string // OPTIONS, REQMOD, RESPMOD
	URI    string // as on the request line: icap://host:port/service
	Header Header
	// ReqHdr and ResHdr are the encapsulated HTTP header blocks, raw and
	// ending with the empty line; nil when the section is absent.
	ReqHdr []byte
	ResHdr []byte
	// Body is the decoded encapsulated body; nil means null-body.
	Body []byte
	// Preview is how many body bytes go in the preview (the Preview header);
	// -1 means no preview. NewRequest sets -1.
	Preview int
	// IEOF is set by ReadRequest when the preview carried the whole body.
	IEOF bool
}

// NewRequest returns a request with an empty header and no preview.
func NewRequest(method, uri string) *Request {
	return &Request{Method: method, URI: uri, Header: make(Header), Preview: -1}
}

// Response is an ICAP response (RFC 3507 section 4.3.3).
type Response struct {
	StatusCode int
	Reason     string
	Header     Header
	ReqHdr     []byte
	ResHdr     []byte
	Body       []byte // nil means null-body
}

// section is one entry of the Encapsulated header.
type section struct {
	name string
	off  int
}

func isBodySection(name string) bool {
	switch name {
	case "req-body", "res-body", "null-body", "opt-body":
		return true
	}
	return false
}

// parseEncapsulated validates an Encapsulated value: known names, offsets
// starting at 0 and never decreasing, header sections first, and exactly one
// body entry, last.
func parseEncapsulated(v string) ([]section, error) {
	const part = "encapsulated"
	if strings.TrimSpace(v) == "" {
		return nil, malformed(part, "empty Encapsulated header")
	}
	entries := strings.Split(v, ",")
	secs := make([]section, 0, len(entries))
	seen := map[string]bool{}
	for i, e := range entries {
		name, off, ok := strings.Cut(strings.TrimSpace(e), "=")
		if !ok {
			return nil, malformed(part, "entry without offset: "+strconv.Quote(e))
		}
		switch name {
		case "req-hdr", "res-hdr", "req-body", "res-body", "null-body", "opt-body":
		default:
			return nil, malformed(part, "unknown section "+strconv.Quote(name))
		}
		if seen[name] {
			return nil, malformed(part, "section "+name+" listed twice")
		}
		seen[name] = true
		n, ok := parseDecimal(off)
		if !ok {
			return nil, malformed(part, "bad offset "+strconv.Quote(off))
		}
		if i == 0 && n != 0 {
			return nil, malformed(part, "first section does not start at offset 0")
		}
		if i > 0 && n < secs[i-1].off {
			return nil, malformed(part, "offsets decrease")
		}
		if isBodySection(name) != (i == len(entries)-1) {
			return nil, malformed(part, "the body entry must be last and only last")
		}
		secs = append(secs, section{name, n})
	}
	return secs, nil
}

// encapsulatedValue builds the Encapsulated value for the given sections.
func encapsulatedValue(reqHdr, resHdr []byte, bodyName string) string {
	var b strings.Builder
	off := 0
	if reqHdr != nil {
		fmt.Fprintf(&b, "req-hdr=%d, ", off)
		off += len(reqHdr)
	}
	if resHdr != nil {
		fmt.Fprintf(&b, "res-hdr=%d, ", off)
		off += len(resHdr)
	}
	fmt.Fprintf(&b, "%s=%d", bodyName, off)
	return b.String()
}

// bodyName says which body entry a message with these sections carries.
func bodyName(reqHdr, resHdr, body []byte) string {
	switch {
	case body == nil:
		return "null-body"
	case resHdr != nil:
		return "res-body"
	case reqHdr != nil:
		return "req-body"
	default:
		return "opt-body"
	}
}

// readSections reads the encapsulated HTTP header sections and, when the
// message has one, the chunked body.
func readSections(br *bufio.Reader, encap string, lim Limits) (reqHdr, resHdr, body []byte, ieof bool, err error) {
	if encap == "" {
		return nil, nil, nil, false, nil
	}
	secs, err := parseEncapsulated(encap)
	if err != nil {
		return nil, nil, nil, false, err
	}
	last := secs[len(secs)-1]
	if last.off > lim.MaxEncapsulatedBytes {
		return nil, nil, nil, false, tooLarge("encapsulated", "header sections larger than the limit")
	}
	for i, s := range secs[:len(secs)-1] {
		buf := make([]byte, secs[i+1].off-s.off)
		if _, err := io.ReadFull(br, buf); err != nil {
			return nil, nil, nil, false, unexpected(err)
		}
		if !bytes.HasSuffix(buf, []byte("\r\n\r\n")) && !bytes.HasSuffix(buf, []byte("\n\n")) {
			return nil, nil, nil, false, malformed("encapsulated", s.name+" does not end with an empty line")
		}
		if s.name == "req-hdr" {
			reqHdr = buf
		} else {
			resHdr = buf
		}
	}
	if last.name == "null-body" {
		return reqHdr, resHdr, nil, false, nil
	}
	body, ieof, err = readChunks(br, nil, lim.MaxBodyBytes)
	return reqHdr, resHdr, body, ieof, err
}

// maxChunkLine bounds one chunk-size line, extensions included.
const maxChunkLine = 4096

// readChunks decodes a chunked body up to its last chunk and appends it to
// dst. It reports whether the last chunk carried the ieof extension.
func readChunks(br *bufio.Reader, dst []byte, max int64) ([]byte, bool, error) {
	buf := bytes.NewBuffer(dst)
	lr := &lineReader{br: br, part: "chunk"}
	for {
		lr.budget = maxChunkLine
		line, err := lr.readLine()
		if err != nil {
			return nil, false, unexpected(err)
		}
		sizeStr, ext, _ := strings.Cut(string(line), ";")
		sizeStr = strings.TrimSpace(sizeStr)
		size, perr := strconv.ParseUint(sizeStr, 16, 62)
		if errors.Is(perr, strconv.ErrRange) {
			// Well-formed hex, just more than any limit allows.
			return nil, false, tooLarge("chunk", "chunk size "+quoteShort(line)+" out of range")
		}
		if perr != nil || sizeStr == "" {
			return nil, false, malformed("chunk", "bad chunk size "+quoteShort(line))
		}
		if size == 0 {
			ieof := strings.TrimSpace(ext) == "ieof"
			if err := skipTrailer(lr); err != nil {
				return nil, false, err
			}
			body := buf.Bytes()
			if body == nil {
				// An empty body is not a null-body: "Preview: 0" sends
				// exactly this and still expects a continuation.
				body = []byte{}
			}
			return body, ieof, nil
		}
		if int64(buf.Len())+int64(size) > max {
			return nil, false, tooLarge("chunk", "body larger than the limit")
		}
		// CopyN grows the buffer as bytes arrive, so a huge announced
		// size costs nothing until the peer really sends it.
		if _, err := io.CopyN(buf, br, int64(size)); err != nil {
			return nil, false, unexpected(err)
		}
		// Exactly CRLF: with a bare LF accepted here, a chunk one byte
		// short of its announced size would pass, its data ending in CR.
		var end [2]byte
		if _, err := io.ReadFull(br, end[:]); err != nil {
			return nil, false, unexpected(err)
		}
		if end != [2]byte{'\r', '\n'} {
			return nil, false, malformed("chunk", "chunk data not followed by CRLF")
		}
	}
}

// skipTrailer reads the (normally empty) trailer after the last chunk.
func skipTrailer(lr *lineReader) error {
	lr.budget = maxChunkLine
	for {
		line, err := lr.readLine()
		if err != nil {
			return unexpected(err)
		}
		if len(line) == 0 {
			return nil
		}
	}
}

// unexpected turns a clean EOF in the middle of a message into
// io.ErrUnexpectedEOF; a peer that closes between messages is not an error
// of the message, one that closes inside it is.
func unexpected(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

func writeChunk(w *bufio.Writer, p []byte) {
	if len(p) == 0 {
		return
	}
	fmt.Fprintf(w, "%x\r\n", len(p))
	w.Write(p)
	w.WriteString("\r\n")
}

// ReadRequest reads one request. When the request has a preview that did
// not hold the whole body (IEOF false), Body holds only the preview: the
// server answers 100 Continue and calls ReadContinuation, or answers at once.
// It returns io.EOF when the peer closed before the first byte.
func ReadRequest(br *bufio.Reader, lim Limits) (*Request, error) {
	lim = lim.withDefaults()
	lr := &lineReader{br: br, budget: lim.MaxHeaderBytes, part: "request line"}
	line, err := lr.readLine()
	if err != nil {
		return nil, err
	}
	method, rest, ok1 := strings.Cut(string(line), " ")
	uri, proto, ok2 := strings.Cut(rest, " ")
	if !ok1 || !ok2 || !validRequestLine(method, uri) {
		return nil, malformed("request line", quoteShort(line))
	}
	if !isICAP1(proto) {
		return nil, malformed("request line", "unsupported protocol "+strconv.Quote(proto))
	}
	lr.part = "header"
	h, err := readHeader(lr, lim.MaxHeaderFields)
	if err != nil {
		return nil, err
	}
	req := &Request{Method: method, URI: uri, Header: h, Preview: -1}
	if v := h.Get("Preview"); v != "" {
		n, ok := parseDecimal(v)
		if !ok {
			return nil, malformed("header", "bad Preview "+strconv.Quote(v))
		}
		req.Preview = n
	}
	req.ReqHdr, req.ResHdr, req.Body, req.IEOF, err = readSections(br, h.Get("Encapsulated"), lim)
	if err != nil {
		return nil, err
	}
	if req.Preview >= 0 && req.Body != nil && len(req.Body) > req.Preview {
		return nil, malformed("chunk", fmt.Sprintf("preview of %d bytes exceeds Preview: %d", len(req.Body), req.Preview))
	}
	if req.Preview < 0 || req.Body == nil {
		req.IEOF = true // nothing more will follow
	}
	return req, nil
}

// ReadContinuation reads the rest of a previewed body after the server sent
// 100 Continue, appending it to r.Body.
func ReadContinuation(br *bufio.Reader, r *Request, lim Limits) error {
	lim = lim.withDefaults()
	if r.IEOF {
		return nil
	}
	body, _, err := readChunks(br, r.Body, lim.MaxBodyBytes)
	if err != nil {
		return err
	}
	r.Body, r.IEOF = body, true
	return nil
}

// parseDecimal accepts only ASCII digits, at most 18 of them so that the
// value fits an int64; strconv.Atoi would also take "+5".
func parseDecimal(s string) (int, bool) {
	if s == "" || len(s) > 18 {
		return 0, false
	}
	n := 0
	for _, c := range []byte(s) {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int(c-'0')
	}
	return n, true
}

// validRequestLine reports whether method and uri can be written on a
// request line without breaking it.
func validRequestLine(method, uri string) bool {
	return isToken([]byte(method)) && uri != "" && !strings.ContainsFunc(uri, func(r rune) bool { return r <= ' ' || r == 0x7f })
}

// isICAP1 accepts ICAP/1.x.
func isICAP1(proto string) bool {
	minor, ok := strings.CutPrefix(proto, "ICAP/1.")
	if !ok || minor == "" {
		return false
	}
	for _, c := range minor {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// WriteRequest encodes r, setting Encapsulated and Preview from its fields.
// With a preview shorter than the body it writes only the preview and
// returns true: the caller flushes, waits for 100 Continue and then calls
// WriteContinuation. The caller flushes w.
func WriteRequest(w *bufio.Writer, r *Request) (needContinue bool, err error) {
	if !validRequestLine(r.Method, r.URI) {
		return false, fmt.Errorf("icap: cannot write request line for method %q, URI %q", r.Method, r.URI)
	}
	h := r.Header.Clone()
	if h == nil {
		h = make(Header)
	}
	h.Set("Encapsulated", encapsulatedValue(r.ReqHdr, r.ResHdr, bodyName(r.ReqHdr, r.ResHdr, r.Body)))
	if r.Preview >= 0 {
		h.Set("Preview", strconv.Itoa(r.Preview))
	} else {
		h.Del("Preview")
	}
	fmt.Fprintf(w, "%s %s ICAP/1.0\r\n", r.Method, r.URI)
	h.write(w)
	w.WriteString("\r\n")
	w.Write(r.ReqHdr)
	w.Write(r.ResHdr)
	if r.Body != nil {
		switch {
		case r.Preview < 0:
			writeChunk(w, r.Body)
			w.WriteString("0\r\n\r\n")
		case len(r.Body) <= r.Preview:
			writeChunk(w, r.Body)
			w.WriteString("0; ieof\r\n\r\n")
		default:
			writeChunk(w, r.Body[:r.Preview])
			w.WriteString("0\r\n\r\n")
			needContinue = true
		}
	}
	// bufio.Writer keeps the first write error; report it once here.
	_, err = w.Write(nil)
	return needContinue, err
}

// WriteContinuation writes the body bytes after the preview and the last
// chunk. The caller flushes w.
func WriteContinuation(w *bufio.Writer, r *Request) error {
	if r.Preview >= 0 && r.Preview < len(r.Body) {
		writeChunk(w, r.Body[r.Preview:])
	}
	_, err := w.WriteString("0\r\n\r\n")
	return err
}

// ReadResponse reads one response. A 100 Continue carries no Encapsulated
// header; other responses without one are taken as null-body.
func ReadResponse(br *bufio.Reader, lim Limits) (*Response, error) {
	lim = lim.withDefaults()
	lr := &lineReader{br: br, budget: lim.MaxHeaderBytes, part: "status line"}
	line, err := lr.readLine()
	if err != nil {
		return nil, err
	}
	proto, rest, _ := strings.Cut(string(line), " ")
	code, reason, _ := strings.Cut(rest, " ")
	if !isICAP1(proto) {
		return nil, malformed("status line", quoteShort(line))
	}
	status, ok := parseDecimal(code)
	if !ok || len(code) != 3 || status < 100 {
		return nil, malformed("status line", "bad status code in "+quoteShort(line))
	}
	lr.part = "header"
	h, err := readHeader(lr, lim.MaxHeaderFields)
	if err != nil {
		return nil, unexpected(err)
	}
	resp := &Response{StatusCode: status, Reason: reason, Header: h}
	if status == 100 {
		return resp, nil
	}
	resp.ReqHdr, resp.ResHdr, resp.Body, _, err = readSections(br, h.Get("Encapsulated"), lim)
	if err != nil {
		return nil, err
	}
	return resp, nil
}

// WriteResponse encodes resp; the caller flushes w. A 100 Continue is
// written without Encapsulated.
func WriteResponse(w *bufio.Writer, resp *Response) error {
	reason := resp.Reason
	if reason == "" {
		reason = StatusText(resp.StatusCode)
	}
	h := resp.Header.Clone()
	if h == nil {
		h = make(Header)
	}
	if resp.StatusCode != 100 {
		h.Set("Encapsulated", encapsulatedValue(resp.ReqHdr, resp.ResHdr, bodyName(resp.ReqHdr, resp.ResHdr, resp.Body)))
	}
	fmt.Fprintf(w, "ICAP/1.0 %03d %s\r\n", resp.StatusCode, reason)
	h.write(w)
	w.WriteString("\r\n")
	w.Write(resp.ReqHdr)
	w.Write(resp.ResHdr)
	if resp.Body != nil {
		writeChunk(w, resp.Body)
		w.WriteString("0\r\n\r\n")
	}
	_, err := w.Write(nil)
	return err
}

// StatusText returns the reason phrase RFC 3507 uses for an ICAP status.
func StatusText(code int) string {
	switch code {
	case 100:
		return "Continue"
	case 200:
		return "OK"
	case 204:
		return "No Content"
	case 400:
		return "Bad Request"
	case 404:
		return "ICAP Service Not Found"
	case 405:
		return "Method Not Allowed For Service"
	case 408:
		return "Request Timeout"
	case 500:
		return "Server Error"
	case 501:
		return "Method Not Implemented"
	case 502:
		return "Bad Gateway"
	case 503:
		return "Service Overloaded"
	case 505:
		return "ICAP Version Not Supported"
	}
	return "Status " + strconv.Itoa(code)
}
