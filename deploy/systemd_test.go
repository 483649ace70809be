package deploy

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestSystemdUnit runs systemd-analyze verify on the unit, where the tool
// exists, with the test binary standing in for /usr/local/bin/icapwatch.
func TestSystemdUnit(t *testing.T) {
	tool, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze not found")
	}
	unit, err := os.ReadFile("systemd/icapwatch.service")
	if err != nil {
		t.Fatal(err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	text := strings.ReplaceAll(string(unit), "/usr/local/bin/icapwatch", self)
	path := filepath.Join(t.TempDir(), "icapwatch.service")
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(tool, "verify", path).CombinedOutput()
	if err != nil || strings.Contains(string(out), "icapwatch.service") {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
	for _, want := range []string{"AmbientCapabilities=", "NoNewPrivileges=yes", "ProtectSystem=strict",
		"ProtectHome=yes", "EnvironmentFile=", "Restart=on-failure", "LimitMEMLOCK=infinity"} {
		if !strings.Contains(text, want) {
			t.Errorf("unit lacks %s", want)
		}
	}
}
