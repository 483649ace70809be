package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/icapwatch/icapwatch/agent/analyze"
	"github.com/icapwatch/icapwatch/agent/wire"
)

// A damaged pcapng capture is reported up to the damage, with a warning
// that says where, and exits 0 as a damaged pcap does.
func TestAnalyzeDamagedPcapng(t *testing.T) {
	good, err := os.ReadFile(filepath.Join("..", "..", "agent", "analyze", "testdata", "captures", "ipv6.pcapng"))
	if err != nil {
		t.Fatal(err)
	}
	// The 15th block, the 13th packet's: a section, an interface, 12 packets before it.
	at := 0
	for range 14 {
		at += int(binary.LittleEndian.Uint32(good[at+4:]))
	}
	short := slices.Clone(good)
	binary.LittleEndian.PutUint32(short[at+4:], 3)
	dir := t.TempDir()
	for _, tc := range []struct {
		name string
		file []byte
		want string
	}{
		{"total length 3", short, "block type 6 of total length 3"},
		{"cut within a block", good[:at+50], "the file ends within the block"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "-")+".pcapng")
			if err := os.WriteFile(path, tc.file, 0o600); err != nil {
				t.Fatal(err)
			}
			var out, errb bytes.Buffer
			code := run(context.Background(), []string{"analyze", "--ports", "21344", path}, &out, &errb)
			want := fmt.Sprintf("is damaged (after 12 frames: pcapng block at byte %d: %s); the report covers the 12 frames before it", at, tc.want)
			if code != 0 || !strings.Contains(errb.String(), want) || !strings.Contains(out.String(), "server [::1]:21344") {
				t.Errorf("exit %d, want 0 and a warning with %q\n%s%s", code, want, errb.String(), out.String())
			}
		})
	}
}

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
