//go:build race

package testutil

// RaceEnabled is true in binaries built with -race, whose instrumentation
// slows every goroutine switch: timing comparisons need more room there.
const RaceEnabled = true
