package humanize

import (
	"testing"
	"time"
)

func TestDuration(t *testing.T) {
	for _, tc := range []struct {
		d    time.Duration
		want string
	}{
		{0, "0 ms"},
		{400 * time.Microsecond, "0 ms"},
		{41 * time.Millisecond, "41 ms"},
		{41600 * time.Microsecond, "42 ms"},
		{999400 * time.Microsecond, "999 ms"},
		// Rounded to the microsecond first: a hair under a second is one.
		{999999600 * time.Nanosecond, "1 s"},
		{time.Second, "1 s"},
		{1250 * time.Millisecond, "1.25 s"},
		{10 * time.Second, "10 s"},
		{12345 * time.Millisecond, "12.3 s"},
		{59900 * time.Millisecond, "59.9 s"},
		{time.Minute, "60.0 s"},
		{293300 * time.Millisecond, "293.3 s"},
		{293349 * time.Millisecond, "293.3 s"},
		{2 * time.Hour, "7200.0 s"},
		{-41 * time.Millisecond, "-41 ms"},
	} {
		if got := Duration(tc.d); got != tc.want {
			t.Errorf("Duration(%v) = %q, want %q", tc.d, got, tc.want)
		}
	}
}

func TestPrecise(t *testing.T) {
	for _, tc := range []struct {
		d    time.Duration
		want string
	}{
		{0, "0s"},
		{1234 * time.Nanosecond, "1µs"},
		{999499 * time.Nanosecond, "999µs"},
		{41234 * time.Microsecond, "41.2ms"},
		{41250 * time.Microsecond, "41.3ms"},
		{999940 * time.Microsecond, "999.9ms"},
		{time.Second, "1s"},
		{293300400 * time.Microsecond, "4m53.3s"},
		{10*time.Second + 1499*time.Microsecond, "10.001s"},
	} {
		if got := Precise(tc.d); got != tc.want {
			t.Errorf("Precise(%v) = %q, want %q", tc.d, got, tc.want)
		}
	}
}

func TestFixed(t *testing.T) {
	for _, tc := range []struct {
		d    time.Duration
		want string
	}{
		{0, "0.000ms"},
		{1234 * time.Nanosecond, "0.001ms"},
		{41 * time.Millisecond, "41.000ms"},
		{41234567 * time.Nanosecond, "41.235ms"},
		{999999 * time.Microsecond, "999.999ms"},
		{time.Second, "1.00s"},
		{1254 * time.Millisecond, "1.25s"},
		{293300 * time.Millisecond, "293.30s"},
		{-5 * time.Millisecond, "-5.000ms"},
	} {
		if got := Fixed(tc.d); got != tc.want {
			t.Errorf("Fixed(%v) = %q, want %q", tc.d, got, tc.want)
		}
	}
}
