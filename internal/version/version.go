// Package version holds build information stamped at link time with
// -ldflags "-X github.com/icapwatch/icapwatch/internal/version.Version=…".
package version

import (
	"fmt"
	"runtime"
	"runtime/debug"
)

// Set by the linker; see the Makefile.
var (
	Version  = "dev"
	Revision = ""
)

// GoVersion is the toolchain the binary was built with.
var GoVersion = runtime.Version()

// revision falls back to the VCS revision Go records when building inside a
// checkout, so that a plain `go build` still says which commit it is.
func revision() string {
	if Revision != "" {
		return Revision
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" {
				return s.Value
			}
		}
	}
	return "unknown"
}

// String is the one-line form printed by `icapwatch version`.
func String() string {
	return fmt.Sprintf("icapwatch %s (revision %s, %s, %s/%s)", Version, revision(), GoVersion, runtime.GOOS, runtime.GOARCH)
}

// Info is the machine-readable form.
func Info() map[string]string {
	return map[string]string{
		"version":   Version,
		"revision":  revision(),
		"goversion": GoVersion,
		"platform":  runtime.GOOS + "/" + runtime.GOARCH,
	}
}
