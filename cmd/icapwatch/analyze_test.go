package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/icapwatch/icapwatch/agent/analyze"
	"github.com/icapwatch/icapwatch/agent/wire"
)

// The report says how many connections went to stay within the limit.
func TestAnalyzeReportsEvictions(t *testing.T) {
	var out bytes.Buffer
	report(&out, "many.pcap", analyze.Analysis{Format: "pcap", Wire: wire.Stats{Packets: 9, Evictions: 7, Flows: 2}, MaxFlows: 2}, 0)
	if want := "7 connections evicted, the least recently seen first, to stay within 2 followed at once"; !strings.Contains(out.String(), want) {
		t.Errorf("report lacks %q:\n%s", want, out.String())
	}
	out.Reset()
	report(&out, "few.pcap", analyze.Analysis{Format: "pcap", Wire: wire.Stats{Packets: 9, Flows: 2}, MaxFlows: 2}, 0)
	if strings.Contains(out.String(), "evicted") {
		t.Errorf("evictions reported where there were none:\n%s", out.String())
	}
}
