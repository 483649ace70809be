package correlate

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/icapwatch/icapwatch/agent/observe"
)

// TestSeedTimeline replays DESIGN.md's seed with its own timestamps: a
// pool of four connections to an SPE that advertises Max-Connections 2;
// a request ACKed in 41 ms and answered 293.3 s later, 8 ms after the
// server idle-closed a sibling; another sibling idle-closed 3.5 s after.
func TestSeedTimeline(t *testing.T) {
	h := newHarness(t, nil)
	spe := srvA
	conns := []observe.Flow{flowA, flowB, flowC, {Client: netip.MustParseAddrPort("192.0.2.10:40004"), Server: spe}}
	clock := func(hms string) float64 {
		ts, err := time.Parse("15:04:05.000", hms)
		if err != nil {
			t.Fatal(err)
		}
		return ts.Sub(time.Date(0, 1, 1, 7, 20, 46, 426e6, time.UTC)).Seconds()
	}
	// The application's pool, opened earlier; each connection served once.
	for i, f := range conns {
		s := clock("07:15:00.000") + float64(i)
		h.obs(observe.State, f, s, fromClient, state(observe.TCPSynSent, observe.TCPEstablished), owner(4121, "scanapp"))
		h.obs(observe.ExchangeStart, f, s+0.1).obs(observe.Answer, f, s+0.15)
	}
	// The canary learns the server's limit.
	h.c.Observe(observe.Observation{Kind: observe.ServerOptions, Source: observe.SourceCanary,
		Time: at(clock("07:16:00.000")), Flow: observe.Flow{Server: spe}, MaxConnections: 2})

	// The capture.
	h.obs(observe.ExchangeStart, flowA, clock("07:20:46.426"), func(o *observe.Observation) { o.Bytes = 147 })
	h.obs(observe.Acked, flowA, clock("07:20:46.467"))
	for s := 1.0; s <= 12; s++ {
		h.sweep(s)
	}
	h.obs(observe.TLSAlert, flowB, clock("07:25:39.742"), fromServer)
	h.obs(observe.FIN, flowB, clock("07:25:39.742"), fromServer)
	h.obs(observe.Answer, flowA, clock("07:25:39.750"))
	h.obs(observe.TLSAlert, flowC, clock("07:25:43.219"), fromServer)
	h.obs(observe.FIN, flowC, clock("07:25:43.219"), fromServer)
	h.sweep(clock("07:25:45.000"))

	h.wantKinds("pool_above_server_limit stall:acked_silent tls_alert:server " +
		"stall_end:acked_silent:answered release tls_alert:server close:server close:server")

	var lines []string
	for _, e := range h.events {
		lines = append(lines, e.Summary())
	}
	text := strings.Join(lines, "\n")
	for _, want := range []string{
		"4 connections open to 192.0.2.1:11344, it advertises Max-Connections 2",
		"request from scanapp (pid 4121) 192.0.2.10:40001 to 192.0.2.1:11344 ACKed by the server 41 ms after it was sent, no answer for 10 s (acked_silent)",
		"answered after 293.3 s, 8 ms after the server idle-closed a sibling connection (192.0.2.10:40002): server workers held by idle persistent connections",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("diagnosis lacks %q; it says:\n%s", want, text)
		}
	}
	if got := h.field(KindRelease, "stalled_seconds"); got != 293.324 {
		t.Errorf("stalled_seconds %v, want 293.324", got)
	}
	if got := h.field(KindStall, "acked_after_seconds"); got != 0.041 {
		t.Errorf("acked_after_seconds %v, want 0.041", got)
	}
	if got := h.field(KindStall, "idle_age_seconds"); got.(float64) < 300 {
		t.Errorf("idle_age_seconds %v: the connection had been idle since 07:15", got)
	}
	h.wantMetric("stall_releases", 1, spe.String(), ReleaseCause)
	h.wantMetric("stalls", 1, spe.String(), "scanapp", StateAckedSilent)
	h.wantMetric("connection_closes", 2, spe.String(), "scanapp", "server", "fin")
}
