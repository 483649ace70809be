// Package bpftest holds what the tests of the kernel side share: Ethernet
// frames built by hand, the classifier's cases (frames, and the events
// they must give), and helpers that run frames through a loaded probe's TC
// programs and read the events back. bpf's own tests use it, and so does
// the agent's test that holds the kernel classifier and the capture parser
// together.
//
// bpf's tests import it, so it cannot import bpf: the helpers take the
// probe through small interfaces that bpf.Probe satisfies, and the cases
// name event types, directions, phases, flags and counters as the C enums
// of icapwatch.h do ("EV_ANSWER"), which bpf.KernelEnums resolves. Like
// bpf, it imports nothing of the agent.
package bpftest
