package correlate

import (
	"math"
	"time"
)

// instant is a time as the correlator keeps it: nanoseconds since the
// Unix epoch on the wall clock of the observation's source, 8 bytes where
// a time.Time takes 24. Zero is no time, as time.Time's zero value is.
//
// Observations arrive with time.Time and events leave with it; the
// conversions are at those edges. A monotonic clock reading is not kept:
// the correlator compares times of one source, and its wall clock is the
// one every source has. Sub and Add saturate, as time.Time.Sub does.
type instant int64

// The seconds an instant holds (the years 1678 to 2262); a time beyond is
// held at the bound.
const (
	minInstantSec = math.MinInt64/int64(time.Second) + 1
	maxInstantSec = math.MaxInt64/int64(time.Second) - 1
)

// instantOf converts a time; the zero time is the zero instant.
func instantOf(t time.Time) instant {
	if t.IsZero() {
		return 0
	}
	sec := t.Unix()
	switch {
	case sec < minInstantSec:
		return math.MinInt64
	case sec > maxInstantSec:
		return math.MaxInt64
	}
	if n := sec*int64(time.Second) + int64(t.Nanosecond()); n != 0 {
		return instant(n)
	}
	return 1 // the Unix epoch is a time, not the absence of one: a nanosecond after it
}

// Time converts back to a time in loc; the zero instant is the zero time.
func (i instant) Time(loc *time.Location) time.Time {
	if i == 0 {
		return time.Time{}
	}
	return time.Unix(0, int64(i)).In(loc)
}

func (i instant) IsZero() bool          { return i == 0 }
func (i instant) Before(j instant) bool { return i < j }
func (i instant) After(j instant) bool  { return i > j }

// Sub is i-j, held at the bounds of time.Duration.
func (i instant) Sub(j instant) time.Duration {
	d := time.Duration(i - j)
	if d < 0 == (i >= j) { // the difference overflowed
		if i >= j {
			return math.MaxInt64
		}
		return math.MinInt64
	}
	return d
}

// Add is i+d, held at the bounds of an instant.
func (i instant) Add(d time.Duration) instant {
	s := i + instant(d)
	if s < i != (d < 0) { // overflowed
		if d < 0 {
			return math.MinInt64
		}
		return math.MaxInt64
	}
	return s
}
