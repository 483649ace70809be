// Package agent is the daemon behind `icapwatch agent` and the demo: it
// runs the live sources, feeds what they see to the correlator and serves
// the result.
//
// The data flow, as the folders show it:
//
//	bpf (kernel events) ─┐
//	sock_diag (here)     ├─▶ agent/observe ─▶ agent/correlate ─▶ exporter (/metrics, API), logs
//	canary (here)        ┘   (the model)      (the diagnosis)
//	capture file ─▶ agent/wire ─▶ agent/analyze ─▶ the same correlator, offline
//
// The sources here are the kernel reader (the conversion of bpf's events
// into observations lives in kernel.go, so that bpf needs nothing of the
// agent), netlink sock_diag with /proc for socket owners, and the canary,
// the agent's own ICAP client. The Prometheus side of the correlator is
// here too: its Meter (histograms and counters as things happen), the
// counters that follow events, and the collector that computes the state
// gauges from the correlator at each scrape.
//
// Imports point one way: cmd → agent → {correlate, observe, bpf, exporter,
// icap}; nothing below imports agent. The kernel probes need root or
// CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN (see bpf); without them the agent
// runs on sock_diag, which needs no privileges.
package agent
