package icap

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"reflect"
	"runtime"
	"strconv"
	"strings"
	"testing"
)

// Encapsulated HTTP sections shared by the fixtures below. Offsets in the
// messages are computed from their lengths so that editing a fixture cannot
// silently break the Encapsulated arithmetic.
const (
	httpReq  = "GET /index.html HTTP/1.1\r\nHost: www.example.com\r\n\r\n"
	httpPost = "POST /upload HTTP/1.1\r\nHost: www.example.com\r\nContent-Length: 11\r\n\r\n"
	httpRes  = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 11\r\n\r\n"
)

// encapOffset formats an Encapsulated offset.
func encapOffset(n int) string { return strconv.Itoa(n) }

var (
	optionsReq = "OPTIONS icap://icap.example/avscan ICAP/1.0\r\n" +
		"Host: icap.example\r\n" +
		"User-Agent: icapwatch\r\n" +
		"Encapsulated: null-body=0\r\n" +
		"\r\n"

	respmodReq = "RESPMOD icap://icap.example/avscan ICAP/1.0\r\n" +
		"Host: icap.example\r\n" +
		"Allow: 204\r\n" +
		"Encapsulated: req-hdr=0, res-hdr=" + encapOffset(len(httpReq)) +
		", res-body=" + encapOffset(len(httpReq)+len(httpRes)) + "\r\n" +
		"\r\n" +
		httpReq + httpRes +
		"5\r\nhello\r\n" +
		"6\r\n world\r\n" +
		"0\r\n\r\n"

	reqmodReq = "REQMOD icap://icap.example/reqmod ICAP/1.0\r\n" +
		"Host: icap.example\r\n" +
		"Encapsulated: req-hdr=0, req-body=" + encapOffset(len(httpPost)) + "\r\n" +
		"\r\n" +
		httpPost +
		"b\r\nhello world\r\n" +
		"0\r\n\r\n"

	// previewReq holds only the preview; previewCont is what the client
	// sends after 100 Continue.
	previewReq = "RESPMOD icap://icap.example/avscan ICAP/1.0\r\n" +
		"Host: icap.example\r\n" +
		"Preview: 4\r\n" +
		"Encapsulated: res-hdr=0, res-body=" + encapOffset(len(httpRes)) + "\r\n" +
		"\r\n" +
		httpRes +
		"4\r\nhell\r\n" +
		"0\r\n\r\n"
	previewCont = "7\r\no world\r\n0\r\n\r\n"

	previewIEOFReq = "RESPMOD icap://icap.example/avscan ICAP/1.0\r\n" +
		"Host: icap.example\r\n" +
		"Preview: 1024\r\n" +
		"Encapsulated: res-hdr=0, res-body=" + encapOffset(len(httpRes)) + "\r\n" +
		"\r\n" +
		httpRes +
		"b\r\nhello world\r\n" +
		"0; ieof\r\n\r\n"

	// previewZeroReq is the common "Preview: 0" probe: headers only, then
	// the whole body after 100 Continue.
	previewZeroReq = "RESPMOD icap://icap.example/avscan ICAP/1.0\r\n" +
		"Host: icap.example\r\n" +
		"Preview: 0\r\n" +
		"Encapsulated: res-hdr=0, res-body=" + encapOffset(len(httpRes)) + "\r\n" +
		"\r\n" +
		httpRes +
		"0\r\n\r\n"

	optionsResp = "ICAP/1.0 200 OK\r\n" +
		"Methods: RESPMOD, REQMOD\r\n" +
		"Service: Example AV 1.0\r\n" +
		"ISTag: \"W3E4R7U9-L2E4-2\"\r\n" +
		"Max-Connections: 100\r\n" +
		"Options-TTL: 3600\r\n" +
		"Allow: 204\r\n" +
		"Preview: 1024\r\n" +
		"Encapsulated: null-body=0\r\n" +
		"\r\n"

	respmodResp = "ICAP/1.0 200 OK\r\n" +
		"ISTag: \"W3E4R7U9-L2E4-2\"\r\n" +
		"Encapsulated: res-hdr=0, res-body=" + encapOffset(len(httpRes)) + "\r\n" +
		"\r\n" +
		httpRes +
		"3\r\nblo\r\n" +
		"8\r\nck page!\r\n" +
		"0\r\n\r\n"

	reqmodResp = "ICAP/1.0 200 OK\r\n" +
		"ISTag: \"W3E4R7U9-L2E4-2\"\r\n" +
		"Encapsulated: req-hdr=0, null-body=" + encapOffset(len(httpReq)) + "\r\n" +
		"\r\n" +
		httpReq

	noContentResp = "ICAP/1.0 204 No Content\r\n" +
		"ISTag: \"W3E4R7U9-L2E4-2\"\r\n" +
		"Encapsulated: null-body=0\r\n" +
		"\r\n"

	continueResp = "ICAP/1.0 100 Continue\r\n\r\n"
)

func readerOf(s string) *bufio.Reader { return bufio.NewReader(strings.NewReader(s)) }

// sameBytes is bytes.Equal that also tells nil (an absent section or a
// null-body) from empty (a present but empty one).
func sameBytes(a, b []byte) bool { return bytes.Equal(a, b) && (a == nil) == (b == nil) }

func checkRequest(t *testing.T, got *Request, want Request) {
	t.Helper()
	if got.Method != want.Method || got.URI != want.URI {
		t.Errorf("request line = %q %q, want %q %q", got.Method, got.URI, want.Method, want.URI)
	}
	if !sameBytes(got.ReqHdr, want.ReqHdr) {
		t.Errorf("ReqHdr = %q, want %q", got.ReqHdr, want.ReqHdr)
	}
	if !sameBytes(got.ResHdr, want.ResHdr) {
		t.Errorf("ResHdr = %q, want %q", got.ResHdr, want.ResHdr)
	}
	if !sameBytes(got.Body, want.Body) {
		t.Errorf("Body = %q (nil %t), want %q (nil %t)", got.Body, got.Body == nil, want.Body, want.Body == nil)
	}
	if got.Preview != want.Preview {
		t.Errorf("Preview = %d, want %d", got.Preview, want.Preview)
	}
	if got.IEOF != want.IEOF {
		t.Errorf("IEOF = %t, want %t", got.IEOF, want.IEOF)
	}
}

func checkResponse(t *testing.T, got *Response, want Response) {
	t.Helper()
	if got.StatusCode != want.StatusCode || got.Reason != want.Reason {
		t.Errorf("status = %d %q, want %d %q", got.StatusCode, got.Reason, want.StatusCode, want.Reason)
	}
	if !sameBytes(got.ReqHdr, want.ReqHdr) {
		t.Errorf("ReqHdr = %q, want %q", got.ReqHdr, want.ReqHdr)
	}
	if !sameBytes(got.ResHdr, want.ResHdr) {
		t.Errorf("ResHdr = %q, want %q", got.ResHdr, want.ResHdr)
	}
	if !sameBytes(got.Body, want.Body) {
		t.Errorf("Body = %q (nil %t), want %q (nil %t)", got.Body, got.Body == nil, want.Body, want.Body == nil)
	}
}

// checkErr fails unless err wraps target. Codec errors must also be
// *ProtocolError so that callers can report which part was bad.
func wantErrIs(t *testing.T, err, target error) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Fatalf("err = %v, want %v", err, target)
	}
	if target == ErrMalformed || target == ErrTooLarge {
		var pe *ProtocolError
		if !errors.As(err, &pe) || pe.Part == "" || pe.Reason == "" {
			t.Fatalf("err = %#v, want a *ProtocolError with Part and Reason", err)
		}
		if !strings.HasPrefix(err.Error(), "icap: ") {
			t.Errorf("Error() = %q, want an icap: prefix", err.Error())
		}
	}
}

// withoutFields returns a copy of h without the named fields, for comparing
// headers that the writers rewrite in part.
func withoutFields(h Header, names ...string) Header {
	c := h.Clone()
	for _, n := range names {
		c.Del(n)
	}
	return c
}

func TestCanonicalKey(t *testing.T) {
	tests := []struct{ in, want string }{
		{"istag", "ISTag"},
		{"ISTAG", "ISTag"},
		{"IsTag", "ISTag"},
		{"ISTag", "ISTag"},
		{"encapsulated", "Encapsulated"},
		{"PREVIEW", "Preview"},
		{"x-violations-found", "X-Violations-Found"},
		{"max-connections", "Max-Connections"},
		{"options-ttl", "Options-TTL"},
		{"OPTIONS-TTL", "Options-TTL"},
		{"service-id", "Service-ID"},
		{"X-Istag", "X-Istag"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			if got := CanonicalKey(tt.in); got != tt.want {
				t.Errorf("CanonicalKey(%q) = %q, want %q", tt.in, got, tt.want)
			}
			if again := CanonicalKey(CanonicalKey(tt.in)); again != tt.want {
				t.Errorf("CanonicalKey is not idempotent: %q", again)
			}
		})
	}
}

func TestHeaderAccessors(t *testing.T) {
	h := make(Header)
	h.Set("istag", `"a"`)
	if got := h.Get("ISTAG"); got != `"a"` {
		t.Errorf("Get(ISTAG) = %q", got)
	}
	if _, ok := h["ISTag"]; !ok {
		t.Errorf("Set stored %v, want key ISTag", h)
	}
	h.Add("x-infection-found", "one")
	h.Add("X-Infection-Found", "two")
	if got := h.Values("x-INFECTION-found"); !reflect.DeepEqual(got, []string{"one", "two"}) {
		t.Errorf("Values = %q", got)
	}
	if got := h.Get("X-Infection-Found"); got != "one" {
		t.Errorf("Get returns %q, want the first value", got)
	}
	if h.Get("missing") != "" || h.Has("missing") {
		t.Error("missing field reported present")
	}

	c := h.Clone()
	c.Add("X-Infection-Found", "three")
	c.Set("ISTag", `"b"`)
	if len(h.Values("X-Infection-Found")) != 2 || h.Get("ISTag") != `"a"` {
		t.Errorf("Clone shares storage with the original: %v", h)
	}

	h.Del("ISTAG")
	if h.Has("ISTag") {
		t.Error("Del left the field")
	}
	if c := Header(nil).Clone(); c == nil || len(c) != 0 {
		t.Errorf("nil Clone = %#v, want an empty map", c)
	}
}

func TestHeaderFolding(t *testing.T) {
	tests := []struct {
		name  string
		in    string
		field string
		want  string
		wire  string // canonical encoding of the block; "" means in
	}{
		{
			name:  "SPE violations list",
			in:    "X-Violations-Found: 1\r\n\tfile.exe\r\n\tEICAR Test String\r\n\t11101\r\n\t0\r\n\r\n",
			field: "X-Violations-Found",
			want:  "1\nfile.exe\nEICAR Test String\n11101\n0",
		},
		{
			name:  "space continuation",
			in:    "X-Note: first\r\n   second  \r\n\r\n",
			field: "X-Note",
			want:  "first\nsecond",
			wire:  "X-Note: first\r\n\tsecond\r\n\r\n",
		},
		{
			name:  "empty first line",
			in:    "X-Note:\r\n\tonly\r\n\r\n",
			field: "X-Note",
			want:  "\nonly",
			wire:  "X-Note: \r\n\tonly\r\n\r\n",
		},
		{
			name:  "bare LF line ends",
			in:    "X-Note: a\n\tb\n\n",
			field: "X-Note",
			want:  "a\nb",
			wire:  "X-Note: a\r\n\tb\r\n\r\n",
		},
		{
			name:  "fold after the second value",
			in:    "X-Note: a\r\nX-Note: b\r\n\tc\r\n\r\n",
			field: "X-Note",
			want:  "a",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, err := readHeader(&lineReader{br: readerOf(tt.in), budget: 1 << 10, part: "header"}, 16)
			if err != nil {
				t.Fatal(err)
			}
			if got := h.Get(tt.field); got != tt.want {
				t.Errorf("Get(%s) = %q, want %q", tt.field, got, tt.want)
			}
			var buf bytes.Buffer
			w := bufio.NewWriter(&buf)
			if err := h.write(w); err != nil {
				t.Fatal(err)
			}
			w.WriteString("\r\n")
			w.Flush()
			wire := tt.wire
			if wire == "" {
				wire = tt.in
			}
			if buf.String() != wire {
				t.Errorf("write = %q, want %q", buf.String(), wire)
			}
			again, err := readHeader(&lineReader{br: bufio.NewReader(&buf), budget: 1 << 10, part: "header"}, 16)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(again, h) {
				t.Errorf("round trip = %q, want %q", again, h)
			}
		})
	}
}

func TestHeaderWrite(t *testing.T) {
	h := Header{
		"X-B":          {"2", "3"},
		"Encapsulated": {"null-body=0"},
		"X-Crlf":       {"a\r\nb"},
		"ISTag":        {`"t"`},
	}
	var buf bytes.Buffer
	w := bufio.NewWriter(&buf)
	if err := h.write(w); err != nil {
		t.Fatal(err)
	}
	w.Flush()
	want := "Encapsulated: null-body=0\r\n" +
		"ISTag: \"t\"\r\n" +
		"X-B: 2\r\n" +
		"X-B: 3\r\n" +
		"X-Crlf: a\r\n\tb\r\n"
	if buf.String() != want {
		t.Errorf("write = %q, want %q", buf.String(), want)
	}
}

func TestReadHeaderErrors(t *testing.T) {
	tests := []struct {
		name   string
		in     string
		budget int
		fields int
		want   error
	}{
		{"continuation first", "\tvalue\r\n\r\n", 1024, 16, ErrMalformed},
		{"space continuation first", " value\r\n\r\n", 1024, 16, ErrMalformed},
		{"no colon", "Host icap.example\r\n\r\n", 1024, 16, ErrMalformed},
		{"empty name", ": value\r\n\r\n", 1024, 16, ErrMalformed},
		{"space in name", "Bad Name: x\r\n\r\n", 1024, 16, ErrMalformed},
		{"space before colon", "Host : x\r\n\r\n", 1024, 16, ErrMalformed},
		{"separator in name", "X(y): z\r\n\r\n", 1024, 16, ErrMalformed},
		{"control byte in name", "X\x01: z\r\n\r\n", 1024, 16, ErrMalformed},
		{"non-ASCII name", "X-\xc3\xa9: z\r\n\r\n", 1024, 16, ErrMalformed},
		{"too many fields", "A: 1\r\nB: 2\r\nC: 3\r\n\r\n", 1024, 2, ErrTooLarge},
		{"block over budget", "A: " + strings.Repeat("x", 100) + "\r\n\r\n", 64, 16, ErrTooLarge},
		{"EOF before the empty line", "A: 1\r\n", 1024, 16, io.ErrUnexpectedEOF},
		{"EOF inside a line", "A: 1\r\nB:", 1024, 16, io.ErrUnexpectedEOF},
		{"no input", "", 1024, 16, io.ErrUnexpectedEOF},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := readHeader(&lineReader{br: readerOf(tt.in), budget: tt.budget, part: "header"}, tt.fields)
			wantErrIs(t, err, tt.want)
		})
	}
}

func TestLineReaderLongLines(t *testing.T) {
	// Lines longer than the bufio buffer come back in pieces from
	// ReadSlice; the budget must count all of them.
	long := strings.Repeat("y", 100)
	lr := &lineReader{br: bufio.NewReaderSize(strings.NewReader("X: "+long+"\r\n"), 16), budget: 200, part: "header"}
	line, err := lr.readLine()
	if err != nil {
		t.Fatal(err)
	}
	if string(line) != "X: "+long {
		t.Errorf("line = %q", line)
	}
	lr = &lineReader{br: bufio.NewReaderSize(strings.NewReader("X: "+long+"\r\n"), 16), budget: 50, part: "header"}
	_, err = lr.readLine()
	wantErrIs(t, err, ErrTooLarge)
}

func TestParseEncapsulated(t *testing.T) {
	tests := []struct {
		in   string
		want []section
	}{
		{"null-body=0", []section{{"null-body", 0}}},
		{"opt-body=0", []section{{"opt-body", 0}}},
		{"req-body=0", []section{{"req-body", 0}}},
		{"req-hdr=0, null-body=170", []section{{"req-hdr", 0}, {"null-body", 170}}},
		{"req-hdr=0, req-body=412", []section{{"req-hdr", 0}, {"req-body", 412}}},
		{"res-hdr=0, res-body=222", []section{{"res-hdr", 0}, {"res-body", 222}}},
		{"req-hdr=0, res-hdr=137, res-body=296", []section{{"req-hdr", 0}, {"res-hdr", 137}, {"res-body", 296}}},
		{"req-hdr=0,res-hdr=137,null-body=296", []section{{"req-hdr", 0}, {"res-hdr", 137}, {"null-body", 296}}},
		{"  req-hdr=0 ,  null-body=5  ", []section{{"req-hdr", 0}, {"null-body", 5}}},
		{"req-hdr=0, res-hdr=10, null-body=10", []section{{"req-hdr", 0}, {"res-hdr", 10}, {"null-body", 10}}},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := parseEncapsulated(tt.in)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
}

func TestParseEncapsulatedErrors(t *testing.T) {
	tests := []struct{ name, in string }{
		{"empty", ""},
		{"blank", "   "},
		{"unknown name", "req-hdr=0, foo-body=10"},
		{"wrong case", "Req-Hdr=0, null-body=10"},
		{"duplicate header", "req-hdr=0, req-hdr=10, null-body=20"},
		{"duplicate body", "null-body=0, null-body=0"},
		{"two bodies", "req-body=0, res-body=0"},
		{"decreasing offsets", "req-hdr=0, res-hdr=100, res-body=50"},
		{"body entry first", "null-body=0, req-hdr=0"},
		{"no body entry", "req-hdr=0"},
		{"headers only", "req-hdr=0, res-hdr=10"},
		{"first offset not 0", "req-hdr=5, null-body=10"},
		{"body alone not at 0", "null-body=3"},
		{"missing offset", "req-hdr, null-body=10"},
		{"empty offset", "req-hdr=, null-body=10"},
		{"negative offset", "req-hdr=0, null-body=-1"},
		{"non-numeric offset", "req-hdr=0, null-body=ten"},
		{"spaces around =", "req-hdr = 0, null-body = 10"},
		{"hex offset", "req-hdr=0, null-body=0x10"},
		{"offset overflow", "req-hdr=0, null-body=99999999999999999999999"},
		{"empty entry", "req-hdr=0,, null-body=10"},
		{"trailing comma", "null-body=0,"},
		{"semicolons", "req-hdr=0; null-body=10"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			secs, err := parseEncapsulated(tt.in)
			if secs != nil {
				t.Errorf("sections %v returned with an error", secs)
			}
			wantErrIs(t, err, ErrMalformed)
		})
	}
}

func TestEncapsulatedValue(t *testing.T) {
	tests := []struct {
		name           string
		reqHdr, resHdr []byte
		body           []byte
		want           string
	}{
		{"nothing", nil, nil, nil, "null-body=0"},
		{"options body", nil, nil, []byte("x"), "opt-body=0"},
		{"req-hdr only", []byte(httpReq), nil, nil, "req-hdr=0, null-body=" + encapOffset(len(httpReq))},
		{"reqmod", []byte(httpPost), nil, []byte{}, "req-hdr=0, req-body=" + encapOffset(len(httpPost))},
		{"respmod", []byte(httpReq), []byte(httpRes), []byte("x"),
			"req-hdr=0, res-hdr=" + encapOffset(len(httpReq)) + ", res-body=" + encapOffset(len(httpReq)+len(httpRes))},
		{"res-hdr only", nil, []byte(httpRes), nil, "res-hdr=0, null-body=" + encapOffset(len(httpRes))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := encapsulatedValue(tt.reqHdr, tt.resHdr, bodyName(tt.reqHdr, tt.resHdr, tt.body))
			if got != tt.want {
				t.Errorf("got %q, want %q", got, tt.want)
			}
			if _, err := parseEncapsulated(got); err != nil {
				t.Errorf("own output does not parse: %v", err)
			}
		})
	}
}

func TestReadChunks(t *testing.T) {
	tests := []struct {
		name string
		in   string
		dst  []byte
		want string
		ieof bool
		rest string // what must be left unread
	}{
		{name: "one chunk", in: "5\r\nhello\r\n0\r\n\r\n", want: "hello"},
		{name: "several chunks", in: "1\r\nh\r\n2\r\nel\r\n2\r\nlo\r\n0\r\n\r\n", want: "hello"},
		{name: "empty body", in: "0\r\n\r\n", want: ""},
		{name: "upper-case hex", in: "A\r\n0123456789\r\n0\r\n\r\n", want: "0123456789"},
		{name: "lower-case hex", in: "a\r\n0123456789\r\n0\r\n\r\n", want: "0123456789"},
		{name: "leading zeros", in: "0005\r\nhello\r\n000\r\n\r\n", want: "hello"},
		{name: "chunk extensions", in: "5;name=value\r\nhello\r\n6 ; x=\"y\"\r\n world\r\n0; foo=bar\r\n\r\n", want: "hello world"},
		{name: "ieof", in: "5\r\nhello\r\n0; ieof\r\n\r\n", want: "hello", ieof: true},
		{name: "ieof without space", in: "0;ieof\r\n\r\n", want: "", ieof: true},
		{name: "other extension is not ieof", in: "0; ieofx\r\n\r\n", want: ""},
		{name: "trailer", in: "5\r\nhello\r\n0\r\nX-Trailer: a\r\nX-Other: b\r\n\r\n", want: "hello"},
		{name: "bare LF on size lines", in: "5\nhello\r\n0\n\n", want: "hello"},
		{name: "framing inside data", in: "7\r\n0\r\n\r\n\r\n\r\n0\r\n\r\n", want: "0\r\n\r\n\r\n"},
		{name: "binary data", in: "4\r\n\x00\xff\r\n\r\n0\r\n\r\n", want: "\x00\xff\r\n"},
		{name: "appends to dst", in: "5\r\nworld\r\n0\r\n\r\n", dst: []byte("hello "), want: "hello world"},
		{name: "stops after the message", in: "0\r\n\r\nICAP/1.0", want: "", rest: "ICAP/1.0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			br := readerOf(tt.in)
			got, ieof, err := readChunks(br, tt.dst, 1<<20)
			if err != nil {
				t.Fatal(err)
			}
			if got == nil || string(got) != tt.want {
				t.Errorf("body = %q (nil %t), want %q", got, got == nil, tt.want)
			}
			if ieof != tt.ieof {
				t.Errorf("ieof = %t, want %t", ieof, tt.ieof)
			}
			rest, _ := io.ReadAll(br)
			if string(rest) != tt.rest {
				t.Errorf("left %q unread, want %q", rest, tt.rest)
			}
		})
	}
}

func TestReadChunksErrors(t *testing.T) {
	tests := []struct {
		name string
		in   string
		dst  string
		max  int64
		want error
	}{
		{"non-hex size", "zz\r\nhello\r\n0\r\n\r\n", "", 1 << 20, ErrMalformed},
		{"empty size", "\r\nhello\r\n0\r\n\r\n", "", 1 << 20, ErrMalformed},
		{"extension without size", "; ieof\r\n\r\n", "", 1 << 20, ErrMalformed},
		{"negative size", "-1\r\nh\r\n0\r\n\r\n", "", 1 << 20, ErrMalformed},
		{"plus sign", "+1\r\nh\r\n0\r\n\r\n", "", 1 << 20, ErrMalformed},
		{"0x prefix", "0x10\r\n0123456789abcdef\r\n0\r\n\r\n", "", 1 << 20, ErrMalformed},
		{"underscore", "1_0\r\n0123456789abcdef\r\n0\r\n\r\n", "", 1 << 20, ErrMalformed},
		{"space inside size", "1 0\r\n0123456789abcdef\r\n0\r\n\r\n", "", 1 << 20, ErrMalformed},
		{"data not followed by CRLF", "5\r\nhelloX\r\n0\r\n\r\n", "", 1 << 20, ErrMalformed},
		// A bare LF after the data would let a chunk one byte short of its
		// size pass with a CR at the end of its data.
		{"data followed by bare LF", "6\r\nhello\r\n0\r\n\r\n", "", 1 << 20, ErrMalformed},
		{"data longer than size", "4\r\nhello\r\n0\r\n\r\n", "", 1 << 20, ErrMalformed},
		{"body over the limit", "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", "", 10, ErrTooLarge},
		{"dst counts toward the limit", "6\r\n world\r\n0\r\n\r\n", "hello", 10, ErrTooLarge},
		{"size line too long", "5;" + strings.Repeat("x", maxChunkLine) + "\r\nhello\r\n0\r\n\r\n", "", 1 << 20, ErrTooLarge},
		{"trailer too long", "0\r\nX: " + strings.Repeat("x", maxChunkLine) + "\r\n\r\n", "", 1 << 20, ErrTooLarge},
		{"size past 62 bits", "ffffffffffffffffffff\r\n", "", 1 << 20, ErrTooLarge},
		{"no input", "", "", 1 << 20, io.ErrUnexpectedEOF},
		{"EOF in size line", "5", "", 1 << 20, io.ErrUnexpectedEOF},
		{"EOF in data", "5\r\nhel", "", 1 << 20, io.ErrUnexpectedEOF},
		{"EOF before data CRLF", "5\r\nhello", "", 1 << 20, io.ErrUnexpectedEOF},
		{"EOF before last chunk", "5\r\nhello\r\n", "", 1 << 20, io.ErrUnexpectedEOF},
		{"EOF before trailer end", "5\r\nhello\r\n0\r\n", "", 1 << 20, io.ErrUnexpectedEOF},
		{"EOF inside trailer", "0\r\nX-Trailer: a\r\n", "", 1 << 20, io.ErrUnexpectedEOF},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var dst []byte
			if tt.dst != "" {
				dst = []byte(tt.dst)
			}
			body, _, err := readChunks(readerOf(tt.in), dst, tt.max)
			if body != nil {
				t.Errorf("body %q returned with an error", body)
			}
			wantErrIs(t, err, tt.want)
		})
	}
}

// A peer may announce any chunk size; the reader must refuse or fail on
// what really arrives without first allocating what was announced.
func TestReadChunksHugeSize(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want error
	}{
		{"beyond the limit", "fffffffffff\r\n", ErrTooLarge},
		{"beyond 62 bits", "fffffffffffffffffffffff\r\nabc", ErrTooLarge},
		{"within the limit but not sent", "3ffffff\r\nabc", io.ErrUnexpectedEOF},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			_, _, err := readChunks(readerOf(tt.in), nil, DefaultLimits.MaxBodyBytes)
			runtime.ReadMemStats(&after)
			wantErrIs(t, err, tt.want)
			if n := after.TotalAlloc - before.TotalAlloc; n > 1<<20 {
				t.Errorf("allocated %d bytes for a %d byte input", n, len(tt.in))
			}
		})
	}

	in := "REQMOD icap://icap.example/reqmod ICAP/1.0\r\n" +
		"Encapsulated: req-body=0\r\n\r\n" +
		"fffffffffff\r\n"
	_, err := ReadRequest(readerOf(in), Limits{})
	wantErrIs(t, err, ErrTooLarge)
}

func TestReadRequest(t *testing.T) {
	const uri = "icap://icap.example/avscan"
	tests := []struct {
		name   string
		in     string
		want   Request
		fields map[string]string
	}{
		{
			name:   "OPTIONS null-body",
			in:     optionsReq,
			want:   Request{Method: "OPTIONS", URI: uri, Preview: -1, IEOF: true},
			fields: map[string]string{"Host": "icap.example", "user-agent": "icapwatch", "Encapsulated": "null-body=0"},
		},
		{
			name: "OPTIONS without Encapsulated",
			in:   "OPTIONS " + uri + " ICAP/1.0\r\nHost: icap.example\r\n\r\n",
			want: Request{Method: "OPTIONS", URI: uri, Preview: -1, IEOF: true},
		},
		{
			name: "OPTIONS with opt-body",
			in:   "OPTIONS " + uri + " ICAP/1.0\r\nEncapsulated: opt-body=0\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
			want: Request{Method: "OPTIONS", URI: uri, Body: []byte("abc"), Preview: -1, IEOF: true},
		},
		{
			name: "RESPMOD req-hdr res-hdr res-body",
			in:   respmodReq,
			want: Request{
				Method: "RESPMOD", URI: uri,
				ReqHdr: []byte(httpReq), ResHdr: []byte(httpRes), Body: []byte("hello world"),
				Preview: -1, IEOF: true,
			},
			fields: map[string]string{"Allow": "204"},
		},
		{
			name: "REQMOD req-body",
			in:   reqmodReq,
			want: Request{
				Method: "REQMOD", URI: "icap://icap.example/reqmod",
				ReqHdr: []byte(httpPost), Body: []byte("hello world"),
				Preview: -1, IEOF: true,
			},
		},
		{
			name: "REQMOD req-hdr null-body",
			in: "REQMOD " + uri + " ICAP/1.0\r\nEncapsulated: req-hdr=0, null-body=" + encapOffset(len(httpReq)) + "\r\n\r\n" +
				httpReq,
			want: Request{Method: "REQMOD", URI: uri, ReqHdr: []byte(httpReq), Preview: -1, IEOF: true},
		},
		{
			name: "empty body is not null-body",
			in: "REQMOD " + uri + " ICAP/1.0\r\nEncapsulated: req-hdr=0, req-body=" + encapOffset(len(httpReq)) + "\r\n\r\n" +
				httpReq + "0\r\n\r\n",
			want: Request{Method: "REQMOD", URI: uri, ReqHdr: []byte(httpReq), Body: []byte{}, Preview: -1, IEOF: true},
		},
		{
			name: "chunk extensions",
			in: "REQMOD " + uri + " ICAP/1.0\r\nEncapsulated: req-body=0\r\n\r\n" +
				"5;name=value\r\nhello\r\n6 ; x=\"y\"\r\n world\r\n0; foo=bar\r\n\r\n",
			want: Request{Method: "REQMOD", URI: uri, Body: []byte("hello world"), Preview: -1, IEOF: true},
		},
		{
			name: "preview holds the body",
			in:   previewIEOFReq,
			want: Request{
				Method: "RESPMOD", URI: uri,
				ResHdr: []byte(httpRes), Body: []byte("hello world"),
				Preview: 1024, IEOF: true,
			},
		},
		{
			name: "preview exactly the body",
			in: "RESPMOD " + uri + " ICAP/1.0\r\nPreview: 11\r\nEncapsulated: res-hdr=0, res-body=" + encapOffset(len(httpRes)) + "\r\n\r\n" +
				httpRes + "5\r\nhello\r\n6\r\n world\r\n0; ieof\r\n\r\n",
			want: Request{
				Method: "RESPMOD", URI: uri,
				ResHdr: []byte(httpRes), Body: []byte("hello world"),
				Preview: 11, IEOF: true,
			},
		},
		{
			name: "preview shorter than the body",
			in:   previewReq + previewCont,
			want: Request{
				Method: "RESPMOD", URI: uri,
				ResHdr: []byte(httpRes), Body: []byte("hell"),
				Preview: 4,
			},
		},
		{
			name: "preview 0 without ieof",
			in:   previewZeroReq,
			want: Request{Method: "RESPMOD", URI: uri, ResHdr: []byte(httpRes), Body: []byte{}, Preview: 0},
		},
		{
			name: "preview 0 with ieof",
			in: "RESPMOD " + uri + " ICAP/1.0\r\nPreview: 0\r\nEncapsulated: res-hdr=0, res-body=" + encapOffset(len(httpRes)) + "\r\n\r\n" +
				httpRes + "0; ieof\r\n\r\n",
			want: Request{Method: "RESPMOD", URI: uri, ResHdr: []byte(httpRes), Body: []byte{}, Preview: 0, IEOF: true},
		},
		{
			name: "preview with null-body",
			in:   "REQMOD " + uri + " ICAP/1.0\r\nPreview: 10\r\nEncapsulated: req-hdr=0, null-body=" + encapOffset(len(httpReq)) + "\r\n\r\n" + httpReq,
			want: Request{Method: "REQMOD", URI: uri, ReqHdr: []byte(httpReq), Preview: 10, IEOF: true},
		},
		{
			name: "empty Preview value is no preview",
			in:   "OPTIONS " + uri + " ICAP/1.0\r\nPreview:\r\nEncapsulated: null-body=0\r\n\r\n",
			want: Request{Method: "OPTIONS", URI: uri, Preview: -1, IEOF: true},
		},
		{
			name: "bare LF line ends",
			in: "RESPMOD " + uri + " ICAP/1.0\nHost: icap.example\nEncapsulated: res-hdr=0, res-body=20\n\n" +
				"HTTP/1.1 200 OK\nX:\n\n" + "5\nhello\r\n0\n\n",
			want: Request{
				Method: "RESPMOD", URI: uri,
				ResHdr: []byte("HTTP/1.1 200 OK\nX:\n\n"), Body: []byte("hello"),
				Preview: -1, IEOF: true,
			},
		},
		{
			name: "ICAP/1.1",
			in:   "OPTIONS " + uri + " ICAP/1.1\r\nEncapsulated: null-body=0\r\n\r\n",
			want: Request{Method: "OPTIONS", URI: uri, Preview: -1, IEOF: true},
		},
		{
			name:   "folded field",
			in:     "OPTIONS " + uri + " ICAP/1.0\r\nX-Note: a\r\n\tb\r\nEncapsulated: null-body=0\r\n\r\n",
			want:   Request{Method: "OPTIONS", URI: uri, Preview: -1, IEOF: true},
			fields: map[string]string{"X-Note": "a\nb"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ReadRequest(readerOf(tt.in), Limits{})
			if err != nil {
				t.Fatal(err)
			}
			checkRequest(t, got, tt.want)
			checkFields(t, got.Header, tt.fields)
		})
	}
}

// Several requests on one connection must be read one after the other
// without the reader consuming bytes of the next.
func TestReadRequestSequence(t *testing.T) {
	br := readerOf(optionsReq + respmodReq + reqmodReq + previewIEOFReq)
	for _, method := range []string{"OPTIONS", "RESPMOD", "REQMOD", "RESPMOD"} {
		req, err := ReadRequest(br, Limits{})
		if err != nil {
			t.Fatal(err)
		}
		if req.Method != method {
			t.Fatalf("Method = %q, want %q", req.Method, method)
		}
	}
	if _, err := ReadRequest(br, Limits{}); err != io.EOF {
		t.Fatalf("err after the last request = %v, want io.EOF", err)
	}
}

func TestReadContinuation(t *testing.T) {
	t.Run("preview then rest", func(t *testing.T) {
		br := readerOf(previewReq + previewCont)
		req, err := ReadRequest(br, Limits{})
		if err != nil {
			t.Fatal(err)
		}
		if req.IEOF || string(req.Body) != "hell" {
			t.Fatalf("after preview: IEOF %t, Body %q", req.IEOF, req.Body)
		}
		if err := ReadContinuation(br, req, Limits{}); err != nil {
			t.Fatal(err)
		}
		if !req.IEOF || string(req.Body) != "hello world" {
			t.Errorf("after continuation: IEOF %t, Body %q", req.IEOF, req.Body)
		}
		if n := br.Buffered(); n != 0 {
			t.Errorf("%d bytes left buffered", n)
		}
	})
	t.Run("preview 0", func(t *testing.T) {
		br := readerOf(previewZeroReq + "b\r\nhello world\r\n0\r\n\r\n")
		req, err := ReadRequest(br, Limits{})
		if err != nil {
			t.Fatal(err)
		}
		if req.IEOF {
			t.Fatal("Preview: 0 without ieof read as complete; the body would be lost")
		}
		if err := ReadContinuation(br, req, Limits{}); err != nil {
			t.Fatal(err)
		}
		if string(req.Body) != "hello world" {
			t.Errorf("Body = %q", req.Body)
		}
	})
	t.Run("nothing to read after ieof", func(t *testing.T) {
		req, err := ReadRequest(readerOf(previewIEOFReq), Limits{})
		if err != nil {
			t.Fatal(err)
		}
		// The reader is empty: a read attempt would fail.
		if err := ReadContinuation(readerOf(""), req, Limits{}); err != nil {
			t.Fatal(err)
		}
		if string(req.Body) != "hello world" {
			t.Errorf("Body = %q", req.Body)
		}
	})
	t.Run("body limit spans preview and continuation", func(t *testing.T) {
		lim := Limits{MaxBodyBytes: 10}
		br := readerOf(previewReq + previewCont)
		req, err := ReadRequest(br, lim)
		if err != nil {
			t.Fatal(err)
		}
		wantErrIs(t, ReadContinuation(br, req, lim), ErrTooLarge)
	})
	t.Run("body limit met exactly", func(t *testing.T) {
		lim := Limits{MaxBodyBytes: 11}
		br := readerOf(previewReq + previewCont)
		req, err := ReadRequest(br, lim)
		if err != nil {
			t.Fatal(err)
		}
		if err := ReadContinuation(br, req, lim); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("bad continuation", func(t *testing.T) {
		br := readerOf(previewReq + "7\r\no worldX\r\n0\r\n\r\n")
		req, err := ReadRequest(br, Limits{})
		if err != nil {
			t.Fatal(err)
		}
		wantErrIs(t, ReadContinuation(br, req, Limits{}), ErrMalformed)
	})
	t.Run("peer closes before continuation", func(t *testing.T) {
		br := readerOf(previewReq)
		req, err := ReadRequest(br, Limits{})
		if err != nil {
			t.Fatal(err)
		}
		wantErrIs(t, ReadContinuation(br, req, Limits{}), io.ErrUnexpectedEOF)
	})
}

func TestReadRequestErrors(t *testing.T) {
	const uri = "icap://icap.example/avscan"
	encapReq := func(encap, rest string) string {
		return "REQMOD " + uri + " ICAP/1.0\r\nEncapsulated: " + encap + "\r\n\r\n" + rest
	}
	chunked := func(body string) string {
		return encapReq("req-body=0", body)
	}
	preview := func(p, body string) string {
		return "RESPMOD " + uri + " ICAP/1.0\r\nPreview: " + p + "\r\nEncapsulated: res-body=0\r\n\r\n" + body
	}
	tests := []struct {
		name string
		in   string
		lim  Limits
		want error
	}{
		// Request line.
		{name: "empty request line", in: "\r\nEncapsulated: null-body=0\r\n\r\n", want: ErrMalformed},
		{name: "method only", in: "OPTIONS\r\n\r\n", want: ErrMalformed},
		{name: "no protocol", in: "OPTIONS " + uri + "\r\n\r\n", want: ErrMalformed},
		{name: "extra field", in: "OPTIONS " + uri + " ICAP/1.0 extra\r\n\r\n", want: ErrMalformed},
		{name: "double space", in: "OPTIONS  " + uri + " ICAP/1.0\r\n\r\n", want: ErrMalformed},
		{name: "leading space", in: " OPTIONS " + uri + " ICAP/1.0\r\n\r\n", want: ErrMalformed},
		{name: "method not a token", in: "OPT(IONS " + uri + " ICAP/1.0\r\n\r\n", want: ErrMalformed},
		{name: "tab in URI", in: "OPTIONS icap://a\tb ICAP/1.0\r\n\r\n", want: ErrMalformed},
		{name: "HTTP version", in: "OPTIONS " + uri + " HTTP/1.1\r\n\r\n", want: ErrMalformed},
		{name: "ICAP/2.0", in: "OPTIONS " + uri + " ICAP/2.0\r\n\r\n", want: ErrMalformed},
		{name: "ICAP/1.", in: "OPTIONS " + uri + " ICAP/1.\r\n\r\n", want: ErrMalformed},
		{name: "ICAP/1.x", in: "OPTIONS " + uri + " ICAP/1.x\r\n\r\n", want: ErrMalformed},
		{name: "lower-case protocol", in: "OPTIONS " + uri + " icap/1.0\r\n\r\n", want: ErrMalformed},
		{name: "ICAP/10.0", in: "OPTIONS " + uri + " ICAP/10.0\r\n\r\n", want: ErrMalformed},

		// ICAP header.
		{name: "header without colon", in: "OPTIONS " + uri + " ICAP/1.0\r\nHost icap.example\r\n\r\n", want: ErrMalformed},
		{name: "invalid field name", in: "OPTIONS " + uri + " ICAP/1.0\r\nBad Name: x\r\n\r\n", want: ErrMalformed},
		{name: "continuation line first", in: "OPTIONS " + uri + " ICAP/1.0\r\n\tx\r\n\r\n", want: ErrMalformed},
		{name: "bad Preview", in: preview("abc", "0; ieof\r\n\r\n"), want: ErrMalformed},
		{name: "negative Preview", in: preview("-1", "0; ieof\r\n\r\n"), want: ErrMalformed},
		{name: "fractional Preview", in: preview("1.5", "0; ieof\r\n\r\n"), want: ErrMalformed},
		{name: "hex Preview", in: preview("0x10", "0; ieof\r\n\r\n"), want: ErrMalformed},
		{name: "overflowing Preview", in: preview("99999999999999999999", "0; ieof\r\n\r\n"), want: ErrMalformed},
		{name: "preview longer than Preview", in: preview("3", "5\r\nhello\r\n0; ieof\r\n\r\n"), want: ErrMalformed},
		{name: "preview longer than Preview without ieof", in: preview("3", "5\r\nhello\r\n0\r\n\r\n"), want: ErrMalformed},

		// Encapsulated.
		{name: "unknown section", in: encapReq("req-hdr=0, foo-body=10", ""), want: ErrMalformed},
		{name: "duplicate section", in: encapReq("req-hdr=0, req-hdr=10, null-body=20", ""), want: ErrMalformed},
		{name: "decreasing offsets", in: encapReq("req-hdr=0, res-hdr=50, null-body=20", ""), want: ErrMalformed},
		{name: "body entry not last", in: encapReq("req-body=0, req-hdr=0", ""), want: ErrMalformed},
		{name: "first offset not 0", in: encapReq("req-hdr=5, null-body=10", ""), want: ErrMalformed},
		{name: "missing offset", in: encapReq("req-hdr, null-body=10", ""), want: ErrMalformed},
		{
			name: "section without empty line",
			in:   encapReq("req-hdr=0, null-body=18", "GET / HTTP/1.1\r\nX:"),
			want: ErrMalformed,
		},
		{
			name: "offset inside a section",
			in:   encapReq("req-hdr=0, res-hdr=10, null-body="+encapOffset(len(httpReq)+len(httpRes)), httpReq+httpRes),
			want: ErrMalformed,
		},
		{
			name: "empty section",
			in:   encapReq("req-hdr=0, res-hdr=0, null-body="+encapOffset(len(httpRes)), httpRes),
			want: ErrMalformed,
		},

		// Chunked body.
		{name: "non-hex chunk size", in: chunked("zz\r\nhello\r\n0\r\n\r\n"), want: ErrMalformed},
		{name: "empty chunk size", in: chunked("\r\nhello\r\n0\r\n\r\n"), want: ErrMalformed},
		{name: "negative chunk size", in: chunked("-5\r\nhello\r\n0\r\n\r\n"), want: ErrMalformed},
		{name: "+1 chunk size", in: chunked("+1\r\nh\r\n0\r\n\r\n"), want: ErrMalformed},
		{name: "0x10 chunk size", in: chunked("0x10\r\n0123456789abcdef\r\n0\r\n\r\n"), want: ErrMalformed},
		{name: "chunk data not followed by CRLF", in: chunked("5\r\nhelloX\r\n0\r\n\r\n"), want: ErrMalformed},

		// Limits.
		{
			name: "request line over MaxHeaderBytes",
			in:   "OPTIONS icap://icap.example/" + strings.Repeat("a", 100) + " ICAP/1.0\r\n\r\n",
			lim:  Limits{MaxHeaderBytes: 64},
			want: ErrTooLarge,
		},
		{
			name: "header block over MaxHeaderBytes",
			in:   "OPTIONS " + uri + " ICAP/1.0\r\n" + strings.Repeat("X-Pad: 0123456789\r\n", 10) + "\r\n",
			lim:  Limits{MaxHeaderBytes: 128},
			want: ErrTooLarge,
		},
		{
			name: "header line over default MaxHeaderBytes",
			in:   "OPTIONS " + uri + " ICAP/1.0\r\nX-Pad: " + strings.Repeat("a", 64<<10) + "\r\n\r\n",
			want: ErrTooLarge,
		},
		{
			name: "too many fields",
			in:   "OPTIONS " + uri + " ICAP/1.0\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n\r\n",
			lim:  Limits{MaxHeaderFields: 3},
			want: ErrTooLarge,
		},
		{
			name: "too many fields by default",
			in:   "OPTIONS " + uri + " ICAP/1.0\r\n" + strings.Repeat("A: 1\r\n", 129) + "\r\n",
			want: ErrTooLarge,
		},
		{
			name: "sections over MaxEncapsulatedBytes",
			in:   respmodReq,
			lim:  Limits{MaxEncapsulatedBytes: len(httpReq) + len(httpRes) - 1},
			want: ErrTooLarge,
		},
		{
			name: "announced sections over default MaxEncapsulatedBytes",
			in:   encapReq("req-hdr=0, null-body=999999999", ""),
			want: ErrTooLarge,
		},
		{
			name: "body over MaxBodyBytes",
			in:   respmodReq,
			lim:  Limits{MaxBodyBytes: 10},
			want: ErrTooLarge,
		},
		{
			name: "chunk size line over its limit",
			in:   chunked("5;" + strings.Repeat("x", maxChunkLine) + "\r\nhello\r\n0\r\n\r\n"),
			want: ErrTooLarge,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, err := ReadRequest(readerOf(tt.in), tt.lim)
			if req != nil {
				t.Errorf("request returned with an error: %+v", req)
			}
			wantErrIs(t, err, tt.want)
		})
	}
}

// Exactly at a limit is allowed; one byte or field over is not.
func TestLimitsBoundaries(t *testing.T) {
	hdrLen := strings.Index(respmodReq, "\r\n\r\n") + 4
	secLen := len(httpReq) + len(httpRes)
	tests := []struct {
		name string
		lim  Limits
		want error
	}{
		{"defaults", Limits{}, nil},
		{"header bytes at limit", Limits{MaxHeaderBytes: hdrLen}, nil},
		{"header bytes over", Limits{MaxHeaderBytes: hdrLen - 1}, ErrTooLarge},
		{"fields at limit", Limits{MaxHeaderFields: 3}, nil},
		{"fields over", Limits{MaxHeaderFields: 2}, ErrTooLarge},
		{"sections at limit", Limits{MaxEncapsulatedBytes: secLen}, nil},
		{"sections over", Limits{MaxEncapsulatedBytes: secLen - 1}, ErrTooLarge},
		{"body at limit", Limits{MaxBodyBytes: 11}, nil},
		{"body over", Limits{MaxBodyBytes: 10}, ErrTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ReadRequest(readerOf(respmodReq), tt.lim)
			if tt.want == nil {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			wantErrIs(t, err, tt.want)
		})
	}
}

func TestLimitsWithDefaults(t *testing.T) {
	tests := []struct {
		name string
		in   Limits
		want Limits
	}{
		{"zero", Limits{}, DefaultLimits},
		{"negative", Limits{-1, -1, -1, -1}, DefaultLimits},
		{"set", Limits{1, 2, 3, 4}, Limits{1, 2, 3, 4}},
		{"partly set", Limits{MaxBodyBytes: 5}, Limits{
			MaxHeaderBytes:       DefaultLimits.MaxHeaderBytes,
			MaxHeaderFields:      DefaultLimits.MaxHeaderFields,
			MaxEncapsulatedBytes: DefaultLimits.MaxEncapsulatedBytes,
			MaxBodyBytes:         5,
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.in.withDefaults(); got != tt.want {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

// Every strict prefix of a message must read as io.ErrUnexpectedEOF, and
// the empty input as exactly io.EOF: a peer closing between messages is
// normal, one closing inside a message is not.
func TestTruncatedRequest(t *testing.T) {
	msgs := map[string]string{
		"OPTIONS":      optionsReq,
		"RESPMOD":      respmodReq,
		"REQMOD":       reqmodReq,
		"preview":      previewReq,
		"preview ieof": previewIEOFReq,
		"trailer": "REQMOD icap://a/b ICAP/1.0\r\nEncapsulated: req-body=0\r\n\r\n" +
			"3\r\nabc\r\n0\r\nX-T: 1\r\n\r\n",
	}
	for name, msg := range msgs {
		t.Run(name, func(t *testing.T) {
			if _, err := ReadRequest(readerOf(msg), Limits{}); err != nil {
				t.Fatalf("whole message: %v", err)
			}
			if _, err := ReadRequest(readerOf(""), Limits{}); err != io.EOF {
				t.Fatalf("empty input: err = %v, want exactly io.EOF", err)
			}
			for n := 1; n < len(msg); n++ {
				_, err := ReadRequest(readerOf(msg[:n]), Limits{})
				if !errors.Is(err, io.ErrUnexpectedEOF) {
					t.Fatalf("first %d bytes (%q): err = %v, want io.ErrUnexpectedEOF", n, msg[:n], err)
				}
			}
		})
	}
	t.Run("continuation", func(t *testing.T) {
		for n := 0; n < len(previewCont); n++ {
			br := readerOf(previewReq + previewCont[:n])
			req, err := ReadRequest(br, Limits{})
			if err != nil {
				t.Fatal(err)
			}
			if err := ReadContinuation(br, req, Limits{}); !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Fatalf("first %d bytes: err = %v, want io.ErrUnexpectedEOF", n, err)
			}
		}
	})
}

func TestTruncatedResponse(t *testing.T) {
	msgs := map[string]string{
		"OPTIONS": optionsResp,
		"RESPMOD": respmodResp,
		"REQMOD":  reqmodResp,
		"204":     noContentResp,
		"100":     continueResp,
	}
	for name, msg := range msgs {
		t.Run(name, func(t *testing.T) {
			if _, err := ReadResponse(readerOf(msg), Limits{}); err != nil {
				t.Fatalf("whole message: %v", err)
			}
			if _, err := ReadResponse(readerOf(""), Limits{}); err != io.EOF {
				t.Fatalf("empty input: err = %v, want exactly io.EOF", err)
			}
			for n := 1; n < len(msg); n++ {
				_, err := ReadResponse(readerOf(msg[:n]), Limits{})
				if !errors.Is(err, io.ErrUnexpectedEOF) {
					t.Fatalf("first %d bytes (%q): err = %v, want io.ErrUnexpectedEOF", n, msg[:n], err)
				}
			}
		})
	}
}

func TestWriteRequest(t *testing.T) {
	const uri = "icap://icap.example/reqmod"
	tests := []struct {
		name         string
		req          *Request
		want         string
		needContinue bool
	}{
		{
			name: "OPTIONS",
			req:  &Request{Method: "OPTIONS", URI: uri, Header: Header{"Host": {"icap.example"}}, Preview: -1},
			want: "OPTIONS " + uri + " ICAP/1.0\r\nEncapsulated: null-body=0\r\nHost: icap.example\r\n\r\n",
		},
		{
			name: "nil Header",
			req:  &Request{Method: "OPTIONS", URI: uri, Preview: -1},
			want: "OPTIONS " + uri + " ICAP/1.0\r\nEncapsulated: null-body=0\r\n\r\n",
		},
		{
			name: "REQMOD body",
			req:  &Request{Method: "REQMOD", URI: uri, ReqHdr: []byte(httpPost), Body: []byte("hello world"), Preview: -1},
			want: "REQMOD " + uri + " ICAP/1.0\r\nEncapsulated: req-hdr=0, req-body=" + encapOffset(len(httpPost)) + "\r\n\r\n" +
				httpPost + "b\r\nhello world\r\n0\r\n\r\n",
		},
		{
			name: "stale Preview and Encapsulated fields replaced",
			req: &Request{Method: "REQMOD", URI: uri, ReqHdr: []byte(httpReq), Preview: -1,
				Header: Header{"Preview": {"7"}, "Encapsulated": {"req-body=0"}}},
			want: "REQMOD " + uri + " ICAP/1.0\r\nEncapsulated: req-hdr=0, null-body=" + encapOffset(len(httpReq)) + "\r\n\r\n" + httpReq,
		},
		{
			name: "empty body",
			req:  &Request{Method: "REQMOD", URI: uri, ReqHdr: []byte(httpReq), Body: []byte{}, Preview: -1},
			want: "REQMOD " + uri + " ICAP/1.0\r\nEncapsulated: req-hdr=0, req-body=" + encapOffset(len(httpReq)) + "\r\n\r\n" +
				httpReq + "0\r\n\r\n",
		},
		{
			name: "preview holds the body",
			req:  &Request{Method: "RESPMOD", URI: uri, ResHdr: []byte(httpRes), Body: []byte("hello"), Preview: 5},
			want: "RESPMOD " + uri + " ICAP/1.0\r\nEncapsulated: res-hdr=0, res-body=" + encapOffset(len(httpRes)) + "\r\nPreview: 5\r\n\r\n" +
				httpRes + "5\r\nhello\r\n0; ieof\r\n\r\n",
		},
		{
			name: "preview shorter than the body",
			req:  &Request{Method: "RESPMOD", URI: uri, ResHdr: []byte(httpRes), Body: []byte("hello world"), Preview: 4},
			want: "RESPMOD " + uri + " ICAP/1.0\r\nEncapsulated: res-hdr=0, res-body=" + encapOffset(len(httpRes)) + "\r\nPreview: 4\r\n\r\n" +
				httpRes + "4\r\nhell\r\n0\r\n\r\n",
			needContinue: true,
		},
		{
			name: "preview 0",
			req:  &Request{Method: "RESPMOD", URI: uri, ResHdr: []byte(httpRes), Body: []byte("hello"), Preview: 0},
			want: "RESPMOD " + uri + " ICAP/1.0\r\nEncapsulated: res-hdr=0, res-body=" + encapOffset(len(httpRes)) + "\r\nPreview: 0\r\n\r\n" +
				httpRes + "0\r\n\r\n",
			needContinue: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var orig Header
			if tt.req.Header != nil {
				orig = tt.req.Header.Clone()
			}
			var buf bytes.Buffer
			w := bufio.NewWriter(&buf)
			needContinue, err := WriteRequest(w, tt.req)
			if err != nil {
				t.Fatal(err)
			}
			w.Flush()
			if buf.String() != tt.want {
				t.Errorf("wrote\n%q\nwant\n%q", buf.String(), tt.want)
			}
			if needContinue != tt.needContinue {
				t.Errorf("needContinue = %t, want %t", needContinue, tt.needContinue)
			}
			if !reflect.DeepEqual(tt.req.Header, orig) {
				t.Errorf("WriteRequest changed the caller's Header to %v", tt.req.Header)
			}
		})
	}
}

func TestWriteContinuation(t *testing.T) {
	tests := []struct {
		name string
		req  *Request
		want string
	}{
		{"rest of the body", &Request{Body: []byte("hello world"), Preview: 4}, "7\r\no world\r\n0\r\n\r\n"},
		{"preview 0", &Request{Body: []byte("hello"), Preview: 0}, "5\r\nhello\r\n0\r\n\r\n"},
		{"nothing left", &Request{Body: []byte("hello"), Preview: 5}, "0\r\n\r\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			w := bufio.NewWriter(&buf)
			if err := WriteContinuation(w, tt.req); err != nil {
				t.Fatal(err)
			}
			w.Flush()
			if buf.String() != tt.want {
				t.Errorf("wrote %q, want %q", buf.String(), tt.want)
			}
		})
	}
}

// TestPreviewExchange plays both sides of a preview: the client sends the
// preview, the server reads it and answers 100 Continue, the client reads
// that and sends the rest. Each side reads only what the other has written
// so far, which also proves that no reader looks past its message.
func TestPreviewExchange(t *testing.T) {
	body := []byte(strings.Repeat("0123456789", 500))
	for _, preview := range []int{0, 1, 4, 1024, len(body) - 1} {
		t.Run(strconv.Itoa(preview), func(t *testing.T) {
			var toServer, toClient bytes.Buffer
			cw := bufio.NewWriter(&toServer)
			sr := bufio.NewReader(&toServer)
			sw := bufio.NewWriter(&toClient)
			cr := bufio.NewReader(&toClient)

			req := NewRequest("RESPMOD", "icap://icap.example/avscan")
			req.Header.Set("Host", "icap.example")
			req.ResHdr = []byte(httpRes)
			req.Body = body
			req.Preview = preview
			needContinue, err := WriteRequest(cw, req)
			if err != nil {
				t.Fatal(err)
			}
			if !needContinue {
				t.Fatal("needContinue = false for a body longer than the preview")
			}
			cw.Flush()

			got, err := ReadRequest(sr, Limits{})
			if err != nil {
				t.Fatal(err)
			}
			if got.IEOF || got.Preview != preview || !bytes.Equal(got.Body, body[:preview]) {
				t.Fatalf("server read IEOF %t, Preview %d, %d body bytes", got.IEOF, got.Preview, len(got.Body))
			}
			if err := WriteResponse(sw, &Response{StatusCode: 100}); err != nil {
				t.Fatal(err)
			}
			sw.Flush()

			resp, err := ReadResponse(cr, Limits{})
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != 100 || resp.Header.Has("Encapsulated") {
				t.Fatalf("client read %d with header %v, want a bare 100", resp.StatusCode, resp.Header)
			}
			if err := WriteContinuation(cw, req); err != nil {
				t.Fatal(err)
			}
			cw.Flush()

			if err := ReadContinuation(sr, got, Limits{}); err != nil {
				t.Fatal(err)
			}
			if !got.IEOF || !bytes.Equal(got.Body, body) {
				t.Fatalf("after continuation: IEOF %t, %d body bytes", got.IEOF, len(got.Body))
			}
			if toServer.Len() != 0 || sr.Buffered() != 0 {
				t.Errorf("server left %d bytes unread", toServer.Len()+sr.Buffered())
			}
		})
	}
}

func TestRequestRoundTrip(t *testing.T) {
	const uri = "icap://icap.example/avscan"
	big := bytes.Repeat([]byte("0123456789abcdef"), 8<<10)
	framing := []byte("0\r\n\r\n5\r\nhello\r\n0; ieof\r\n\r\n")
	header := func(kv ...string) Header {
		h := make(Header)
		for i := 0; i < len(kv); i += 2 {
			h.Add(kv[i], kv[i+1])
		}
		return h
	}
	tests := []struct {
		name string
		req  Request
	}{
		{"OPTIONS", Request{Method: "OPTIONS", URI: uri, Header: header("Host", "icap.example"), Preview: -1}},
		{"REQMOD null-body", Request{Method: "REQMOD", URI: uri, Header: header("Host", "h"), ReqHdr: []byte(httpReq), Preview: -1}},
		{"REQMOD body", Request{Method: "REQMOD", URI: uri, Header: header(), ReqHdr: []byte(httpPost), Body: []byte("hello world"), Preview: -1}},
		{"RESPMOD", Request{Method: "RESPMOD", URI: uri, Header: header("Allow", "204"),
			ReqHdr: []byte(httpReq), ResHdr: []byte(httpRes), Body: []byte("hello world"), Preview: -1}},
		{"RESPMOD res-hdr only", Request{Method: "RESPMOD", URI: uri, Header: header(), ResHdr: []byte(httpRes), Preview: -1}},
		{"empty body", Request{Method: "REQMOD", URI: uri, Header: header(), ReqHdr: []byte(httpPost), Body: []byte{}, Preview: -1}},
		{"opt-body", Request{Method: "OPTIONS", URI: uri, Header: header(), Body: []byte("x"), Preview: -1}},
		{"framing in body", Request{Method: "REQMOD", URI: uri, Header: header(), ReqHdr: []byte(httpPost), Body: framing, Preview: -1}},
		{"large body", Request{Method: "RESPMOD", URI: uri, Header: header(), ResHdr: []byte(httpRes), Body: big, Preview: -1}},
		{"preview holds body", Request{Method: "RESPMOD", URI: uri, Header: header(), ResHdr: []byte(httpRes), Body: []byte("hello"), Preview: 100}},
		{"preview exactly body", Request{Method: "RESPMOD", URI: uri, Header: header(), ResHdr: []byte(httpRes), Body: []byte("hello"), Preview: 5}},
		{"preview short", Request{Method: "RESPMOD", URI: uri, Header: header(), ResHdr: []byte(httpRes), Body: big, Preview: 4096}},
		{"preview 0", Request{Method: "RESPMOD", URI: uri, Header: header(), ResHdr: []byte(httpRes), Body: []byte("hello"), Preview: 0}},
		{"preview 0 empty body", Request{Method: "RESPMOD", URI: uri, Header: header(), ResHdr: []byte(httpRes), Body: []byte{}, Preview: 0}},
		{"preview null-body", Request{Method: "REQMOD", URI: uri, Header: header(), ReqHdr: []byte(httpReq), Preview: 10}},
		{"fields", Request{Method: "RESPMOD", URI: uri, Preview: -1, ResHdr: []byte(httpRes), Body: []byte("x"),
			Header: header("Host", "icap.example", "X-Client-IP", "192.0.2.1", "X-Note", "a\nb\nc",
				"X-Multi", "1", "X-Multi", "2", "istag", `"abc"`)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			w := bufio.NewWriter(&buf)
			needContinue, err := WriteRequest(w, &tt.req)
			if err != nil {
				t.Fatal(err)
			}
			w.Flush()
			br := bufio.NewReader(&buf)
			got, err := ReadRequest(br, Limits{})
			if err != nil {
				t.Fatal(err)
			}
			if got.IEOF == needContinue {
				t.Fatalf("IEOF = %t with needContinue = %t", got.IEOF, needContinue)
			}
			if needContinue {
				if err := WriteContinuation(w, &tt.req); err != nil {
					t.Fatal(err)
				}
				w.Flush()
				if err := ReadContinuation(br, got, Limits{}); err != nil {
					t.Fatal(err)
				}
			}
			want := tt.req
			want.IEOF = true
			checkRequest(t, got, want)
			if h := withoutFields(got.Header, "Encapsulated", "Preview"); !reflect.DeepEqual(h, tt.req.Header) {
				t.Errorf("Header = %q, want %q", h, tt.req.Header)
			}
			if rest, _ := io.ReadAll(br); len(rest) != 0 {
				t.Errorf("%d bytes left after the message", len(rest))
			}
		})
	}
}

func TestReadResponse(t *testing.T) {
	tests := []struct {
		name   string
		in     string
		want   Response
		fields map[string]string
	}{
		{
			name:   "OPTIONS",
			in:     optionsResp,
			want:   Response{StatusCode: 200, Reason: "OK"},
			fields: map[string]string{"istag": `"W3E4R7U9-L2E4-2"`, "Methods": "RESPMOD, REQMOD"},
		},
		{
			name: "RESPMOD res-hdr res-body",
			in:   respmodResp,
			want: Response{StatusCode: 200, Reason: "OK", ResHdr: []byte(httpRes), Body: []byte("block page!")},
		},
		{
			name: "REQMOD req-hdr null-body",
			in:   reqmodResp,
			want: Response{StatusCode: 200, Reason: "OK", ReqHdr: []byte(httpReq)},
		},
		{
			name: "REQMOD req-hdr req-body",
			in: "ICAP/1.0 200 OK\r\nEncapsulated: req-hdr=0, req-body=" + encapOffset(len(httpPost)) + "\r\n\r\n" +
				httpPost + "b\r\nhello world\r\n0\r\n\r\n",
			want: Response{StatusCode: 200, Reason: "OK", ReqHdr: []byte(httpPost), Body: []byte("hello world")},
		},
		{
			name: "REQMOD answered with a response",
			in: "ICAP/1.0 200 OK\r\nEncapsulated: res-hdr=0, res-body=" + encapOffset(len(httpRes)) + "\r\n\r\n" +
				httpRes + "0\r\n\r\n",
			want: Response{StatusCode: 200, Reason: "OK", ResHdr: []byte(httpRes), Body: []byte{}},
		},
		{
			name:   "204 null-body",
			in:     noContentResp,
			want:   Response{StatusCode: 204, Reason: "No Content"},
			fields: map[string]string{"ISTag": `"W3E4R7U9-L2E4-2"`},
		},
		{
			name: "204 without Encapsulated",
			in:   "ICAP/1.0 204 No Content\r\nISTag: \"x\"\r\n\r\n",
			want: Response{StatusCode: 204, Reason: "No Content"},
		},
		{
			name: "error without Encapsulated",
			in:   "ICAP/1.0 404 ICAP Service Not Found\r\n\r\n",
			want: Response{StatusCode: 404, Reason: "ICAP Service Not Found"},
		},
		{
			name: "100 Continue",
			in:   continueResp,
			want: Response{StatusCode: 100, Reason: "Continue"},
		},
		{
			name: "100 ignores Encapsulated",
			in:   "ICAP/1.0 100 Continue\r\nEncapsulated: res-body=0\r\n\r\n",
			want: Response{StatusCode: 100, Reason: "Continue"},
		},
		{
			name: "no reason phrase",
			in:   "ICAP/1.0 204\r\n\r\n",
			want: Response{StatusCode: 204},
		},
		{
			name: "bare LF",
			in:   "ICAP/1.0 200 OK\nEncapsulated: res-hdr=0, res-body=17\n\nHTTP/1.1 200 OK\n\n2\nok\r\n0\n\n",
			want: Response{StatusCode: 200, Reason: "OK", ResHdr: []byte("HTTP/1.1 200 OK\n\n"), Body: []byte("ok")},
		},
		{
			name: "unknown status",
			in:   "ICAP/1.0 599 Whatever\r\nEncapsulated: null-body=0\r\n\r\n",
			want: Response{StatusCode: 599, Reason: "Whatever"},
		},
		{
			name:   "folded SPE field",
			in:     "ICAP/1.0 204 No Content\r\nX-Violations-Found: 1\r\n\teicar.com\r\n\tEICAR\r\n\t11101\r\n\t0\r\n\r\n",
			want:   Response{StatusCode: 204, Reason: "No Content"},
			fields: map[string]string{"X-Violations-Found": "1\neicar.com\nEICAR\n11101\n0"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ReadResponse(readerOf(tt.in), Limits{})
			if err != nil {
				t.Fatal(err)
			}
			checkResponse(t, got, tt.want)
			checkFields(t, got.Header, tt.fields)
		})
	}
}

// A 100 Continue is followed on the same connection by the final answer;
// reading the first must not consume the second.
func TestReadResponseAfterContinue(t *testing.T) {
	br := readerOf(continueResp + respmodResp + noContentResp)
	for _, code := range []int{100, 200, 204} {
		resp, err := ReadResponse(br, Limits{})
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != code {
			t.Fatalf("StatusCode = %d, want %d", resp.StatusCode, code)
		}
	}
	if _, err := ReadResponse(br, Limits{}); err != io.EOF {
		t.Fatalf("err after the last response = %v, want io.EOF", err)
	}
}

func TestReadResponseErrors(t *testing.T) {
	withEncap := func(encap, rest string) string {
		return "ICAP/1.0 200 OK\r\nEncapsulated: " + encap + "\r\n\r\n" + rest
	}
	tests := []struct {
		name string
		in   string
		lim  Limits
		want error
	}{
		{name: "empty status line", in: "\r\n\r\n", want: ErrMalformed},
		{name: "HTTP status line", in: "HTTP/1.1 200 OK\r\n\r\n", want: ErrMalformed},
		{name: "ICAP/2.0", in: "ICAP/2.0 200 OK\r\n\r\n", want: ErrMalformed},
		{name: "protocol only", in: "ICAP/1.0\r\n\r\n", want: ErrMalformed},
		{name: "two-digit status", in: "ICAP/1.0 20 OK\r\n\r\n", want: ErrMalformed},
		{name: "four-digit status", in: "ICAP/1.0 2000 OK\r\n\r\n", want: ErrMalformed},
		{name: "non-numeric status", in: "ICAP/1.0 abc OK\r\n\r\n", want: ErrMalformed},
		{name: "status below 100", in: "ICAP/1.0 099 Low\r\n\r\n", want: ErrMalformed},
		{name: "signed status", in: "ICAP/1.0 +99 OK\r\n\r\n", want: ErrMalformed},
		{name: "negative status", in: "ICAP/1.0 -20 OK\r\n\r\n", want: ErrMalformed},
		{name: "status glued to reason", in: "ICAP/1.0 200OK\r\n\r\n", want: ErrMalformed},
		{name: "double space", in: "ICAP/1.0  200 OK\r\n\r\n", want: ErrMalformed},
		{name: "header without colon", in: "ICAP/1.0 204 No Content\r\nISTag\r\n\r\n", want: ErrMalformed},
		{name: "invalid field name", in: "ICAP/1.0 204 No Content\r\nIS Tag: x\r\n\r\n", want: ErrMalformed},
		{name: "continuation line first", in: "ICAP/1.0 204 No Content\r\n x\r\n\r\n", want: ErrMalformed},
		{name: "unknown section", in: withEncap("res-hdr=0, body=5", ""), want: ErrMalformed},
		{name: "duplicate section", in: withEncap("res-hdr=0, res-hdr=0, null-body=5", ""), want: ErrMalformed},
		{name: "decreasing offsets", in: withEncap("req-hdr=0, res-hdr=9, res-body=3", ""), want: ErrMalformed},
		{name: "body entry not last", in: withEncap("null-body=0, res-hdr=0", ""), want: ErrMalformed},
		{name: "first offset not 0", in: withEncap("res-hdr=1, null-body=5", ""), want: ErrMalformed},
		{name: "missing offset", in: withEncap("res-hdr=0, null-body", ""), want: ErrMalformed},
		{name: "section without empty line", in: withEncap("res-hdr=0, null-body=17", "HTTP/1.1 200 OK\r\n"), want: ErrMalformed},
		{name: "bad chunk size", in: withEncap("res-body=0", "xyz\r\n"), want: ErrMalformed},
		{name: "chunk data not followed by CRLF", in: withEncap("res-body=0", "2\r\nokk\r\n0\r\n\r\n"), want: ErrMalformed},
		{
			name: "status line over MaxHeaderBytes",
			in:   "ICAP/1.0 200 " + strings.Repeat("x", 200) + "\r\n\r\n",
			lim:  Limits{MaxHeaderBytes: 100},
			want: ErrTooLarge,
		},
		{
			name: "header block over MaxHeaderBytes",
			in:   "ICAP/1.0 204 No Content\r\n" + strings.Repeat("X-Pad: 0123456789\r\n", 20) + "\r\n",
			lim:  Limits{MaxHeaderBytes: 200},
			want: ErrTooLarge,
		},
		{
			name: "too many fields",
			in:   "ICAP/1.0 204 No Content\r\nA: 1\r\nB: 2\r\n\r\n",
			lim:  Limits{MaxHeaderFields: 1},
			want: ErrTooLarge,
		},
		{
			name: "sections over MaxEncapsulatedBytes",
			in:   respmodResp,
			lim:  Limits{MaxEncapsulatedBytes: len(httpRes) - 1},
			want: ErrTooLarge,
		},
		{
			name: "body over MaxBodyBytes",
			in:   respmodResp,
			lim:  Limits{MaxBodyBytes: 10},
			want: ErrTooLarge,
		},
		{
			name: "huge chunk",
			in:   withEncap("res-body=0", "fffffffffff\r\n"),
			want: ErrTooLarge,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, err := ReadResponse(readerOf(tt.in), tt.lim)
			if resp != nil {
				t.Errorf("response returned with an error: %+v", resp)
			}
			wantErrIs(t, err, tt.want)
		})
	}
}

func TestWriteResponse(t *testing.T) {
	tests := []struct {
		name string
		resp *Response
		want string
	}{
		{
			name: "100 Continue",
			resp: &Response{StatusCode: 100},
			want: "ICAP/1.0 100 Continue\r\n\r\n",
		},
		{
			name: "204",
			resp: &Response{StatusCode: 204, Header: Header{"ISTag": {`"x"`}}},
			want: "ICAP/1.0 204 No Content\r\nEncapsulated: null-body=0\r\nISTag: \"x\"\r\n\r\n",
		},
		{
			name: "own reason",
			resp: &Response{StatusCode: 404, Reason: "Not Here"},
			want: "ICAP/1.0 404 Not Here\r\nEncapsulated: null-body=0\r\n\r\n",
		},
		{
			name: "unknown status",
			resp: &Response{StatusCode: 599},
			want: "ICAP/1.0 599 Status 599\r\nEncapsulated: null-body=0\r\n\r\n",
		},
		{
			name: "res-hdr res-body",
			resp: &Response{StatusCode: 200, ResHdr: []byte(httpRes), Body: []byte("block page!")},
			want: "ICAP/1.0 200 OK\r\nEncapsulated: res-hdr=0, res-body=" + encapOffset(len(httpRes)) + "\r\n\r\n" +
				httpRes + "b\r\nblock page!\r\n0\r\n\r\n",
		},
		{
			name: "req-hdr null-body",
			resp: &Response{StatusCode: 200, ReqHdr: []byte(httpReq)},
			want: "ICAP/1.0 200 OK\r\nEncapsulated: req-hdr=0, null-body=" + encapOffset(len(httpReq)) + "\r\n\r\n" + httpReq,
		},
		{
			name: "stale Encapsulated replaced",
			resp: &Response{StatusCode: 204, Header: Header{"Encapsulated": {"res-body=0"}}},
			want: "ICAP/1.0 204 No Content\r\nEncapsulated: null-body=0\r\n\r\n",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var orig Header
			if tt.resp.Header != nil {
				orig = tt.resp.Header.Clone()
			}
			var buf bytes.Buffer
			w := bufio.NewWriter(&buf)
			if err := WriteResponse(w, tt.resp); err != nil {
				t.Fatal(err)
			}
			w.Flush()
			if buf.String() != tt.want {
				t.Errorf("wrote\n%q\nwant\n%q", buf.String(), tt.want)
			}
			if !reflect.DeepEqual(tt.resp.Header, orig) {
				t.Errorf("WriteResponse changed the caller's Header to %v", tt.resp.Header)
			}
		})
	}
}

func TestResponseRoundTrip(t *testing.T) {
	tests := []struct {
		name string
		resp Response
	}{
		{"100", Response{StatusCode: 100, Reason: "Continue", Header: Header{}}},
		{"204", Response{StatusCode: 204, Reason: "No Content", Header: Header{"ISTag": {`"t1"`}}}},
		{"OPTIONS", Response{StatusCode: 200, Reason: "OK", Header: Header{
			"Methods": {"RESPMOD"}, "ISTag": {`"t1"`}, CanonicalKey("Options-TTL"): {"3600"}, "Allow": {"204"}}}},
		{"RESPMOD", Response{StatusCode: 200, Reason: "OK", Header: Header{}, ResHdr: []byte(httpRes), Body: []byte("block page!")}},
		{"REQMOD modified request", Response{StatusCode: 200, Reason: "OK", Header: Header{},
			ReqHdr: []byte(httpPost), Body: []byte("hello world")}},
		{"REQMOD null-body", Response{StatusCode: 200, Reason: "OK", Header: Header{}, ReqHdr: []byte(httpReq)}},
		{"empty body", Response{StatusCode: 200, Reason: "OK", Header: Header{}, ResHdr: []byte(httpRes), Body: []byte{}}},
		{"all sections", Response{StatusCode: 200, Reason: "OK", Header: Header{},
			ReqHdr: []byte(httpReq), ResHdr: []byte(httpRes), Body: bytes.Repeat([]byte{0, '\r', '\n'}, 5000)}},
		{"error", Response{StatusCode: 500, Reason: "Server Error", Header: Header{"X-Note": {"disk\nfull"}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			w := bufio.NewWriter(&buf)
			if err := WriteResponse(w, &tt.resp); err != nil {
				t.Fatal(err)
			}
			w.Flush()
			br := bufio.NewReader(&buf)
			got, err := ReadResponse(br, Limits{})
			if err != nil {
				t.Fatal(err)
			}
			checkResponse(t, got, tt.resp)
			if h := withoutFields(got.Header, "Encapsulated"); !reflect.DeepEqual(h, tt.resp.Header) {
				t.Errorf("Header = %q, want %q", h, tt.resp.Header)
			}
			if rest, _ := io.ReadAll(br); len(rest) != 0 {
				t.Errorf("%d bytes left after the message", len(rest))
			}
		})
	}
}

type brokenWriter struct{}

var errBrokenWriter = errors.New("write failed")

func (brokenWriter) Write([]byte) (int, error) { return 0, errBrokenWriter }

// The writers leave flushing to the caller but must still report a write
// error that bufio.Writer hit while its buffer filled.
func TestWriteErrors(t *testing.T) {
	body := bytes.Repeat([]byte("x"), 100)
	t.Run("WriteRequest", func(t *testing.T) {
		w := bufio.NewWriterSize(brokenWriter{}, 16)
		req := &Request{Method: "REQMOD", URI: "icap://a/b", ReqHdr: []byte(httpPost), Body: body, Preview: -1}
		if _, err := WriteRequest(w, req); !errors.Is(err, errBrokenWriter) {
			t.Errorf("err = %v, want %v", err, errBrokenWriter)
		}
		if err := WriteContinuation(w, req); !errors.Is(err, errBrokenWriter) {
			t.Errorf("WriteContinuation err = %v, want %v", err, errBrokenWriter)
		}
	})
	t.Run("WriteResponse", func(t *testing.T) {
		w := bufio.NewWriterSize(brokenWriter{}, 16)
		if err := WriteResponse(w, &Response{StatusCode: 200, ResHdr: []byte(httpRes), Body: body}); !errors.Is(err, errBrokenWriter) {
			t.Errorf("err = %v, want %v", err, errBrokenWriter)
		}
	})
}

func TestStatusText(t *testing.T) {
	tests := []struct {
		code int
		want string
	}{
		{100, "Continue"},
		{200, "OK"},
		{204, "No Content"},
		{400, "Bad Request"},
		{404, "ICAP Service Not Found"},
		{405, "Method Not Allowed For Service"},
		{408, "Request Timeout"},
		{500, "Server Error"},
		{501, "Method Not Implemented"},
		{502, "Bad Gateway"},
		{503, "Service Overloaded"},
		{505, "ICAP Version Not Supported"},
		{299, "Status 299"},
	}
	for _, tt := range tests {
		t.Run(strconv.Itoa(tt.code), func(t *testing.T) {
			if got := StatusText(tt.code); got != tt.want {
				t.Errorf("StatusText(%d) = %q, want %q", tt.code, got, tt.want)
			}
		})
	}
}

// checkFields compares the named header fields with their wanted values.
func checkFields(t *testing.T, h Header, want map[string]string) {
	t.Helper()
	for k, v := range want {
		if g := h.Get(k); g != v {
			t.Errorf("Header.Get(%q) = %q, want %q", k, g, v)
		}
	}
}
