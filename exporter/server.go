package exporter

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"github.com/coreos/go-systemd/v22/activation"
	"github.com/icapwatch/icapwatch/internal/version"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/exporter-toolkit/web"
)

// Hook is one kernel hook on the landing page.
type Hook struct {
	Name     string
	Attached bool
	Mode     string
	Error    string
}

// Exchange is one open exchange on the landing page.
type Exchange struct {
	Server     string
	Client     string // process name, with its PID when known
	ClientAddr string
	Phase      string
	State      string // open, or the stall state
	Age        time.Duration
}

// Status is the agent's state for the landing page and /readyz.
type Status struct {
	Ready   bool
	Source  string // bpf or sockdiag
	Hooks   []Hook
	Open    int        // open exchanges
	Stalled int        // of which stalled
	Oldest  []Exchange // the oldest open exchanges, oldest first, a bounded few
	Recent  []string   // the last events, one line each, newest last
	Targets []string   // canary targets
}

// Backend is what the agent shows through HTTP.
type Backend interface {
	Status() Status
	// Exchanges and Events return JSON-ready values for the API.
	Exchanges() any
	Events() any
}

// Handler serves /metrics, /healthz, /readyz, the API and the landing page.
func Handler(reg prometheus.Gatherer, b Backend, log *slog.Logger) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelError), ErrorHandling: promhttp.ContinueOnError}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !b.Status().Ready {
			http.Error(w, "not ready: hooks not attached yet", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	mux.HandleFunc("GET /api/v1/exchanges", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, map[string]any{"exchanges": b.Exchanges()})
	})
	mux.HandleFunc("GET /api/v1/events", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, map[string]any{"events": b.Events()})
	})
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		landing.Execute(w, struct {
			Status
			Version string
		}{b.Status(), version.String()})
	})
	return mux
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

var landing = template.Must(template.New("landing").Parse(`<!doctype html>
<html><head><meta charset="utf-8"><title>icapwatch</title>
<style>body{font-family:sans-serif;margin:2em;max-width:70em}td,th{padding:.2em .8em;text-align:left}
.bad{color:#b00}.ok{color:#070}pre{background:#f4f4f4;padding:1em;overflow-x:auto}</style></head>
<body><h1>icapwatch</h1><p>{{.Version}}</p>
<p>Source: <b>{{.Source}}</b>. Ready: {{if .Ready}}<span class="ok">yes</span>{{else}}<span class="bad">no</span>{{end}}.
Open exchanges: {{.Open}}, stalled: {{if .Stalled}}<span class="bad">{{.Stalled}}</span>{{else}}0{{end}}.</p>
{{if .Oldest}}<h2>Open exchanges{{if gt .Open (len .Oldest)}} (the {{len .Oldest}} oldest){{end}}</h2>
<table><tr><th>age</th><th>state</th><th>phase</th><th>client</th><th>client address</th><th>server</th></tr>
{{range .Oldest}}<tr><td>{{.Age}}</td><td>{{if eq .State "open"}}open{{else}}<span class="bad">{{.State}}</span>{{end}}</td><td>{{.Phase}}</td><td>{{.Client}}</td><td>{{.ClientAddr}}</td><td>{{.Server}}</td></tr>
{{end}}</table>{{end}}
{{if .Hooks}}<h2>Kernel hooks</h2><table><tr><th>hook</th><th>attached</th><th>mode</th><th>error</th></tr>
{{range .Hooks}}<tr><td>{{.Name}}</td><td>{{if .Attached}}<span class="ok">yes</span>{{else}}<span class="bad">no</span>{{end}}</td><td>{{.Mode}}</td><td>{{.Error}}</td></tr>
{{end}}</table>{{end}}
{{if .Targets}}<h2>Canary targets</h2><ul>{{range .Targets}}<li>{{.}}</li>{{end}}</ul>{{end}}
<h2>Last events</h2>{{if .Recent}}<pre>{{range .Recent}}{{.}}
{{end}}</pre>{{else}}<p>None yet.</p>{{end}}
<p><a href="/metrics">/metrics</a> · <a href="/api/v1/exchanges">/api/v1/exchanges</a> ·
<a href="/api/v1/events">/api/v1/events</a> · <a href="/healthz">/healthz</a> · <a href="/readyz">/readyz</a></p>
</body></html>
`))

// WebConfig holds exporter-toolkit's flags.
type WebConfig struct {
	ListenAddresses []string // --web.listen-address, repeatable
	// SystemdSocket: listen on the sockets systemd passes (socket
	// activation) instead of ListenAddresses (--web.systemd-socket).
	SystemdSocket bool
	ConfigFile    string // --web.config.file: TLS and basic auth
}

// Validate checks the flags before anything starts, naming the one that is
// wrong: a listen address that cannot be one, a web configuration file
// that is missing or invalid.
func (c WebConfig) Validate() error {
	if !c.SystemdSocket && len(c.ListenAddresses) == 0 {
		return errors.New("--web.listen-address: at least one address is needed, such as :9344")
	}
	for _, addr := range c.ListenAddresses {
		if c.SystemdSocket {
			break
		}
		host, port, err := net.SplitHostPort(addr)
		if err != nil {
			return fmt.Errorf("--web.listen-address %q: want host:port, such as :9344 or 127.0.0.1:9344", addr)
		}
		// A numeric port or a service name (/etc/services); LookupPort
		// refuses numbers beyond 65535 without asking any resolver.
		if _, err := net.LookupPort("tcp", port); err != nil {
			return fmt.Errorf("--web.listen-address %q: port %q is not a TCP port", addr, port)
		}
		if looksNumeric(host) {
			if _, err := netip.ParseAddr(host); err != nil {
				return fmt.Errorf("--web.listen-address %q: %q is not an IP address", addr, host)
			}
		}
	}
	if c.ConfigFile != "" {
		if err := web.Validate(c.ConfigFile); err != nil {
			return fmt.Errorf("--web.config.file %s: %w", c.ConfigFile, err)
		}
	}
	return nil
}

// looksNumeric: an address literal rather than a host name (names have a
// letter somewhere; IPv6 literals have a colon).
func looksNumeric(host string) bool {
	if host == "" {
		return false
	}
	return strings.Contains(host, ":") || strings.Trim(host, "0123456789.") == ""
}

// Serve listens and serves h until ctx ends, then shuts down within 5 s.
// It returns the first bound address once listening, and a channel with
// the server's final error (the first listener's to fail).
func Serve(ctx context.Context, cfg WebConfig, h http.Handler, log *slog.Logger) (net.Addr, <-chan error, error) {
	if cfg.ConfigFile != "" {
		if err := web.Validate(cfg.ConfigFile); err != nil {
			return nil, nil, fmt.Errorf("--web.config.file %s: %w", cfg.ConfigFile, err)
		}
	}
	lns, err := listen(cfg)
	if err != nil {
		return nil, nil, err
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	addrs, systemd, file := cfg.ListenAddresses, cfg.SystemdSocket, cfg.ConfigFile
	flags := &web.FlagConfig{WebListenAddresses: &addrs, WebSystemdSocket: &systemd, WebConfigFile: &file}
	done := make(chan error, len(lns))
	for _, ln := range lns {
		go func() {
			err := web.Serve(ln, srv, flags, log)
			if errors.Is(err, http.ErrServerClosed) {
				err = nil
			}
			done <- err
		}()
	}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	}()
	return lns[0].Addr(), done, nil
}

// listen opens the listeners: systemd's, or one per address.
func listen(cfg WebConfig) ([]net.Listener, error) {
	if cfg.SystemdSocket {
		lns, err := activation.Listeners()
		if err != nil {
			return nil, fmt.Errorf("--web.systemd-socket: %w", err)
		}
		if len(lns) == 0 {
			return nil, errors.New("--web.systemd-socket: systemd passed no socket (is the agent started by its .socket unit?)")
		}
		return lns, nil
	}
	var lns []net.Listener
	for _, addr := range cfg.ListenAddresses {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			for _, l := range lns {
				l.Close()
			}
			return nil, fmt.Errorf("--web.listen-address %s: %w", addr, err)
		}
		lns = append(lns, ln)
	}
	return lns, nil
}
