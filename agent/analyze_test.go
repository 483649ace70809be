package agent

import (
	"bytes"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/icapwatch/icapwatch/agent/wire"
)

// The captures in testdata/captures are recorded by `make fixtures`
// (scripts/fixtures) from the lab server on port 21344.
func analyzeFile(t *testing.T, name string, mod func(*AnalyzeConfig)) Analysis {
	t.Helper()
	f, err := os.Open(filepath.Join("testdata", "captures", name))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cfg := AnalyzeConfig{Ports: []uint16{21344}, Correlator: DefaultConfig()}
	cfg.Correlator.StallThreshold = time.Second
	if mod != nil {
		mod(&cfg)
	}
	a, err := Analyze(f, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if a.Err != nil {
		t.Fatalf("%s: %v", name, a.Err)
	}
	return a
}

func eventKinds(evs []Event) map[string]int {
	m := map[string]int{}
	for _, e := range evs {
		k := e.Kind
		if v, ok := e.Fields["race_kind"]; ok {
			k += ":" + v.(string)
		}
		if v, ok := e.Fields["state"]; ok && e.Kind == KindStall {
			k += ":" + v.(string)
		}
		m[k]++
	}
	return m
}

func TestAnalyzeSeed(t *testing.T) {
	for _, name := range []string{"seed-tls13.pcap", "seed-any-sll2.pcap"} {
		t.Run(name, func(t *testing.T) {
			a := analyzeFile(t, name, nil)
			k := eventKinds(a.Events)
			if k["stall:acked_silent"] != 1 || k[KindRelease] != 1 || k[KindStallEnd] != 1 {
				t.Errorf("want one acked_silent stall, its end and its release; got %v", k)
			}
			// 5 OPTIONS and the handshakes of 3 connections.
			var req, hs int
			for k, g := range a.Gaps {
				switch k.Phase {
				case "request":
					req += len(g)
				case "handshake":
					hs += len(g)
				}
			}
			if req != 5 || hs < 3 {
				t.Errorf("gaps: %d requests, %d handshakes; want 5 and at least 3", req, hs)
			}
			for _, e := range a.Events {
				if e.Kind == KindStall && e.Fields["phase"] != "handshake" {
					t.Errorf("the seed's stall is in the handshake: %+v", e)
				}
			}
		})
	}
}

func TestAnalyzeRaceTLS12(t *testing.T) {
	a := analyzeFile(t, "race-tls12.pcap", nil)
	k := eventKinds(a.Events)
	if k["race:"+RaceReuseAfterClose] != 1 {
		t.Errorf("want a reuse_after_server_close race, got %v", k)
	}
	var v12 bool
	for _, e := range a.Events {
		if e.Kind == KindTLSAlert && e.Fields["direction"] == "server" && e.Fields["tls_version"] == "1.2" {
			v12 = true
		}
	}
	if !v12 {
		t.Errorf("want the server's TLS 1.2 alert record: %v", k)
	}
}

func TestAnalyzeIPv6Pcapng(t *testing.T) {
	a := analyzeFile(t, "ipv6.pcapng", nil)
	if n := len(a.Gaps[GapKey{"[::1]:21344", "request"}]); a.Format != "pcapng" || n < 3 {
		t.Fatalf("format %s, %d request gaps to [::1]:21344 (all: %v)", a.Format, n, a.Gaps)
	}
	// --server keeps one server.
	other := analyzeFile(t, "ipv6.pcapng", func(c *AnalyzeConfig) { c.Server = netip.MustParseAddrPort("[::1]:9") })
	if len(other.Gaps)+len(other.Events) != 0 {
		t.Errorf("server filter kept %d gaps, %d events", len(other.Gaps), len(other.Events))
	}
}

func TestAnalyzeBadInput(t *testing.T) {
	good, err := os.ReadFile(filepath.Join("testdata", "captures", "seed-tls13.pcap"))
	if err != nil {
		t.Fatal(err)
	}
	// Cut short: what came before the cut is still analyzed.
	a, err := Analyze(bytes.NewReader(good[:len(good)*2/3+7]), AnalyzeConfig{Ports: []uint16{21344}, Correlator: DefaultConfig()})
	if err != nil || a.Err == nil || a.Capture.Frames == 0 || len(a.Gaps) == 0 {
		t.Errorf("truncated: err %v, damage %v, %d frames, %d gaps", err, a.Err, a.Capture.Frames, len(a.Gaps))
	}
	if _, err := Analyze(strings.NewReader("this is not a capture at all"), AnalyzeConfig{Correlator: DefaultConfig()}); !errors.Is(err, wire.ErrFormat) {
		t.Errorf("garbage: %v", err)
	}
	// An unknown link type: the frames are counted as bad, not decoded.
	unknown := append([]byte{}, good...)
	unknown[20], unknown[21], unknown[22], unknown[23] = 0xfe, 0x00, 0x00, 0x00 // pcap header linktype, little endian
	a, err = Analyze(bytes.NewReader(unknown), AnalyzeConfig{Ports: []uint16{21344}, Correlator: DefaultConfig()})
	if err != nil || a.Capture.BadFrames == 0 || a.Wire.Packets != 0 {
		t.Errorf("unknown link type: %v, %+v", err, a.Capture)
	}
}

// FuzzAnalyze: no input crashes the reader, the parser or the correlator.
func FuzzAnalyze(f *testing.F) {
	for _, name := range []string{"seed-tls13.pcap", "ipv6.pcapng", "race-tls12.pcap"} {
		b, err := os.ReadFile(filepath.Join("testdata", "captures", name))
		if err == nil {
			f.Add(b[:min(len(b), 3000)])
		}
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		Analyze(bytes.NewReader(b), AnalyzeConfig{Ports: []uint16{21344}, Correlator: DefaultConfig()})
	})
}
