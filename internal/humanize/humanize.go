// Package humanize formats durations for people. Duration is the one rule
// for prose: event summaries, logs and what the demo prints. Precise and
// Fixed are for the command line's reports and tables, where the reader
// compares numbers rather than reads them.
package humanize

import (
	"fmt"
	"time"
)

// Duration formats d as event summaries say it: whole milliseconds below
// a second ("41 ms"), three significant digits below a minute ("10 s",
// "1.25 s"), tenths of a second above ("293.3 s"). d is rounded to the
// microsecond first, the resolution the agent's clocks agree to, so
// 999.9996 ms reads "1 s".
func Duration(d time.Duration) string {
	s := float64(d.Round(time.Microsecond)) / float64(time.Second)
	switch {
	case s < 1:
		return fmt.Sprintf("%.0f ms", s*1000)
	case s < 60:
		return fmt.Sprintf("%.3g s", s)
	default:
		return fmt.Sprintf("%.1f s", s)
	}
}

// Precise formats d as Go's time.Duration does ("41.2ms", "293.301s"),
// rounded to what still means something at that size: the microsecond
// below a millisecond, 100 µs below a second, the millisecond above. It
// is for reports of recorded traffic, where sub-millisecond gaps matter.
func Precise(d time.Duration) string {
	switch {
	case d < time.Millisecond:
		return d.Round(time.Microsecond).String()
	case d < time.Second:
		return d.Round(100 * time.Microsecond).String()
	}
	return d.Round(time.Millisecond).String()
}

// Fixed formats d with a fixed number of decimals so that a column of
// timings lines up: milliseconds to the microsecond below a second
// ("41.000ms"), seconds to the hundredth above ("1.25s").
func Fixed(d time.Duration) string {
	s := d.Seconds()
	if s >= 1 {
		return fmt.Sprintf("%.2fs", s)
	}
	return fmt.Sprintf("%.3fms", s*1000)
}
