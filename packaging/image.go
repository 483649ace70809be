package packaging

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"os"
	"runtime"
	"strconv"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// The image as the Dockerfile makes it: the binary where the Dockerfile
// copies it, the agent by default, the exporter's port.
const (
	ImageBinPath = "/usr/local/bin/icapwatch"
	ImagePort    = "9344/tcp"
	// ImageUser is root by number (the image has no /etc/passwd).
	// Kubernetes gives the capabilities a container adds only to uid 0:
	// without ambient capabilities a non-root process has none of them
	// effective. The DaemonSet runs it as 0 with every other capability
	// dropped; lab, probe and analyze run as any user (--user 65532).
	ImageUser = "0"
)

// ImageOptions says what goes into the image.
type ImageOptions struct {
	Binary   string    // the static icapwatch
	Version  string    // the Makefile's VERSION, as the binary prints it
	Revision string    // the commit
	Arch     string    // GOARCH the binary is built for; default this one's
	Created  time.Time // the image's and the file's time; default SOURCE_DATE_EPOCH, else now
}

// Image is an OCI image of one layer over nothing: the static binary,
// which embeds its eBPF objects and needs no libc, shell or CA bundle
// (the canary verifies servers against --canary.ca).
func Image(o ImageOptions) (v1.Image, error) {
	if o.Arch == "" {
		o.Arch = runtime.GOARCH
	}
	if o.Created.IsZero() {
		o.Created = SourceDate()
	}
	bin, err := os.ReadFile(o.Binary)
	if err != nil {
		return nil, err
	}
	layerTar, err := binaryLayer(bin, o.Created)
	if err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	}, tarball.WithMediaType(types.OCILayer), tarball.WithCompressedCaching)
	if err != nil {
		return nil, err
	}
	base := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	img, err := mutate.Append(base, mutate.Addendum{
		Layer: layer,
		History: v1.History{
			Created:   v1.Time{Time: o.Created},
			CreatedBy: "scripts/image: " + o.Binary + " as " + ImageBinPath,
			Comment:   "icapwatch " + o.Version,
		},
	})
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", o.Arch
	cf.Created = v1.Time{Time: o.Created}
	cf.Config = v1.Config{
		Entrypoint:   []string{ImageBinPath},
		Cmd:          []string{"agent"},
		User:         ImageUser,
		ExposedPorts: map[string]struct{}{ImagePort: {}},
		Labels:       ImageLabels(o.Version, o.Revision),
	}
	return mutate.ConfigFile(img, cf)
}

// ImageLabels are the OCI annotations the Dockerfile sets as labels.
func ImageLabels(version, revision string) map[string]string {
	return map[string]string{
		"org.opencontainers.image.title":       Name,
		"org.opencontainers.image.description": Summary,
		"org.opencontainers.image.version":     version,
		"org.opencontainers.image.revision":    revision,
		"org.opencontainers.image.source":      Homepage,
		"org.opencontainers.image.licenses":    License,
	}
}

// binaryLayer is the layer's tar: the directories down to the binary,
// then the binary, owned by root, 0755, all at one time.
func binaryLayer(bin []byte, mtime time.Time) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, dir := range []string{"usr/", "usr/local/", "usr/local/bin/"} {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: dir, Mode: 0o755, ModTime: mtime,
			Format: tar.FormatPAX}); err != nil {
			return nil, err
		}
	}
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: ImageBinPath[1:], Mode: 0o755,
		Size: int64(len(bin)), ModTime: mtime, Format: tar.FormatPAX}); err != nil {
		return nil, err
	}
	if _, err := tw.Write(bin); err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// WriteImage writes the image as a docker-archive tarball (docker load,
// podman load, crane push) to tarPath and as an OCI image layout (skopeo
// copy oci:DIR:TAG) to ociDir, each under ref, where the path is not
// empty. An existing layout is replaced, not added to.
func WriteImage(img v1.Image, ref, tarPath, ociDir string) error {
	tag, err := name.NewTag(ref)
	if err != nil {
		return fmt.Errorf("image name %q: %w", ref, err)
	}
	if tarPath != "" {
		if err := tarball.WriteToFile(tarPath, tag, img); err != nil {
			return fmt.Errorf("write %s: %w", tarPath, err)
		}
	}
	if ociDir != "" {
		if err := os.RemoveAll(ociDir); err != nil {
			return err
		}
		p, err := layout.Write(ociDir, empty.Index)
		if err != nil {
			return fmt.Errorf("write %s: %w", ociDir, err)
		}
		// The layout names the image by its tag, as skopeo's oci:DIR:TAG
		// and containerd's import look it up.
		cf, err := img.ConfigFile()
		if err != nil {
			return err
		}
		if err := p.AppendImage(img, layout.WithPlatform(v1.Platform{OS: cf.OS, Architecture: cf.Architecture}),
			layout.WithAnnotations(map[string]string{
				"org.opencontainers.image.ref.name": tag.TagStr(),
				"io.containerd.image.name":          tag.Name(),
			})); err != nil {
			return fmt.Errorf("write %s: %w", ociDir, err)
		}
	}
	return nil
}

// SourceDate is the time reproducible builds agree on
// (SOURCE_DATE_EPOCH, which make sets to the commit's), else now.
func SourceDate() time.Time {
	if s := os.Getenv("SOURCE_DATE_EPOCH"); s != "" {
		if sec, err := strconv.ParseInt(s, 10, 64); err == nil {
			return time.Unix(sec, 0).UTC()
		}
	}
	return time.Now().UTC()
}
