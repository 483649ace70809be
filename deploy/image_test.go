package deploy

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestDockerfile: a multi-stage build of the static binary (make build
// sets CGO_ENABLED=0 and stamps the version) onto a minimal base, with
// the OCI labels. TestImageBuilds runs make image, with an engine where
// one runs.
func TestDockerfile(t *testing.T) {
	b, err := os.ReadFile("../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	text := string(b)
	if n := strings.Count(text, "\nFROM "); n < 2 {
		t.Errorf("want a multi-stage build, found %d FROM lines", n)
	}
	for _, want := range []string{"make build VERSION=${VERSION}", "distroless/static", "org.opencontainers.image.version",
		"org.opencontainers.image.revision", "COPY --from=build /src/bin/icapwatch", `CMD ["agent"]`} {
		if !strings.Contains(text, want) {
			t.Errorf("Dockerfile lacks %q", want)
		}
	}
	mk, err := os.ReadFile("../Makefile")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(mk), "CGO_ENABLED=0 $(GO) build") {
		t.Error("make build is not static")
	}
}

func TestImageBuilds(t *testing.T) {
	// Without an engine make image builds with scripts/image: it runs
	// everywhere, and the output is read back by scripts/image's tests.
	dir := t.TempDir()
	out, err := exec.Command("make", "-C", "..", "image", "ENGINE=", "DIST="+dir, "BIN="+filepath.Join(dir, "icapwatch")).CombinedOutput()
	if err != nil {
		t.Fatalf("make image without an engine: %v\n%s", err, out)
	}
	if st, err := os.Stat(filepath.Join(dir, "icapwatch-image.tar")); err != nil || st.Size() == 0 {
		t.Errorf("make image wrote no image archive: %v\n%s", err, out)
	}
	engine, err := exec.LookPath("docker")
	if err != nil {
		engine, err = exec.LookPath("podman")
	}
	if err != nil || exec.Command(engine, "info").Run() != nil {
		return // no engine here: the Dockerfile's path is not taken
	}
	if out, err := exec.Command("make", "-C", "..", "image").CombinedOutput(); err != nil {
		t.Errorf("make image with %s: %v\n%s", engine, err, out)
	}
}
