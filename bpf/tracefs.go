package bpf

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// TracefsPaths are where tracefs is mounted, newest convention first
// (Documentation/trace/ftrace.rst: /sys/kernel/tracing since 4.1, the debugfs
// path before).
var TracefsPaths = []string{"/sys/kernel/tracing", "/sys/kernel/debug/tracing"}

// ErrNoTracefs says tracefs is not mounted where the agent looks.
var ErrNoTracefs = errors.New("tracefs is not mounted: mount it with `mount -t tracefs nodev /sys/kernel/tracing`")

// capsTracefs: tracefs is root's, mode 0700.
const capsTracefs = "root, or CAP_DAC_READ_SEARCH"

// Field is one field of a tracepoint's record.
type Field struct {
	Name   string
	Type   string // C type as the kernel prints it, e.g. "__u8 saddr[4]" gives "__u8"
	Offset int
	Size   int
	Signed bool
}

// Format is a tracepoint's record layout.
type Format struct {
	Name   string
	ID     int
	Fields map[string]Field
}

// Field returns the named field, with an error that names the tracepoint
// when this kernel does not have it.
func (f Format) Field(name string) (Field, error) {
	fd, ok := f.Fields[name]
	if !ok {
		return Field{}, fmt.Errorf("tracepoint %s has no field %q on this kernel", f.Name, name)
	}
	return fd, nil
}

// FindTracefs returns the first path in TracefsPaths where tracefs is
// mounted, or ErrNoTracefs, or a permission error when it cannot be read.
func FindTracefs() (string, error) {
	for _, p := range TracefsPaths {
		_, err := os.Stat(filepath.Join(p, "events"))
		if err == nil {
			return p, nil
		}
		if errors.Is(err, fs.ErrPermission) {
			return "", fmt.Errorf("read tracefs: %w (needs %s)", err, capsTracefs)
		}
	}
	return "", ErrNoTracefs
}

// ReadFormat reads events/SYSTEM/EVENT/format under the tracefs root.
func ReadFormat(root, system, event string) (Format, error) {
	path := filepath.Join(root, "events", system, event, "format")
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrPermission) {
		return Format{}, fmt.Errorf("tracepoint %s:%s: %w (needs %s)", system, event, err, capsTracefs)
	}
	if err != nil {
		return Format{}, fmt.Errorf("tracepoint %s:%s: %w", system, event, err)
	}
	defer f.Close()
	return ParseFormat(f)
}

// ParseFormat parses a tracefs format file: the name, the ID and one
// "field:TYPE NAME; offset:N; size:N; signed:N;" line per field.
func ParseFormat(r io.Reader) (Format, error) {
	ft := Format{Fields: map[string]Field{}}
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case strings.HasPrefix(line, "name:"):
			ft.Name = strings.TrimSpace(strings.TrimPrefix(line, "name:"))
		case strings.HasPrefix(line, "ID:"):
			id, err := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(line, "ID:")))
			if err != nil {
				return Format{}, fmt.Errorf("format: bad ID line %q", line)
			}
			ft.ID = id
		case strings.HasPrefix(line, "field:"):
			fd, err := parseField(line)
			if err != nil {
				return Format{}, err
			}
			ft.Fields[fd.Name] = fd
		}
	}
	if err := sc.Err(); err != nil {
		return Format{}, fmt.Errorf("format: %w", err)
	}
	if ft.Name == "" || len(ft.Fields) == 0 {
		return Format{}, errors.New("format: no name or no fields: not a tracefs format file")
	}
	return ft, nil
}

// parseField parses "field:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;".
func parseField(line string) (Field, error) {
	var fd Field
	bad := func(why string) (Field, error) { return Field{}, fmt.Errorf("format: %s in %q", why, line) }
	sawOffset, sawSize := false, false
	for _, part := range strings.Split(line, ";") {
		key, val, ok := strings.Cut(strings.TrimSpace(part), ":")
		if !ok {
			continue
		}
		val = strings.TrimSpace(val)
		switch key {
		case "field":
			decl := val
			// The name is the last word, without an array suffix.
			i := strings.LastIndexAny(decl, " *")
			if i < 0 || i == len(decl)-1 {
				return bad("no field name")
			}
			fd.Type = strings.TrimSpace(decl[:i+1])
			fd.Name, _, _ = strings.Cut(decl[i+1:], "[")
		case "offset", "size", "signed":
			n, err := strconv.Atoi(val)
			if err != nil || n < 0 {
				return bad("bad " + key)
			}
			switch key {
			case "offset":
				fd.Offset, sawOffset = n, true
			case "size":
				fd.Size, sawSize = n, true
			default:
				fd.Signed = n != 0
			}
		}
	}
	if fd.Name == "" || !sawOffset || !sawSize || fd.Size == 0 {
		return bad("incomplete field")
	}
	return fd, nil
}
