package correlate

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/icapwatch/icapwatch/agent/observe"
)

var updateGolden = flag.Bool("update", false, "rewrite the golden files in testdata")

// TestEventGolden holds every event kind's JSON, log keys and summary to
// what dashboards, scripts and people already read: a scenario that says
// each kind (and the null and optional fields) is compared byte for byte
// with testdata/events.golden.
func TestEventGolden(t *testing.T) {
	h := newHarness(t, nil)
	h.c.Observe(observe.Observation{Kind: observe.ServerOptions, Source: observe.SourceCanary,
		Time: at(0), Flow: observe.Flow{Server: srvA}, MaxConnections: 1})
	for i, f := range []observe.Flow{flowA, flowB} {
		h.obs(observe.State, f, float64(i), fromClient, state(observe.TCPSynSent, observe.TCPEstablished), owner(4121, "scanapp"))
	}
	// A stall, ACKed, released by B's server close; then A's reuse after
	// its own server close and a client reset with an exchange open.
	h.obs(observe.ExchangeStart, flowB, 2).obs(observe.Answer, flowB, 2.01)
	h.obs(observe.ExchangeStart, flowA, 3).obs(observe.Acked, flowA, 3.04).sweep(13)
	h.obs(observe.TLSAlert, flowB, 40, fromServer, flags(observe.Probable)).obs(observe.FIN, flowB, 40.0001, fromServer)
	h.obs(observe.Answer, flowA, 40.008).sweep(42)
	h.obs(observe.FIN, flowA, 50, fromServer).obs(observe.ExchangeStart, flowA, 50.2).
		obs(observe.TLSAlert, flowA, 50.3, fromClient).obs(observe.RST, flowA, 50.4, fromClient)
	// C: unacked, no owner, retransmitted, crossed by the server's close.
	h.obs(observe.ExchangeStart, flowC, 60).obs(observe.Retransmit, flowC, 60.3, fromClient).sweep(70.5).
		obs(observe.FIN, flowC, 71, fromServer).sweep(80)
	// Unread.
	h.obs(observe.ExchangeStart, flowA2, 100).obs(observe.Answer, flowA2, 100.2).
		obs(observe.SocketInfo, flowA2, 101, rqueue(500)).sweep(110.3).obs(observe.AppRead, flowA2, 112)
	// D: idle in the pool, reset by the server; the application's write
	// on it fails with nothing on the wire.
	h.obs(observe.ExchangeStart, flowD, 120).obs(observe.Answer, flowD, 120.01).
		obs(observe.RST, flowD, 130, fromServer).sweep(140)
	writeFailed(h, flowD, 150)

	var b strings.Builder
	kinds := map[Kind]bool{}
	for _, e := range h.events {
		kinds[e.Kind()] = true
		j, err := json.Marshal(e)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&b, "%s\nlog: %v\nsummary: %s\n\n", j, e.LogArgs(), e.Summary())
	}
	for _, k := range []Kind{KindStall, KindStallEnd, KindRelease, KindRace, KindTLSAlert, KindClose, KindPoolAboveLimit} {
		if !kinds[k] {
			t.Errorf("the scenario says no %s event", k)
		}
	}
	golden := filepath.Join("testdata", "events.golden")
	if *updateGolden {
		if err := os.WriteFile(golden, []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if got := b.String(); got != string(want) {
		t.Errorf("events differ from %s:\n%s", golden, lineDiff(string(want), got))
	}
}

// lineDiff names the first lines that differ.
func lineDiff(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	var out []string
	for i := 0; i < max(len(w), len(g)) && len(out) < 10; i++ {
		var wl, gl string
		if i < len(w) {
			wl = w[i]
		}
		if i < len(g) {
			gl = g[i]
		}
		if wl != gl {
			out = append(out, fmt.Sprintf("line %d\n want %s\n got  %s", i+1, wl, gl))
		}
	}
	return strings.Join(out, "\n")
}
