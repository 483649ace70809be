//go:build !linux

package bpf

import "time"

// Probe is the kernel side; it exists only on Linux.
type Probe struct{}

// Open reports that eBPF needs Linux.
func Open(Config) (*Probe, error) { return nil, ErrNotSupported }

// Load reports that eBPF needs Linux.
func Load(Config) (*Probe, error) { return nil, ErrNotSupported }

// KernelEnums reports that the compiled objects are Linux's.
func KernelEnums() (map[string]map[string]uint64, error) { return nil, ErrNotSupported }

func (*Probe) Read() (Event, error)                       { return Event{}, ErrNotSupported }
func (*Probe) ReadBatch([]Event) (int, error)             { return 0, ErrNotSupported }
func (*Probe) SetDeadline(time.Time)                      {}
func (*Probe) RunClassifier(bool, []byte) (uint32, error) { return 0, ErrNotSupported }
func (*Probe) Hooks() []HookStatus                        { return nil }
func (*Probe) Stats(bool) (Stats, error)                  { return Stats{}, ErrNotSupported }
func (*Probe) Output() string                             { return "" }
func (*Probe) ReorderWindow() time.Duration               { return 0 }
func (*Probe) Close() error                               { return nil }
