// Command synth writes a synthetic ICAP-over-TLS capture for benchmarks.
package main

import (
	"bufio"
	"flag"
	"log"
	"net/netip"
	"os"

	"github.com/icapwatch/icapwatch/internal/synth"
)

func main() {
	n := flag.Int("n", 1000000, "packets")
	conns := flag.Int("conns", 500, "pooled connections")
	out := flag.String("o", "synthetic.pcap", "output file")
	flag.Parse()
	f, err := os.Create(*out)
	if err != nil {
		log.Fatal(err)
	}
	w := bufio.NewWriterSize(f, 1<<20)
	if err := synth.Write(w, *n, *conns, netip.MustParseAddrPort("192.0.2.1:11344")); err != nil {
		log.Fatal(err)
	}
	if err := w.Flush(); err != nil {
		log.Fatal(err)
	}
	if err := f.Close(); err != nil {
		log.Fatal(err)
	}
}
