//go:build !race

package testutil

// RaceEnabled is true in binaries built with -race.
const RaceEnabled = false
