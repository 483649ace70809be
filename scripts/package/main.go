// Command package builds icapwatch's rpm and deb from the static binary,
// with nfpm: make package. The binary is run for its man page and bash
// completion, so it must be built for this machine's architecture.
package main

import (
	"flag"
	"fmt"
	"log"

	"github.com/icapwatch/icapwatch/packaging"
)

func main() {
	bin := flag.String("bin", "bin/icapwatch", "the static icapwatch binary (make build)")
	version := flag.String("version", "", "the Makefile's VERSION (git describe --tags --always --dirty)")
	out := flag.String("out", "dist", "directory for the packages")
	root := flag.String("root", ".", "the repository: deploy/systemd, LICENSE, LICENSES/")
	maintainer := flag.String("maintainer", "", "the packages' maintainer (default: The icapwatch developers)")
	flag.Parse()
	log.SetFlags(0)
	paths, err := packaging.Packages(packaging.Options{
		Binary: *bin, Version: *version, Root: *root, Out: *out, Maintainer: *maintainer,
	})
	if err != nil {
		log.Fatalf("package: %v", err)
	}
	for _, p := range paths {
		fmt.Println(p)
	}
}
