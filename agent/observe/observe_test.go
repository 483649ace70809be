package observe

import (
	"testing"
	"unicode/utf8"
)

func TestPrintable(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"scanapp", "scanapp"},
		{"c-icap worker", "c-icap worker"},
		{"\xff\xfebad\xc3", `\xff\xfebad\xc3`},
		{"tab\there", `tab\x09here`},
		{"zero\x00", `zero\x00`},
		{"naïve", "naïve"},
		{"\u2028sep", `\u2028sep`},
		{"", ""},
	} {
		got := Printable(tc.in)
		if got != tc.want || !utf8.ValidString(got) {
			t.Errorf("Printable(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
	if n := testing.AllocsPerRun(100, func() { Printable("scanapp") }); n != 0 {
		t.Errorf("a printable name costs %v allocations", n)
	}
}

func FuzzPrintable(f *testing.F) {
	f.Add("\xff\xfebad\xc3")
	f.Fuzz(func(t *testing.T, s string) {
		if got := Printable(s); !utf8.ValidString(got) || Printable(got) != got {
			t.Fatalf("Printable(%q) = %q: not valid, or not stable", s, got)
		}
	})
}
