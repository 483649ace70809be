package packaging

import (
	"archive/tar"
	"errors"
	"io"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/validate"
)

const testImageRef = "registry.example/icapwatch/icapwatch:" + testVersion

// TestImage builds the image from the stamped binary with scripts/image,
// as make image does without an engine, and reads both outputs back as a
// loader would: the configuration the Dockerfile gives, and one layer
// whose binary runs and says its version.
func TestImage(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	tarPath, ociDir := filepath.Join(dir, "icapwatch-image.tar"), filepath.Join(dir, "icapwatch-oci")
	runProgram(t, "image", "-bin", stampedBinary(t), "-version", testVersion, "-revision", testRevision,
		"-name", testImageRef, "-tar", tarPath, "-oci", ociDir)

	// The layout's index: one image, named by its tag, for this platform.
	idx, err := layout.ImageIndexFromPath(ociDir)
	if err != nil {
		t.Fatal(err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(im.Manifests) != 1 {
		t.Fatalf("index.json: %d manifests, want 1", len(im.Manifests))
	}
	desc := im.Manifests[0]
	if tag := desc.Annotations["org.opencontainers.image.ref.name"]; tag != testVersion {
		t.Errorf("index.json: ref.name %q, want %s", tag, testVersion)
	}
	if p := desc.Platform; p == nil || p.OS != "linux" || p.Architecture != runtime.GOARCH {
		t.Errorf("index.json: platform %+v, want linux/%s", p, runtime.GOARCH)
	}
	if desc.MediaType != "application/vnd.oci.image.manifest.v1+json" {
		t.Errorf("index.json: media type %s", desc.MediaType)
	}
	img, err := idx.Image(desc.Digest)
	if err != nil {
		t.Fatal(err)
	}
	config, err := img.ConfigName()
	if err != nil {
		t.Fatal(err)
	}

	t.Run("oci-layout", func(t *testing.T) {
		// Manifest and config digests and sizes agree with the blobs, as
		// a registry checks them on push; checkImage reads the layer.
		if err := validate.Image(img, validate.Fast); err != nil {
			t.Errorf("validate: %v", err)
		}
		// The layer holds the binary and nothing else but its
		// directories; anyone may run it (lab, probe and analyze need no
		// root), and it says the version it was built with.
		bin := extractBinary(t, checkImage(t, img, config))
		runVersion(t, bin, nil)
		if os.Geteuid() == 0 {
			runVersion(t, bin, &syscall.Credential{Uid: 65534, Gid: 65534})
		}
	})

	t.Run("docker-archive", func(t *testing.T) {
		// What docker load reads first: the name to give the image.
		m, err := tarball.LoadManifest(func() (io.ReadCloser, error) { return os.Open(tarPath) })
		if err != nil {
			t.Fatal(err)
		}
		if len(m) != 1 || !slices.Equal(m[0].RepoTags, []string{testImageRef}) {
			t.Errorf("manifest.json: %+v, want one image named %s", m, testImageRef)
		}
		got, err := tarball.ImageFromPath(tarPath, nil)
		if err != nil {
			t.Fatal(err)
		}
		// The same layer blob as the layout's, which oci-layout reads.
		layer := checkImage(t, got, config)
		want, err := img.Layers()
		if err != nil || len(want) != 1 {
			t.Fatalf("layout's layers: %v, %v", want, err)
		}
		d1, err1 := layer.Digest()
		d2, err2 := want[0].Digest()
		if err1 != nil || err2 != nil || d1 != d2 {
			t.Errorf("layer %s (%v), want the layout's %s (%v)", d1, err1, d2, err2)
		}
	})

	t.Run("reproducible", func(t *testing.T) {
		again := filepath.Join(t.TempDir(), "icapwatch-oci")
		runProgram(t, "image", "-bin", stampedBinary(t), "-version", testVersion, "-revision", testRevision,
			"-name", testImageRef, "-tar", "", "-oci", again)
		idx, err := layout.ImageIndexFromPath(again)
		if err != nil {
			t.Fatal(err)
		}
		im, err := idx.IndexManifest()
		if err != nil || len(im.Manifests) != 1 {
			t.Fatalf("index.json: %v, %v", im, err)
		}
		if d := im.Manifests[0].Digest; d != desc.Digest {
			t.Errorf("the same binary at the same SOURCE_DATE_EPOCH made %s, then %s", desc.Digest, d)
		}
	})
}

// checkImage checks an image read back: its configuration, and that it
// has one layer, which it returns.
func checkImage(t *testing.T, img v1.Image, wantConfig v1.Hash) v1.Layer {
	t.Helper()
	if got, err := img.ConfigName(); err != nil || got != wantConfig {
		t.Errorf("config %s (%v), want the layout's, %s", got, err, wantConfig)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	c := cf.Config
	if cf.OS != "linux" || cf.Architecture != runtime.GOARCH || !cf.Created.Equal(testTime) {
		t.Errorf("platform %s/%s created %v", cf.OS, cf.Architecture, cf.Created)
	}
	if !slices.Equal(c.Entrypoint, []string{ImageBinPath}) || !slices.Equal(c.Cmd, []string{"agent"}) {
		t.Errorf("entrypoint %q cmd %q", c.Entrypoint, c.Cmd)
	}
	if c.User != "0" {
		t.Errorf("user %q, want 0", c.User)
	}
	if !slices.Equal(slices.Sorted(maps.Keys(c.ExposedPorts)), []string{"9344/tcp"}) {
		t.Errorf("exposed ports %v", c.ExposedPorts)
	}
	wantLabels := map[string]string{
		"org.opencontainers.image.title":       "icapwatch",
		"org.opencontainers.image.description": Summary,
		"org.opencontainers.image.version":     testVersion,
		"org.opencontainers.image.revision":    testRevision,
		"org.opencontainers.image.source":      "https://github.com/icapwatch/icapwatch",
		"org.opencontainers.image.licenses":    "Apache-2.0 AND (GPL-2.0-only OR BSD-2-Clause)",
	}
	if !maps.Equal(c.Labels, wantLabels) {
		t.Errorf("labels %v\nwant %v", c.Labels, wantLabels)
	}
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	if len(layers) != 1 {
		t.Fatalf("%d layers, want 1", len(layers))
	}
	return layers[0]
}

// extractBinary reads the layer's tar, checks its entries and writes the
// binary into a directory every user may enter.
func extractBinary(t *testing.T, layer v1.Layer) string {
	t.Helper()
	rc, err := layer.Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	dir := t.TempDir()
	for _, d := range []string{dir, filepath.Dir(dir)} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	bin := filepath.Join(dir, "icapwatch")
	var names []string
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, h.Name)
		if h.Uid != 0 || h.Gid != 0 || !h.ModTime.Equal(testTime) {
			t.Errorf("%s: owner %d:%d, time %v", h.Name, h.Uid, h.Gid, h.ModTime)
		}
		if h.Name != strings.TrimPrefix(ImageBinPath, "/") {
			continue
		}
		if h.Typeflag != tar.TypeReg || h.FileInfo().Mode().Perm() != 0o755 {
			t.Errorf("%s: type %c mode %v, want a regular file, 0755", h.Name, h.Typeflag, h.FileInfo().Mode())
		}
		f, err := os.OpenFile(bin, os.O_CREATE|os.O_WRONLY|os.O_EXCL, h.FileInfo().Mode().Perm())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(f, tr); err != nil {
			t.Fatal(err)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
	}
	if want := []string{"usr/", "usr/local/", "usr/local/bin/", "usr/local/bin/icapwatch"}; !slices.Equal(names, want) {
		t.Fatalf("layer holds %q, want %q", names, want)
	}
	return bin
}

// runVersion runs icapwatch version, as cred when it is given, with an
// empty environment as in the image.
func runVersion(t *testing.T, bin string, cred *syscall.Credential) {
	t.Helper()
	cmd := exec.Command(bin, "version")
	cmd.Env = []string{}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	out, err := cmd.CombinedOutput()
	want := "icapwatch " + testVersion + " (revision " + testRevision + ", "
	if err != nil || !strings.HasPrefix(string(out), want) {
		t.Errorf("icapwatch version (as %+v): %v\n%s\nwant %s…", cred, err, out, want)
	}
}
