// Package bpf is icapwatch's kernel side: the eBPF programs (icapwatch.c),
// their bpf2go bindings, the loader that attaches them, the reader of the
// events they send and the check of what the running kernel offers.
//
// Two TC programs classify the segments of connections to the watched
// ports and send an event at each exchange boundary (request start, ACK,
// answer, TLS alert, FIN, RST, retransmission); tracepoints add TCP state
// changes, with the owner's PID where the kernel runs in its context, and
// the stack's retransmissions; optional kprobes add the application's
// writes and reads.
//
// # What it needs from the kernel
//
// The baseline is Linux 4.18, as RHEL 8 ships it: TC clsact with
// direct-action BPF filters, the tracepoints sock:inet_sock_set_state and
// tcp:tcp_retransmit_skb, and a perf event array for the events. The
// baseline object needs no more (a test checks the compiled ELF). Where the
// running kernel offers more, the loader probes for it and takes it, and
// reports what it did not get rather than failing:
//
//   - the BPF ring buffer (5.8+) instead of the perf event array;
//   - TCX links (6.6+) instead of netlink clsact filters;
//   - kprobes on tcp_sendmsg and tcp_cleanup_rbuf, with the kernel's BTF
//     for the struct sock_common offsets they read.
//
// Tracepoint layouts moved between 4.18 and 6.x and between RHEL minors, so
// the programs never assume one: the loader reads each field's offset from
// the running kernel's tracefs format file and passes it in a config map.
//
// # What it may import
//
// The standard library, cilium/ebpf, vishvananda/netlink (and netns),
// hashicorp/go-hclog and golang.org/x/sys; nothing of the agent
// (github.com/icapwatch/icapwatch/agent/...), in its tests neither:
// internal/archtest holds the rule. The agent's event model, agent/observe,
// names the event types, flags, directions, phases and TCP states; an
// Event here carries them as the kernel wrote them, and KernelEnums reads
// the C enums from the compiled object for the test that holds the two
// together.
package bpf
