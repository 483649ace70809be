// Command image builds icapwatch's container image without a container
// engine, with go-containerregistry: the static binary in one layer over
// an empty base, configured as the Dockerfile's image. make image runs it
// where neither docker nor podman runs. It writes a docker-archive
// tarball (docker load, podman load, crane push) and an OCI image layout
// (skopeo copy oci:DIR:TAG).
package main

import (
	"flag"
	"fmt"
	"log"

	"github.com/icapwatch/icapwatch/packaging"
)

func main() {
	bin := flag.String("bin", "bin/icapwatch", "the static icapwatch binary (make build)")
	version := flag.String("version", "dev", "the Makefile's VERSION: the version label")
	revision := flag.String("revision", "", "the commit: the revision label")
	ref := flag.String("name", "ghcr.io/icapwatch/icapwatch:dev", "the image's name and tag in the tarball and the layout")
	tarPath := flag.String("tar", "dist/icapwatch-image.tar", "docker-archive tarball to write; empty for none")
	ociDir := flag.String("oci", "dist/icapwatch-oci", "OCI image layout directory to write; empty for none")
	flag.Parse()
	log.SetFlags(0)
	img, err := packaging.Image(packaging.ImageOptions{Binary: *bin, Version: *version, Revision: *revision})
	if err != nil {
		log.Fatalf("image: %v", err)
	}
	if err := packaging.WriteImage(img, *ref, *tarPath, *ociDir); err != nil {
		log.Fatalf("image: %v", err)
	}
	digest, err := img.Digest()
	if err != nil {
		log.Fatalf("image: %v", err)
	}
	if *tarPath != "" {
		fmt.Printf("%s: %s (docker load, podman load, crane push)\n", *tarPath, *ref)
	}
	// A registry keeps the layout's manifest as it is; the tarball's is
	// rebuilt by whoever loads it, so only the layout's digest is known.
	if *ociDir != "" {
		fmt.Printf("%s: %s@%s (skopeo copy, crane push)\n", *ociDir, *ref, digest)
	}
}
