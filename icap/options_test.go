package icap

import (
	"bufio"
	"bytes"
	"errors"
	"math"
	"reflect"
	"strings"
	"testing"
	"time"
)

// optionsResponse builds a 200 answer to OPTIONS from name/value pairs.
func optionsResponse(kv ...string) *Response {
	h := make(Header)
	for i := 0; i < len(kv); i += 2 {
		h.Add(kv[i], kv[i+1])
	}
	return &Response{StatusCode: 200, Reason: "OK", Header: h}
}

func TestParseOptions(t *testing.T) {
	tests := []struct {
		name string
		resp *Response
		want Options
	}{
		{
			name: "full SPE-style answer",
			resp: optionsResponse(
				"Methods", "RESPMOD, REQMOD",
				"Service", "Example AV 1.0",
				"ISTag", `"W3E4R7U9-L2E4-2"`,
				"Service-ID", "avscan",
				"Max-Connections", "500",
				"Options-TTL", "3600",
				"Preview", "4096",
				"Allow", "204",
				"Transfer-Preview", "*",
				"Transfer-Ignore", "jpg, gif ,png",
				"Transfer-Complete", "exe,zip",
			),
			want: Options{
				Methods:          []string{"RESPMOD", "REQMOD"},
				Service:          "Example AV 1.0",
				ISTag:            "W3E4R7U9-L2E4-2",
				ServiceID:        "avscan",
				MaxConnections:   500,
				TTL:              time.Hour,
				Preview:          4096,
				Allow204:         true,
				TransferPreview:  []string{"*"},
				TransferIgnore:   []string{"jpg", "gif", "png"},
				TransferComplete: []string{"exe", "zip"},
			},
		},
		{
			name: "nothing advertised",
			resp: optionsResponse(),
			want: Options{Preview: -1},
		},
		{
			name: "Preview 0",
			resp: optionsResponse("Preview", "0"),
			want: Options{Preview: 0},
		},
		{
			name: "lower-case field names",
			resp: optionsResponse("istag", `"t"`, "options-ttl", "60", "max-connections", "2", "service-id", "x"),
			want: Options{ISTag: "t", TTL: time.Minute, MaxConnections: 2, ServiceID: "x", Preview: -1},
		},
		{
			name: "empty list entries dropped",
			resp: optionsResponse("Methods", " , RESPMOD,,"),
			want: Options{Methods: []string{"RESPMOD"}, Preview: -1},
		},
		{
			name: "zero values",
			resp: optionsResponse("Max-Connections", "0", "Options-TTL", "0"),
			want: Options{Preview: -1},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseOptions(tt.resp)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got  %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

func TestParseOptionsAllow(t *testing.T) {
	tests := []struct {
		allow string
		want  bool
	}{
		{"204", true},
		{"204, 206", true},
		{"206, 204", true},
		{"206,204", true},
		{" 204 ", true},
		{"206", false},
		{"2040", false},
		{"1204", false},
		{"20", false},
		{"", false},
	}
	for _, tt := range tests {
		t.Run(tt.allow, func(t *testing.T) {
			o, err := ParseOptions(optionsResponse("Allow", tt.allow))
			if err != nil {
				t.Fatal(err)
			}
			if o.Allow204 != tt.want {
				t.Errorf("Allow: %q gives Allow204 = %t, want %t", tt.allow, o.Allow204, tt.want)
			}
		})
	}
}

func TestParseOptionsISTag(t *testing.T) {
	tests := []struct{ in, want string }{
		{`"W3E4R7U9-L2E4-2"`, "W3E4R7U9-L2E4-2"},
		{`W3E4R7U9`, "W3E4R7U9"},
		{`""`, ""},
		{`"1.0.0.1:2020-01-01"`, "1.0.0.1:2020-01-01"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			o, err := ParseOptions(optionsResponse("ISTag", tt.in))
			if err != nil {
				t.Fatal(err)
			}
			if o.ISTag != tt.want {
				t.Errorf("ISTag = %q, want %q", o.ISTag, tt.want)
			}
		})
	}
}

func TestParseOptionsMalformed(t *testing.T) {
	tests := []struct{ field, value string }{
		{"Max-Connections", "abc"},
		{"Max-Connections", "-1"},
		{"Max-Connections", "1.5"},
		{"Max-Connections", "99999999999999999999"},
		{"Options-TTL", "one hour"},
		{"Options-TTL", "-5"},
		{"Options-TTL", "3600s"},
		{"Options-TTL", "9223372036854775807"},
		{"Max-Connections", "+5"},
		{"Preview", " +1"},
		{"Preview", "x"},
		{"Preview", "-1"},
		{"Preview", "4k"},
	}
	for _, tt := range tests {
		t.Run(tt.field+"="+tt.value, func(t *testing.T) {
			_, err := ParseOptions(optionsResponse(tt.field, tt.value))
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("err = %v, want ErrMalformed", err)
			}
			if !strings.Contains(err.Error(), tt.field) {
				t.Errorf("error %q does not name the field", err)
			}
		})
	}
}

// A TTL too long for a time.Duration must not wrap around to a negative
// one, which would make the answer look expired before it is used.
func TestParseOptionsHugeTTL(t *testing.T) {
	for _, v := range []string{"9223372037", "99999999999", "999999999999999999"} {
		t.Run(v, func(t *testing.T) {
			o, err := ParseOptions(optionsResponse("Options-TTL", v))
			if err != nil {
				t.Fatal(err)
			}
			if o.TTL != math.MaxInt64 {
				t.Errorf("TTL = %v, want the longest Duration", o.TTL)
			}
		})
	}
}

func TestParseOptionsStatus(t *testing.T) {
	for _, code := range []int{100, 204, 404, 500} {
		t.Run(StatusText(code), func(t *testing.T) {
			resp := optionsResponse("Methods", "RESPMOD", "ISTag", `"t"`)
			resp.StatusCode, resp.Reason = code, StatusText(code)
			_, err := ParseOptions(resp)
			if err == nil {
				t.Fatalf("no error for status %d", code)
			}
			var se *StatusError
			if !errors.As(err, &se) || se.Code != code {
				t.Errorf("err = %#v, want a *StatusError with Code %d", err, code)
			}
		})
	}
}

func TestOptionsHeader(t *testing.T) {
	o := Options{
		Methods:        []string{"RESPMOD"},
		ISTag:          "t1",
		ServiceID:      "avscan",
		MaxConnections: 10,
		TTL:            90 * time.Second,
		Preview:        0,
		Allow204:       true,
	}
	want := Header{
		"Methods":         {"RESPMOD"},
		"ISTag":           {`"t1"`},
		"Service-ID":      {"avscan"},
		"Max-Connections": {"10"},
		"Options-TTL":     {"90"},
		"Preview":         {"0"},
		"Allow":           {"204"},
	}
	if got := o.Header(); !reflect.DeepEqual(got, want) {
		t.Errorf("Header() = %v, want %v", got, want)
	}
	if got := (Options{Preview: -1}).Header(); len(got) != 0 {
		t.Errorf("empty Options give %v, want no fields", got)
	}
}

// Options survive being advertised by a server and read back by a client,
// through the wire encoding.
func TestOptionsRoundTrip(t *testing.T) {
	tests := []struct {
		name string
		o    Options
	}{
		{"empty", Options{Preview: -1}},
		{"preview 0", Options{Preview: 0}},
		{"no 204", Options{Methods: []string{"REQMOD"}, ISTag: "x", Preview: 1024}},
		{"full", Options{
			Methods:          []string{"RESPMOD", "REQMOD"},
			Service:          "Example AV 1.0",
			ISTag:            "W3E4R7U9-L2E4-2",
			ServiceID:        "avscan",
			MaxConnections:   500,
			TTL:              24 * time.Hour,
			Preview:          4096,
			Allow204:         true,
			TransferPreview:  []string{"*"},
			TransferIgnore:   []string{"jpg", "gif"},
			TransferComplete: []string{"exe"},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			w := bufio.NewWriter(&buf)
			if err := WriteResponse(w, &Response{StatusCode: 200, Header: tt.o.Header()}); err != nil {
				t.Fatal(err)
			}
			w.Flush()
			resp, err := ReadResponse(bufio.NewReader(&buf), Limits{})
			if err != nil {
				t.Fatal(err)
			}
			got, err := ParseOptions(resp)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.o) {
				t.Errorf("got  %+v\nwant %+v", got, tt.o)
			}
		})
	}
}
