package icap

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"reflect"
	"strconv"
	"strings"
	"testing"
)

// fuzzLimits are small so that each execution is cheap and the fuzzer
// reaches the limit checks with short inputs.
var fuzzLimits = Limits{
	MaxHeaderBytes:       512,
	MaxHeaderFields:      12,
	MaxEncapsulatedBytes: 512,
	MaxBodyBytes:         1024,
}

// fuzzBufSize is bufio's minimum, so that lines longer than the buffer, and
// so ReadSlice's ErrBufferFull path, are common.
const fuzzBufSize = 16

func requestSeeds() []string {
	return []string{
		optionsReq,
		respmodReq,
		reqmodReq,
		previewReq + previewCont,
		previewReq,
		previewIEOFReq,
		previewZeroReq + "5\r\nhello\r\n0\r\n\r\n",
		"OPTIONS icap://a/b ICAP/1.0\r\nHost: a\r\n\r\n",
		"OPTIONS icap://a/b ICAP/1.0\r\nEncapsulated: opt-body=0\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
		"REQMOD icap://a/b ICAP/1.0\r\nEncapsulated: req-body=0\r\n\r\n" +
			"5;name=value\r\nhello\r\n6 ; x=\"y\"\r\n world\r\n0; foo=bar\r\nX-Trailer: 1\r\n\r\n",
		"REQMOD icap://a/b ICAP/1.0\r\nPreview: 0\r\nEncapsulated: req-hdr=0, req-body=" + encapOffset(len(httpReq)) + "\r\n\r\n" +
			httpReq + "0; ieof\r\n\r\n",
		"RESPMOD icap://a/b ICAP/1.0\nX-Note: a\n\tb\nEncapsulated: res-hdr=0, res-body=17\n\nHTTP/1.1 200 OK\n\n2\nok\n0\n\n",
		"REQMOD icap://a/b ICAP/1.1\r\nX-Violations-Found: 1\r\n\tf\r\n\tEICAR\r\nEncapsulated: null-body=0\r\n\r\n",
		// Malformed or over a limit.
		"",
		"OPTIONS icap://a/b HTTP/1.1\r\n\r\n",
		"OPTIONS icap://a/b ICAP/1.0\r\n\tcontinued\r\n\r\n",
		"REQMOD icap://a/b ICAP/1.0\r\nEncapsulated: req-hdr=0, res-hdr=5, req-body=3\r\n\r\n",
		"REQMOD icap://a/b ICAP/1.0\r\nEncapsulated: req-hdr=0, null-body=18\r\n\r\nGET / HTTP/1.1\r\nX:",
		"REQMOD icap://a/b ICAP/1.0\r\nEncapsulated: req-body=0\r\n\r\n0x10\r\n0123456789abcdef\r\n0\r\n\r\n",
		"REQMOD icap://a/b ICAP/1.0\r\nEncapsulated: req-body=0\r\n\r\nfffffffffff\r\n",
		"REQMOD icap://a/b ICAP/1.0\r\nPreview: 2\r\nEncapsulated: req-body=0\r\n\r\n5\r\nhello\r\n0; ieof\r\n\r\n",
		"REQMOD icap://a/b ICAP/1.0\r\nEncapsulated: req-body=0\r\n\r\n5\r\nhelloX\r\n0\r\n\r\n",
		"OPTIONS icap://a/b ICAP/1.0\r\n" + strings.Repeat("A: 1\r\n", 13) + "\r\n",
		respmodReq[:len(respmodReq)/2],
	}
}

func responseSeeds() []string {
	return []string{
		optionsResp,
		respmodResp,
		reqmodResp,
		noContentResp,
		continueResp,
		continueResp + respmodResp,
		"ICAP/1.0 204 No Content\r\nISTag: \"x\"\r\n\r\n",
		"ICAP/1.0 204\r\n\r\n",
		"ICAP/1.0 404 ICAP Service Not Found\r\n\r\n",
		"ICAP/1.0 200 OK\r\nEncapsulated: req-hdr=0, req-body=" + encapOffset(len(httpPost)) + "\r\n\r\n" +
			httpPost + "b\r\nhello world\r\n0\r\n\r\n",
		"ICAP/1.0 200 OK\r\nEncapsulated: res-hdr=0, res-body=" + encapOffset(len(httpRes)) + "\r\n\r\n" + httpRes + "0\r\n\r\n",
		"ICAP/1.0 200 OK\nEncapsulated: res-hdr=0, res-body=17\n\nHTTP/1.1 200 OK\n\n2\nok\n0\n\n",
		"ICAP/1.0 204 No Content\r\nX-Violations-Found: 1\r\n\teicar.com\r\n\tEICAR\r\n\t11101\r\n\t0\r\n\r\n",
		"ICAP/1.0 100 Continue\r\nEncapsulated: res-body=0\r\n\r\n",
		// Malformed or over a limit.
		"",
		"HTTP/1.1 200 OK\r\n\r\n",
		"ICAP/1.0 20 OK\r\n\r\n",
		"ICAP/1.0 200 OK\r\nBad Name: x\r\n\r\n",
		"ICAP/1.0 200 OK\r\nEncapsulated: null-body=0, res-hdr=0\r\n\r\n",
		"ICAP/1.0 200 OK\r\nEncapsulated: res-body=0\r\n\r\n2\r\nokk\r\n0\r\n\r\n",
		"ICAP/1.0 200 OK\r\nEncapsulated: res-body=0\r\n\r\nffffffffffffffffffff\r\n",
		respmodResp[:len(respmodResp)-3],
	}
}

// checkReadError fails unless err is one of the errors the readers
// promise: a malformed or oversized message, a peer that closed inside a
// message, or exactly io.EOF for one that closed before it.
func checkReadError(t *testing.T, data []byte, err error) {
	t.Helper()
	switch {
	case err == io.EOF:
		if len(data) != 0 {
			t.Fatalf("io.EOF for %d bytes of input", len(data))
		}
	case len(data) == 0:
		t.Fatalf("err = %v for empty input, want io.EOF", err)
	case errors.Is(err, ErrMalformed), errors.Is(err, ErrTooLarge):
		var pe *ProtocolError
		if !errors.As(err, &pe) {
			t.Fatalf("err = %#v, want a *ProtocolError", err)
		}
	case errors.Is(err, io.ErrUnexpectedEOF):
	default:
		t.Fatalf("unexpected error %T: %v", err, err)
	}
}

// checkPrefixes reads strict prefixes of msg, a complete message, with
// read: an empty one must give exactly io.EOF and any other
// io.ErrUnexpectedEOF, since every byte of msg was needed.
func checkPrefixes(t *testing.T, msg []byte, read func(*bufio.Reader) error) {
	t.Helper()
	for _, n := range []int{0, 1, len(msg) / 2, len(msg) - 1} {
		if n < 0 || n >= len(msg) {
			continue
		}
		err := read(bufio.NewReaderSize(bytes.NewReader(msg[:n]), fuzzBufSize))
		if n == 0 && err != io.EOF {
			t.Fatalf("empty prefix: err = %v, want io.EOF", err)
		}
		if n > 0 && !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("first %d of %d bytes: err = %v, want io.ErrUnexpectedEOF", n, len(msg), err)
		}
	}
}

// checkSections checks what the readers guarantee about the encapsulated
// header sections.
func checkSections(t *testing.T, reqHdr, resHdr []byte, lim Limits) {
	t.Helper()
	if len(reqHdr)+len(resHdr) > lim.MaxEncapsulatedBytes {
		t.Fatalf("%d section bytes, limit %d", len(reqHdr)+len(resHdr), lim.MaxEncapsulatedBytes)
	}
	for _, s := range [][]byte{reqHdr, resHdr} {
		if s != nil && !bytes.HasSuffix(s, []byte("\n\n")) && !bytes.HasSuffix(s, []byte("\r\n\r\n")) {
			t.Fatalf("section %q does not end with an empty line", s)
		}
	}
}

// checkAgainstEncapsulated checks that the sections read are the ones the
// Encapsulated field lists: a listed body is non-nil even when empty, since
// nil means null-body.
func checkAgainstEncapsulated(t *testing.T, h Header, reqHdr, resHdr, body []byte) {
	t.Helper()
	listed := map[string]bool{}
	if v := h.Get("Encapsulated"); v != "" {
		secs, err := parseEncapsulated(v)
		if err != nil {
			t.Fatalf("message read with a bad Encapsulated %q: %v", v, err)
		}
		for _, s := range secs {
			listed[s.name] = true
		}
	}
	hasBody := listed["req-body"] || listed["res-body"] || listed["opt-body"]
	if (reqHdr != nil) != listed["req-hdr"] || (resHdr != nil) != listed["res-hdr"] || (body != nil) != hasBody {
		t.Fatalf("sections req-hdr %t res-hdr %t body %t, Encapsulated lists %v",
			reqHdr != nil, resHdr != nil, body != nil, listed)
	}
}

// checkHeaderLimits checks the field count and that names are canonical.
func checkHeaderLimits(t *testing.T, h Header, lim Limits) {
	t.Helper()
	n := 0
	for k, vs := range h {
		if k != CanonicalKey(k) {
			t.Fatalf("field name %q not canonical", k)
		}
		n += len(vs)
	}
	if n > lim.MaxHeaderFields {
		t.Fatalf("%d fields, limit %d", n, lim.MaxHeaderFields)
	}
}

func FuzzReadRequest(f *testing.F) {
	for _, s := range requestSeeds() {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		src := bytes.NewReader(data)
		br := bufio.NewReaderSize(src, fuzzBufSize)
		req, err := ReadRequest(br, fuzzLimits)
		if err != nil {
			if req != nil {
				t.Fatal("request returned with an error")
			}
			checkReadError(t, data, err)
			return
		}
		consumed := len(data) - src.Len() - br.Buffered()
		checkPrefixes(t, data[:consumed], func(br *bufio.Reader) error {
			_, err := ReadRequest(br, fuzzLimits)
			return err
		})

		if !isToken([]byte(req.Method)) || req.URI == "" || strings.ContainsAny(req.URI, " \t\n") {
			t.Fatalf("request line %q %q accepted", req.Method, req.URI)
		}
		checkHeaderLimits(t, req.Header, fuzzLimits)
		checkSections(t, req.ReqHdr, req.ResHdr, fuzzLimits)
		checkAgainstEncapsulated(t, req.Header, req.ReqHdr, req.ResHdr, req.Body)
		if req.Preview >= 0 && req.Body != nil && len(req.Body) > req.Preview {
			t.Fatalf("%d preview bytes accepted with Preview: %d", len(req.Body), req.Preview)
		}
		if !req.IEOF {
			if req.Preview < 0 || req.Body == nil {
				t.Fatalf("IEOF false with Preview %d and body nil %t", req.Preview, req.Body == nil)
			}
			if err := ReadContinuation(br, req, fuzzLimits); err != nil {
				checkReadError(t, data, err)
				return
			}
			if !req.IEOF {
				t.Fatal("IEOF still false after ReadContinuation")
			}
		}
		if int64(len(req.Body)) > fuzzLimits.MaxBodyBytes {
			t.Fatalf("%d body bytes, limit %d", len(req.Body), fuzzLimits.MaxBodyBytes)
		}

		// Re-encode the complete request and read it back.
		var buf bytes.Buffer
		w := bufio.NewWriter(&buf)
		needContinue, err := WriteRequest(w, req)
		if err != nil {
			t.Fatal(err)
		}
		if want := req.Body != nil && req.Preview >= 0 && len(req.Body) > req.Preview; needContinue != want {
			t.Fatalf("needContinue = %t, want %t", needContinue, want)
		}
		if needContinue {
			if err := WriteContinuation(w, req); err != nil {
				t.Fatal(err)
			}
		}
		w.Flush()
		encoded := buf.String()
		// Re-encoding normalises line ends and spacing and may add fields,
		// so it can outgrow the small limits the input was held to.
		br2 := bufio.NewReaderSize(&buf, fuzzBufSize)
		got, err := ReadRequest(br2, Limits{MaxBodyBytes: fuzzLimits.MaxBodyBytes})
		if err != nil {
			t.Fatalf("re-encoded request does not parse: %v\n%q", err, encoded)
		}
		if got.IEOF == needContinue {
			t.Fatalf("re-read IEOF = %t with needContinue = %t\n%q", got.IEOF, needContinue, encoded)
		}
		if !got.IEOF {
			if err := ReadContinuation(br2, got, Limits{MaxBodyBytes: fuzzLimits.MaxBodyBytes}); err != nil {
				t.Fatalf("re-encoded continuation: %v\n%q", err, encoded)
			}
		}
		if rest, _ := io.ReadAll(br2); len(rest) != 0 {
			t.Fatalf("%d bytes left after the re-encoded request\n%q", len(rest), encoded)
		}
		if got.Method != req.Method || got.URI != req.URI || got.Preview != req.Preview {
			t.Fatalf("re-read %q %q Preview %d, want %q %q Preview %d",
				got.Method, got.URI, got.Preview, req.Method, req.URI, req.Preview)
		}
		if !sameBytes(got.ReqHdr, req.ReqHdr) || !sameBytes(got.ResHdr, req.ResHdr) || !sameBytes(got.Body, req.Body) {
			t.Fatalf("sections changed:\nReqHdr %q -> %q\nResHdr %q -> %q\nBody %q -> %q",
				req.ReqHdr, got.ReqHdr, req.ResHdr, got.ResHdr, req.Body, got.Body)
		}
		if a, b := withoutFields(got.Header, "Encapsulated", "Preview"), withoutFields(req.Header, "Encapsulated", "Preview"); !reflect.DeepEqual(a, b) {
			t.Fatalf("header changed: %q -> %q", b, a)
		}
		if req.Preview >= 0 && got.Header.Get("Preview") != strconv.Itoa(req.Preview) {
			t.Fatalf("Preview field %q, want %d", got.Header.Get("Preview"), req.Preview)
		}
	})
}

func FuzzReadResponse(f *testing.F) {
	for _, s := range responseSeeds() {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		src := bytes.NewReader(data)
		br := bufio.NewReaderSize(src, fuzzBufSize)
		resp, err := ReadResponse(br, fuzzLimits)
		if err != nil {
			if resp != nil {
				t.Fatal("response returned with an error")
			}
			checkReadError(t, data, err)
			return
		}
		consumed := len(data) - src.Len() - br.Buffered()
		checkPrefixes(t, data[:consumed], func(br *bufio.Reader) error {
			_, err := ReadResponse(br, fuzzLimits)
			return err
		})

		if resp.StatusCode < 100 || resp.StatusCode > 999 {
			t.Fatalf("status %d accepted", resp.StatusCode)
		}
		checkHeaderLimits(t, resp.Header, fuzzLimits)
		checkSections(t, resp.ReqHdr, resp.ResHdr, fuzzLimits)
		if int64(len(resp.Body)) > fuzzLimits.MaxBodyBytes {
			t.Fatalf("%d body bytes, limit %d", len(resp.Body), fuzzLimits.MaxBodyBytes)
		}
		if resp.StatusCode == 100 {
			if resp.ReqHdr != nil || resp.ResHdr != nil || resp.Body != nil {
				t.Fatal("100 Continue read with encapsulated sections")
			}
		} else {
			checkAgainstEncapsulated(t, resp.Header, resp.ReqHdr, resp.ResHdr, resp.Body)
		}

		var buf bytes.Buffer
		w := bufio.NewWriter(&buf)
		if err := WriteResponse(w, resp); err != nil {
			t.Fatal(err)
		}
		w.Flush()
		encoded := buf.String()
		br2 := bufio.NewReaderSize(&buf, fuzzBufSize)
		got, err := ReadResponse(br2, Limits{MaxBodyBytes: fuzzLimits.MaxBodyBytes})
		if err != nil {
			t.Fatalf("re-encoded response does not parse: %v\n%q", err, encoded)
		}
		if rest, _ := io.ReadAll(br2); len(rest) != 0 {
			t.Fatalf("%d bytes left after the re-encoded response\n%q", len(rest), encoded)
		}
		wantReason := resp.Reason
		if wantReason == "" {
			wantReason = StatusText(resp.StatusCode)
		}
		if got.StatusCode != resp.StatusCode || got.Reason != wantReason {
			t.Fatalf("re-read %d %q, want %d %q", got.StatusCode, got.Reason, resp.StatusCode, wantReason)
		}
		if !sameBytes(got.ReqHdr, resp.ReqHdr) || !sameBytes(got.ResHdr, resp.ResHdr) || !sameBytes(got.Body, resp.Body) {
			t.Fatalf("sections changed:\nReqHdr %q -> %q\nResHdr %q -> %q\nBody %q -> %q",
				resp.ReqHdr, got.ReqHdr, resp.ResHdr, got.ResHdr, resp.Body, got.Body)
		}
		// WriteResponse rewrites Encapsulated except on a 100.
		var ignore []string
		if resp.StatusCode != 100 {
			ignore = []string{"Encapsulated"}
		}
		if a, b := withoutFields(got.Header, ignore...), withoutFields(resp.Header, ignore...); !reflect.DeepEqual(a, b) {
			t.Fatalf("header changed: %q -> %q", b, a)
		}
	})
}

func FuzzParseEncapsulated(f *testing.F) {
	for _, s := range []string{
		"null-body=0",
		"opt-body=0",
		"req-hdr=0, null-body=170",
		"req-hdr=0, req-body=412",
		"res-hdr=0, res-body=222",
		"req-hdr=0, res-hdr=137, res-body=296",
		"req-hdr=0,res-hdr=137,null-body=296",
		"res-hdr=0, req-hdr=10, null-body=20",
		"",
		"req-hdr=0",
		"req-hdr=5, null-body=10",
		"req-hdr=0, req-hdr=10, null-body=20",
		"req-hdr=0, res-hdr=100, res-body=50",
		"null-body=0, req-hdr=0",
		"req-hdr, null-body=10",
		"req-hdr=0, null-body=+10",
		"req-hdr=0, null-body=99999999999999999999",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		secs, err := parseEncapsulated(v)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("err = %v, want ErrMalformed", err)
			}
			if secs != nil {
				t.Fatal("sections returned with an error")
			}
			return
		}
		if len(secs) == 0 || len(secs) > 3 {
			t.Fatalf("%d sections", len(secs))
		}
		if secs[0].off != 0 {
			t.Fatalf("first offset %d", secs[0].off)
		}
		seen := map[string]bool{}
		parts := make([]string, len(secs))
		for i, s := range secs {
			if seen[s.name] {
				t.Fatalf("%s twice", s.name)
			}
			seen[s.name] = true
			if isBodySection(s.name) != (i == len(secs)-1) {
				t.Fatalf("body entry %s at %d of %d", s.name, i, len(secs))
			}
			if s.name != "req-hdr" && s.name != "res-hdr" && !isBodySection(s.name) {
				t.Fatalf("unknown section %q", s.name)
			}
			if i > 0 && s.off < secs[i-1].off {
				t.Fatalf("offsets decrease: %v", secs)
			}
			parts[i] = s.name + "=" + strconv.Itoa(s.off)
		}
		again, err := parseEncapsulated(strings.Join(parts, ", "))
		if err != nil || !reflect.DeepEqual(again, secs) {
			t.Fatalf("canonical form %q reads as %v, %v; want %v", strings.Join(parts, ", "), again, err, secs)
		}
	})
}
