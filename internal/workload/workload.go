// Package workload is an application-like ICAP client for the demo and the
// end-to-end tests: a pool a little larger than the server's workers,
// sending OPTIONS and RESPMOD (some infected with EICAR) in bursts at
// random intervals. With a c-icap-like server, the burst that needs one
// connection more than the server has workers hangs behind the idle
// ones, as in DESIGN.md's seed, until the server idle-closes one of them.
package workload

import (
	"context"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/icapwatch/icapwatch/icap"
)

// Config shapes the workload.
type Config struct {
	Target   string
	Insecure bool
	Conns    int           // the pool; one more than the server's workers reproduces the seed
	MinPause time.Duration // between bursts
	MaxPause time.Duration
	Timeout  time.Duration // per request
	Seed     uint64
	Logger   hclog.Logger
	Dialer   interface {
		DialContext(ctx context.Context, network, addr string) (net.Conn, error)
	}
}

// Stats counts what the workload did.
type Stats struct {
	Requests, Failed, Infected int
}

// Run sends bursts until ctx ends.
func Run(ctx context.Context, cfg Config) (Stats, error) {
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	client, err := icap.NewClient(icap.Config{Target: cfg.Target, Insecure: cfg.Insecure, MaxConns: cfg.Conns,
		MaxIdle: time.Hour, Timeout: cfg.Timeout, WaitTimeout: cfg.Timeout, Dialer: cfg.Dialer})
	if err != nil {
		return Stats{}, err
	}
	defer client.Close()
	target, _ := icap.ParseTarget(cfg.Target)
	rng := rand.New(rand.NewPCG(cfg.Seed, 0x1ca9))
	var mu sync.Mutex
	var st Stats
	send := func(req *icap.Request) {
		resp, _, err := client.Do(ctx, req)
		mu.Lock()
		defer mu.Unlock()
		st.Requests++
		switch {
		case err != nil:
			if ctx.Err() == nil {
				st.Failed++
				cfg.Logger.Warn("request failed", "method", req.Method, "error", err)
			}
		case resp.Header.Get("X-Infection-Found") != "":
			st.Infected++
		}
	}
	burst := func(n int) {
		var wg sync.WaitGroup
		for i := 0; i < n; i++ {
			req := options(target)
			if rng.IntN(3) > 0 {
				req = respmod(target, rng.IntN(4) == 0)
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				send(req)
			}()
		}
		wg.Wait()
	}
	// Fill the server's workers with idle pooled connections, then keep
	// needing one more.
	burst(cfg.Conns - 1)
	for {
		pause := cfg.MinPause
		if cfg.MaxPause > cfg.MinPause {
			pause += time.Duration(rng.Int64N(int64(cfg.MaxPause - cfg.MinPause)))
		}
		select {
		case <-ctx.Done():
			mu.Lock()
			defer mu.Unlock()
			return st, nil
		case <-time.After(pause):
		}
		burst(cfg.Conns)
	}
}

func options(t icap.Target) *icap.Request {
	req := icap.NewRequest("OPTIONS", t.RequestURI())
	req.Header.Set("Host", t.Host)
	return req
}

func respmod(t icap.Target, infected bool) *icap.Request {
	req := icap.NewRequest("RESPMOD", t.RequestURI())
	req.Header.Set("Host", t.Host)
	req.Header.Set("Allow", "204")
	req.ReqHdr = []byte("GET /downloads/report.pdf HTTP/1.1\r\nHost: app.example\r\n\r\n")
	req.ResHdr = []byte("HTTP/1.1 200 OK\r\nContent-Type: application/pdf\r\n\r\n")
	body := strings.Repeat("%PDF-1.7 sample content ", 200)
	if infected {
		body += icap.EICAR
	}
	req.Body = []byte(body)
	return req
}
