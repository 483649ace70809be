package agent

import (
	"bytes"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/icapwatch/icapwatch/agent/correlate"
	"github.com/icapwatch/icapwatch/agent/observe"
)

// /api/v1/exchanges lists the open exchanges oldest first, and the landing
// page the oldest few.
func TestDaemonListsOpenExchangesOldestFirst(t *testing.T) {
	cfg := DefaultDaemonConfig()
	cfg.Web.ListenAddresses = []string{"127.0.0.1:0"}
	d, err := NewDaemon(cfg)
	if err != nil {
		t.Fatal(err)
	}
	server := netip.MustParseAddrPort("192.0.2.1:11344")
	now := time.Now()
	// Ages 1 s to 30 s, fed in an order that is neither.
	const n = landingExchanges + 10
	for i := range n {
		age := time.Duration((i*7)%n+1) * time.Second
		d.corr.Observe(observe.Observation{Kind: observe.ExchangeStart, Source: observe.SourceKernel,
			Time: now.Add(-age), Dir: observe.ToServer, Phase: observe.PhaseRequest, Len: 100, Bytes: 100,
			Flow: observe.Flow{Client: netip.MustParseAddrPort(fmt.Sprintf("192.0.2.9:%d", 40000+i)), Server: server}})
	}
	ex := d.Exchanges().([]correlate.OpenExchange)
	if len(ex) != n {
		t.Fatalf("%d open exchanges, want %d", len(ex), n)
	}
	for i := 1; i < len(ex); i++ {
		if ex[i].AgeSeconds > ex[i-1].AgeSeconds {
			t.Fatalf("exchange %d (%.1f s) is older than exchange %d before it (%.1f s)", i, ex[i].AgeSeconds,
				i-1, ex[i-1].AgeSeconds)
		}
	}
	if ex[0].AgeSeconds < n-1 {
		t.Errorf("the first exchange is %.1f s old, want the oldest, %d s", ex[0].AgeSeconds, n)
	}
	st := d.Status()
	if st.Open != n || len(st.Oldest) != landingExchanges || st.Oldest[0].ClientAddr != ex[0].ClientAddr ||
		st.Oldest[landingExchanges-1].ClientAddr != ex[landingExchanges-1].ClientAddr {
		t.Errorf("status: %d open, %d listed, first %+v", st.Open, len(st.Oldest), st.Oldest[0])
	}
}

// The kernel's flow table is sized by --max-flows, within what the kernel
// side accepts.
func TestKernelFlowsFollowMaxFlows(t *testing.T) {
	for _, tc := range []struct {
		maxFlows int
		want     uint32
	}{{1, 16}, {16, 16}, {100000, 100000}, {1 << 30, 1 << 24}} {
		if got := kernelFlows(tc.maxFlows); got != tc.want {
			t.Errorf("kernelFlows(%d) = %d, want %d", tc.maxFlows, got, tc.want)
		}
	}
}

// Ordinary closes are logged at debug: a busy host closes thousands of
// connections an hour. A close with a request open stays at info.
func TestOrdinaryClosesLogAtDebug(t *testing.T) {
	var logs bytes.Buffer
	cfg := DefaultDaemonConfig()
	cfg.Web.ListenAddresses = []string{"127.0.0.1:0"}
	cfg.Logger = hclog.New(&hclog.LoggerOptions{Output: &logs, Level: hclog.Info})
	d, err := NewDaemon(cfg)
	if err != nil {
		t.Fatal(err)
	}
	client := netip.MustParseAddrPort("192.0.2.9:40000")
	for _, open := range []bool{false, true} {
		d.onEvent(correlate.Event{Time: time.Now(), Server: "192.0.2.1:11344", ClientAddr: client, Client: "scanapp",
			Detail: &correlate.Close{Initiator: "server", How: "fin", OpenExchange: open}})
	}
	if n := strings.Count(logs.String(), "\n"); n != 1 || !strings.Contains(logs.String(), "open_exchange=true") {
		t.Errorf("want only the close with an open exchange at info:\n%s", logs.String())
	}
	if got := len(d.recent()); got != 2 {
		t.Errorf("the API keeps %d events, want both", got)
	}
}
