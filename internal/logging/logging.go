// Package logging builds the root hclog logger from the --log.level and
// --log.format flags shared by every subcommand.
package logging

import (
	"fmt"
	"io"
	"strings"

	"github.com/hashicorp/go-hclog"
)

// Levels and formats the flags accept.
var (
	Levels  = []string{"trace", "debug", "info", "warn", "error"}
	Formats = []string{"text", "json"}
)

// New returns the root logger. Subsystems take Named children of it.
func New(name, level, format string, w io.Writer) (hclog.Logger, error) {
	lvl := hclog.LevelFromString(level)
	if lvl == hclog.NoLevel {
		return nil, fmt.Errorf("--log.level %q: want one of %s", level, strings.Join(Levels, ", "))
	}
	if format != "text" && format != "json" {
		return nil, fmt.Errorf("--log.format %q: want one of %s", format, strings.Join(Formats, ", "))
	}
	return hclog.New(&hclog.LoggerOptions{
		Name:       name,
		Level:      lvl,
		Output:     w,
		JSONFormat: format == "json",
	}), nil
}
