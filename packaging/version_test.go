package packaging

import (
	"os/exec"
	"strings"
	"testing"
)

func TestPackageVersion(t *testing.T) {
	for _, c := range []struct{ describe, want string }{
		{"v1.2.3", "1.2.3"},
		{"1.2.3", "1.2.3"},
		{"v1.2.3-dirty", "1.2.3+dirty"},
		{"v1.2.3-rc.1", "1.2.3~rc.1"},
		{"v1.2.3-rc-1", "1.2.3~rc.1"},
		{"v1.2.3-4-gabc1234", "1.2.3+4.gabc1234"},
		{testVersion, testPkgVersion},
		{"v1.2.3-rc.1-4-gabc1234", "1.2.3~rc.1+4.gabc1234"},
		{"b3e9f8c", "0.0.0+gb3e9f8c"},
		{"b3e9f8c-dirty", "0.0.0+gb3e9f8c.dirty"},
		{"1234567\n", "0.0.0+g1234567"},
		{"v2", "2"},
	} {
		got, err := PackageVersion(c.describe)
		if err != nil || got != c.want {
			t.Errorf("PackageVersion(%q) = %q, %v; want %q", c.describe, got, err, c.want)
		}
	}
	for _, bad := range []string{"", "dev", "-dirty", "vnext", "v1.2.3_4", "v1.2.3-rc/1", "release-1.2"} {
		if got, err := PackageVersion(bad); err == nil {
			t.Errorf("PackageVersion(%q) = %q, want an error", bad, got)
		}
	}
}

// TestPackageVersionOrder asks dpkg and rpm themselves: releases and the
// commits after them, in the order they are made, must come out in that
// order, so that an upgrade is one. A dirty build has no place in it.
func TestPackageVersionOrder(t *testing.T) {
	dpkg := tool(t, "dpkg")
	rpm := tool(t, "rpm")
	order := []string{"abc1234", "v0.9.0", "v1.0.0-rc.1", "v1.0.0-rc.2", "v1.0.0-rc.2-3-gabc1234", "v1.0.0",
		"v1.0.0-1-gdef5678", "v1.0.0-12-g0123abc", "v1.0.1", "v1.10.0"}
	for i := 1; i < len(order); i++ {
		older, err := PackageVersion(order[i-1])
		if err != nil {
			t.Fatal(err)
		}
		newer, err := PackageVersion(order[i])
		if err != nil {
			t.Fatal(err)
		}
		if err := exec.Command(dpkg, "--compare-versions", older, "lt", newer).Run(); err != nil {
			t.Errorf("dpkg: %s (%s) is not older than %s (%s)", older, order[i-1], newer, order[i])
		}
		// rpm.vercmp is rpmvercmp, what rpm -U decides an upgrade with.
		out, err := exec.Command(rpm, "--eval", `%{lua: print(rpm.vercmp("`+older+`", "`+newer+`"))}`).CombinedOutput()
		if err != nil || strings.TrimSpace(string(out)) != "-1" {
			t.Errorf("rpm: %s (%s) is not older than %s (%s): %v %s", older, order[i-1], newer, order[i], err, out)
		}
	}
}
