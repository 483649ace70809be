package agent

import (
	"context"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/cilium/ebpf/perf"
	"github.com/hashicorp/go-hclog"
	"github.com/icapwatch/icapwatch/agent/observe"
	"github.com/icapwatch/icapwatch/bpf"
	"github.com/icapwatch/icapwatch/bpf/bpftest"
	"golang.org/x/sys/unix"
)

// TestKernelEventsReachCorrelatorInTimeOrder: on the perf buffer, one
// buffer a CPU, the events of two CPUs come to the reader one CPU's after
// the other's, whatever their times: a client's next request (its CPU
// read first) would reach the correlator before the answer to the one
// before. What readKernel hands to the correlator is in kernel-time order.
func TestKernelEventsReachCorrelatorInTimeOrder(t *testing.T) {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		t.Fatal(err)
	}
	// Long enough ago that the reader's window has passed for every event.
	base := time.Duration(ts.Nano()) - time.Second
	client, server := netip.MustParseAddrPort("192.0.2.10:40001"), netip.MustParseAddrPort("192.0.2.1:11344")
	sibling := netip.MustParseAddrPort("192.0.2.10:40002")
	type ev struct {
		cpu  int
		ms   int
		kind observe.Kind
		dir  observe.Direction
		from netip.AddrPort
	}
	sample := func(e ev) perf.Record {
		b := bpf.EncodeEvent(bpf.Event{Type: uint8(e.kind), Mono: base + time.Duration(e.ms)*time.Millisecond,
			Client: e.from, Server: server, Dir: uint8(e.dir), Phase: uint8(observe.PhaseRequest)})
		return perf.Record{CPU: e.cpu, RawSample: b}
	}
	// The client's socket is served on CPU 1, the server's answers come
	// in on CPU 0, and the perf reader empties CPU 1's buffer first, as
	// cilium/ebpf's does (it starts at the last CPU).
	passes := [][]ev{
		{
			{1, 0, observe.ExchangeStart, observe.ToServer, client},
			{1, 30, observe.ExchangeStart, observe.ToServer, client}, // the next request, after the answer
			{0, 10, observe.Acked, observe.ToClient, client},
			{0, 20, observe.Answer, observe.ToClient, client},
			{0, 40, observe.Answer, observe.ToClient, client},
		},
		{
			{1, 60, observe.ExchangeStart, observe.ToServer, client},
			{0, 50, observe.RST, observe.ToClient, sibling}, // the server resets a sibling first
			{0, 70, observe.Answer, observe.ToClient, client},
		},
	}
	src := &bpftest.PerfPasses{}
	var want []time.Duration
	for _, pass := range passes {
		var recs []perf.Record
		for _, e := range pass {
			recs = append(recs, sample(e))
			want = append(want, time.Duration(e.ms)*time.Millisecond)
		}
		src.Passes = append(src.Passes, recs)
	}
	slices.Sort(want)

	cfg := bpf.DefaultConfig()
	cfg.Poll = 5 * time.Millisecond
	reader := bpf.NewPerfEventReader(src, 2, cfg)
	d := &Daemon{log: hclog.NewNullLogger()}
	batches, free := make(chan []observe.Observation, kernelBuffers), make(chan []observe.Observation, kernelBuffers)
	for range kernelBuffers {
		free <- make([]observe.Observation, 0, kernelBatch)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		d.readKernel(context.Background(), reader, batches, free)
	}()
	var got []time.Duration
	var first time.Time
	take := func(batch []observe.Observation) {
		for _, o := range batch {
			if len(got) == 0 {
				first = o.Time
			}
			got = append(got, o.Time.Sub(first))
		}
		free <- batch
	}
	for ended := false; !ended; {
		select {
		case batch := <-batches:
			take(batch)
		case <-done:
			ended = true
		case <-time.After(10 * time.Second):
			t.Fatal("readKernel did not end with its reader")
		}
	}
	for len(batches) > 0 {
		take(<-batches)
	}
	if !slices.Equal(got, want) {
		t.Errorf("the correlator is handed events at (ms from the first)\n got  %v\n want %v", got, want)
	}
	if late := reader.Late(); late != 0 {
		t.Errorf("%d events counted late", late)
	}
}
