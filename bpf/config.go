package bpf

import (
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/go-hclog"
)

// ErrNotSupported is returned where the platform cannot run the probes.
var ErrNotSupported = errors.New("bpf: not supported on this platform")

// Modes for Config.TC, Config.Output and Config.Kprobes. "auto" probes the
// kernel and takes the best it offers.
const (
	ModeAuto      = "auto"
	TCModeTCX     = "tcx"
	TCModeNetlink = "netlink"
	OutputPerf    = "perf"
	OutputRing    = "ringbuf"
	KprobesOff    = "off"
)

// Config says what to watch and how.
type Config struct {
	Ports      []uint16 // watched ICAP server ports
	Interfaces []string // nil: every interface that is up, and those that come up later
	MaxFlows   uint32   // size of the kernel's LRU flow table
	// PerCPUBuffer is the perf buffer per CPU, RingBuffer the BPF ring
	// buffer, in bytes (rounded up to pages by the kernel side).
	PerCPUBuffer int
	RingBuffer   int
	// Poll is how often the reader looks for events: the kernel side does
	// not wake it per event, which would cost microseconds per packet.
	Poll    time.Duration
	TC      string // auto, tcx or netlink
	Output  string // auto, perf or ringbuf
	Kprobes string // auto or off
	Logger  hclog.Logger
	// Proc is the host's /proc, where the namespaces behind the watched
	// interfaces (pods' veths) are found.
	Proc string

	// attachLoopbackIngress also puts the ingress program on loopback,
	// which the agent leaves out (egress sees every loopback packet), so
	// that Check tries both hooks.
	attachLoopbackIngress bool
}

// DefaultConfig watches secure and plain ICAP on every interface.
func DefaultConfig() Config {
	return Config{
		Ports:        []uint16{11344, 1344},
		MaxFlows:     65536,
		PerCPUBuffer: 256 << 10,
		RingBuffer:   4 << 20,
		Poll:         50 * time.Millisecond,
		TC:           ModeAuto,
		Output:       ModeAuto,
		Kprobes:      ModeAuto,
		Proc:         "/proc",
	}
}

// Validate names the setting that is wrong.
func (c Config) Validate() error {
	if len(c.Ports) == 0 {
		return errors.New("ports: at least one port to watch is needed")
	}
	for _, p := range c.Ports {
		if p == 0 {
			return errors.New("ports: port 0 cannot be watched")
		}
	}
	if c.MaxFlows < 16 || c.MaxFlows > 1<<24 {
		return fmt.Errorf("max-flows: %d is out of range [16, %d]", c.MaxFlows, 1<<24)
	}
	if c.PerCPUBuffer < 4096 {
		return fmt.Errorf("perf buffer: %d bytes is less than a page", c.PerCPUBuffer)
	}
	if c.RingBuffer < 4096 || c.RingBuffer&(c.RingBuffer-1) != 0 {
		return fmt.Errorf("ring buffer: %d bytes is not a power of two of at least a page", c.RingBuffer)
	}
	if c.Poll < time.Millisecond || c.Poll > time.Second {
		return fmt.Errorf("poll: %v is out of range [1ms, 1s]", c.Poll)
	}
	for _, m := range []struct {
		name, v string
		ok      []string
	}{
		{"tc", c.TC, []string{ModeAuto, TCModeTCX, TCModeNetlink}},
		{"output", c.Output, []string{ModeAuto, OutputPerf, OutputRing}},
		{"kprobes", c.Kprobes, []string{ModeAuto, KprobesOff}},
	} {
		if !contains(m.ok, m.v) {
			return fmt.Errorf("%s: %q is not one of %v", m.name, m.v, m.ok)
		}
	}
	return nil
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// Hook names, as the icapwatch_kernel_hook_attached metric labels them.
const (
	HookTCIngress     = "tc_ingress"
	HookTCEgress      = "tc_egress"
	HookSetState      = "tracepoint/sock/inet_sock_set_state"
	HookRetransmitSKB = "tracepoint/tcp/tcp_retransmit_skb"
	HookSendLength    = "tracepoint/sock/sock_send_length" // optional: 6.x kernels
	HookSendmsg       = "kprobe/tcp_sendmsg"
	HookCleanupRbuf   = "kprobe/tcp_cleanup_rbuf"
)

// HookStatus says whether one hook runs, and how or why not.
type HookStatus struct {
	Name     string `json:"name"`
	Attached bool   `json:"attached"`
	Optional bool   `json:"optional"`
	Mode     string `json:"mode,omitempty"` // tcx, netlink, perf_event ...
	Detail   string `json:"detail,omitempty"`
	Error    string `json:"error,omitempty"`
}

// Stats are the kernel side's counters, summed over CPUs.
type Stats struct {
	Watched      uint64 // packets of TCP on a watched port
	Duplicates   uint64 // the same packet seen at a second hook, dropped
	Malformed    uint64
	FlowsCreated uint64
	FlowsDeleted uint64
	FlowsFull    uint64
	Events       uint64 // events written to the buffer
	EventsLost   uint64 // refused by the buffer in the kernel, or lost by the reader
	EventsLate   uint64 // returned after a later event (perf buffer, see EventReader.Read); not lost
	Tracepoint   uint64
	Kprobe       uint64
	// OtherNetns: socket events of another network namespace left out:
	// of a flow TC does not see, or whose traffic did not come from that
	// namespace through a watched interface.
	OtherNetns uint64
	Flows      int // entries in the flow table now
	// FlowEvictions estimates the LRU's silent evictions: flows created
	// and neither deleted nor still in the table.
	FlowEvictions uint64
}
