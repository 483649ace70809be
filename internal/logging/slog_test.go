package logging

import (
	"bytes"
	"strings"
	"testing"
)

func TestSlog(t *testing.T) {
	var buf bytes.Buffer
	l, err := New("t", "info", "text", &buf)
	if err != nil {
		t.Fatal(err)
	}
	s := Slog(l)
	s.Debug("hidden")
	s.With("a", 1).WithGroup("web").Info("listening", "address", ":9344")
	out := buf.String()
	if strings.Contains(out, "hidden") || !strings.Contains(out, "listening: a=1 web.address=:9344") {
		t.Errorf("got %q", out)
	}
}
