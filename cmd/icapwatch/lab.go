package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/alecthomas/kingpin/v2"
	"github.com/hashicorp/go-hclog"

	"github.com/icapwatch/icapwatch/icap"
)

// labCmd is `icapwatch lab`: an SPE-like ICAP server with fault knobs.
type labCmd struct {
	cmd        *kingpin.CmdClause
	cfg        icap.LabConfig
	certFile   string
	keyFile    string
	certOut    string
	tlsMax     string
	shutdownIn time.Duration
}

func registerLab(app *kingpin.Application) *labCmd {
	l := &labCmd{cmd: app.Command("lab", "Run an SPE-like ICAP server (TLS and plain) with fault knobs, for reproductions and tests.")}
	d := icap.LabDefaults()
	c := l.cmd
	flag(c, "lab", "listen", "TLS (secure ICAP) listen address; empty disables.").Default(d.Listen).StringVar(&l.cfg.Listen)
	flag(c, "lab", "plain-listen", "Plain ICAP listen address; empty disables.").Default(d.PlainListen).StringVar(&l.cfg.PlainListen)
	flag(c, "lab", "cert", "TLS certificate (PEM); default a self-signed one made in memory.").PlaceHolder("FILE").StringVar(&l.certFile)
	flag(c, "lab", "key", "TLS private key (PEM) for --cert.").PlaceHolder("FILE").StringVar(&l.keyFile)
	flag(c, "lab", "cert-out", "Write the self-signed certificate here, for clients' --ca.").PlaceHolder("FILE").StringVar(&l.certOut)
	flag(c, "lab", "tls-max-version", "Highest TLS version to offer: 1.2 or 1.3.").Default("1.3").EnumVar(&l.tlsMax, "1.2", "1.3")
	intVar(flag(c, "lab", "workers", "Connections served at once; each open connection holds one, idle or not (like c-icap).").Default(fmt.Sprint(d.Workers)), &l.cfg.Workers)
	flag(c, "lab", "idle-timeout", "Close connections idle this long (close_notify, then FIN).").Default(d.IdleTimeout.String()).DurationVar(&l.cfg.IdleTimeout)
	intVar(flag(c, "lab", "max-connections", "Max-Connections advertised in OPTIONS; 0 means --workers.").Default("0"), &l.cfg.MaxConnections)
	flag(c, "lab", "service", "ICAP service name.").Default(d.Service).StringVar(&l.cfg.Service)
	intVar(flag(c, "lab", "stall-every", "Hold every Nth request's answer for --stall-for; 0 disables.").Default("0"), &l.cfg.StallEvery)
	flag(c, "lab", "stall-for", "How long a stalled answer is held.").Default(d.StallFor.String()).DurationVar(&l.cfg.StallFor)
	flag(c, "lab", "fault", "Fault to inject mid-request: reset (RST), drop (never answer), alert (TLS close_notify and FIN).").EnumVar(&l.cfg.Fault, icap.FaultReset, icap.FaultDrop, icap.FaultAlert)
	intVar(flag(c, "lab", "fault-every", "Inject --fault into every Nth request.").Default(fmt.Sprint(d.FaultEvery)), &l.cfg.FaultEvery)
	flag(c, "lab", "shutdown-timeout", "On SIGTERM, how long requests in progress may take to finish.").Default("10s").DurationVar(&l.shutdownIn)
	l.cfg.RequestTimeout = d.RequestTimeout
	return l
}

func (l *labCmd) run(ctx context.Context, log hclog.Logger, stdout io.Writer) error {
	if err := l.cfg.Validate(); err != nil {
		return usageError{err.Error()}
	}
	if (l.certFile == "") != (l.keyFile == "") {
		return usagef("--cert and --key go together")
	}
	if l.certOut != "" && l.certFile != "" {
		return usagef("--cert-out writes the self-signed certificate; it does not go with --cert")
	}
	l.cfg.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12, MaxVersion: tls.VersionTLS13}
	if l.tlsMax == "1.2" {
		l.cfg.TLSConfig.MaxVersion = tls.VersionTLS12
	}
	var cert tls.Certificate
	var err error
	if l.certFile != "" {
		if cert, err = tls.LoadX509KeyPair(l.certFile, l.keyFile); err != nil {
			return usagef("--cert/--key: %v", err)
		}
	} else {
		var certPEM []byte
		if cert, certPEM, err = icap.SelfSignedCert(); err != nil {
			return err
		}
		if l.certOut != "" {
			if err := os.WriteFile(l.certOut, certPEM, 0o644); err != nil {
				return fmt.Errorf("--cert-out: %w", err)
			}
		}
	}
	l.cfg.Certificate = &cert
	l.cfg.Logger = log

	lab, err := icap.StartLab(l.cfg)
	if err != nil {
		return err
	}
	if a := lab.TLSAddr(); a != nil {
		fmt.Fprintf(stdout, "lab: secure ICAP on icaps://%s/%s\n", a, l.cfg.Service)
	}
	if a := lab.PlainAddr(); a != nil {
		fmt.Fprintf(stdout, "lab: plain ICAP on icap://%s/%s\n", a, l.cfg.Service)
	}
	<-ctx.Done()
	log.Info("shutting down", "grace", l.shutdownIn)
	sctx, cancel := context.WithTimeout(context.Background(), l.shutdownIn)
	defer cancel()
	if err := lab.Shutdown(sctx); err != nil {
		log.Warn("requests still open at the end of the grace period were cut", "error", err)
	}
	st := lab.Stats()
	log.Info("stopped", "accepted", st.Accepted, "served", st.Served, "stalled", st.Stalled, "faults", st.Faults, "idle_closed", st.IdleClosed)
	return nil
}
