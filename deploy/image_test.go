package deploy

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// TestDockerfile: a multi-stage build of the static binary (make build
// sets CGO_ENABLED=0 and stamps the version) onto a minimal base, with
// the OCI labels. TestImageBuilds runs make image where an engine runs.
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
	engine, err := exec.LookPath("docker")
	if err != nil {
		engine, err = exec.LookPath("podman")
	}
	if err != nil || exec.Command(engine, "info").Run() != nil {
		t.Skip("no container engine runs here")
	}
	if out, err := exec.Command("make", "-C", "..", "image").CombinedOutput(); err != nil {
		t.Errorf("make image: %v\n%s", err, out)
	}
}
