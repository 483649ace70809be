package agent

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/icapwatch/icapwatch/agent/observe"
	"github.com/icapwatch/icapwatch/icap"
)

// The canary's client, against the lab server, reports its connection,
// its own gap and the server's idle close.
func TestCanaryObserver(t *testing.T) {
	cfg := icap.LabDefaults()
	cfg.Listen, cfg.PlainListen = "127.0.0.1:0", ""
	cfg.IdleTimeout = 300 * time.Millisecond
	lab, err := icap.StartLab(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer lab.Shutdown(context.Background())

	var mu sync.Mutex
	var got []observe.Observation
	client, err := icap.NewClient(icap.Config{Target: "icaps://" + lab.TLSAddr().String() + "/" + cfg.Service,
		Insecure: true, Observer: CanaryObserver(func(o observe.Observation) {
			mu.Lock()
			got = append(got, o)
			mu.Unlock()
		})})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, opts, tr, err := client.Options(ctx)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		mu.Lock()
		n := len(got)
		mu.Unlock()
		if n >= 3 || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	kinds := map[observe.Kind]observe.Observation{}
	for _, o := range got {
		kinds[o.Kind] = o
		if o.Flow.Client != tr.Conn.Local || o.Source != observe.SourceCanary {
			t.Errorf("%s: flow %+v, want client %s", o.Kind, o.Flow, tr.Conn.Local)
		}
	}
	if _, ok := kinds[observe.CanaryConn]; !ok {
		t.Error("no canary_conn")
	}
	if a, ok := kinds[observe.CanaryAnswer]; !ok || a.Gap != tr.FirstByteAt.Sub(tr.WriteStart) {
		t.Errorf("canary_answer %+v, trace gap %v", a, tr.FirstByteAt.Sub(tr.WriteStart))
	}
	if i, ok := kinds[observe.ServerIdle]; !ok || i.IdleTimeout < 250*time.Millisecond || i.IdleTimeout > 2*time.Second {
		t.Errorf("server_idle %+v, want about 300ms", i)
	}
	if o := CanaryOptions(tr.Conn.Remote, opts, time.Now()); o.MaxConnections != cfg.Workers {
		t.Errorf("options: Max-Connections %d, want %d", o.MaxConnections, cfg.Workers)
	}
}
