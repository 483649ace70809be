package packaging

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/icapwatch/icapwatch/internal/testutil"
)

// packageFiles are the files both packages install, besides the
// environment file and the license texts.
var packageFiles = []string{BinPath, UnitPath, ManPath, CompletionPath}

// buildPackages packs the stamped binary with the repository's unit and
// licenses, as make package does, and returns the rpm and the deb.
func buildPackages(t *testing.T) (rpmPath, debPath string) {
	t.Helper()
	out := runProgram(t, "package", "-bin", stampedBinary(t), "-version", testVersion, "-root", "..", "-out", t.TempDir())
	paths := strings.Fields(out)
	if len(paths) != 2 || !strings.HasSuffix(paths[0], ".rpm") || !strings.HasSuffix(paths[1], ".deb") {
		t.Fatalf("scripts/package wrote %q, want an rpm and a deb", out)
	}
	return paths[0], paths[1]
}

// TestPackages builds both packages and reads them back with rpm and
// dpkg-deb, then installs each into a scratch root (root only: rpm and
// dpkg install as root) and has systemd-analyze verify the unit there.
func TestPackages(t *testing.T) {
	t.Parallel()
	rpmTool, dpkgDeb := tool(t, "rpm"), tool(t, "dpkg-deb")
	rpmPath, debPath := buildPackages(t)
	if want := "icapwatch-" + testPkgVersion + "-1.x86_64.rpm"; runtime.GOARCH == "amd64" && filepath.Base(rpmPath) != want {
		t.Errorf("rpm named %s, want %s", filepath.Base(rpmPath), want)
	}
	if want := "icapwatch_" + testPkgVersion + "-1_amd64.deb"; runtime.GOARCH == "amd64" && filepath.Base(debPath) != want {
		t.Errorf("deb named %s, want %s", filepath.Base(debPath), want)
	}
	// rpm keeps a database even for queries: a scratch one, not root's.
	rpmDB := t.TempDir()

	t.Run("rpm", func(t *testing.T) {
		rpm := func(args ...string) string {
			return output(t, rpmTool, append([]string{"--dbpath", rpmDB}, args...)...)
		}
		info := fields(rpm("-qip", rpmPath), " : ")
		for k, want := range map[string]string{"Name": Name, "Version": testPkgVersion, "Release": "1",
			"License": License, "Summary": Summary, "URL": Homepage} {
			if info[k] != want {
				t.Errorf("rpm -qip: %s is %q, want %q", k, info[k], want)
			}
		}
		want := append(slices.Clone(packageFiles), RPMEnvPath, RPMLicenseDir,
			RPMLicenseDir+"/LICENSE", RPMLicenseDir+"/LICENSES", RPMLicenseDir+"/LICENSES/BSD-2-Clause.txt",
			RPMLicenseDir+"/LICENSES/GPL-2.0-only.txt")
		slices.Sort(want)
		if got := strings.Fields(rpm("-qlp", rpmPath)); !slices.Equal(got, want) {
			t.Errorf("rpm -qlp:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
		// Mode, owner and flags per file: c config, n noreplace, l license.
		attrs := fields(rpm("-qp", "--qf", `[%{FILENAMES}\t%{FILEMODES:perms} %{FILEUSERNAME} %{FILEFLAGS:fflags}\n]`, rpmPath), "\t")
		for path, want := range map[string]string{
			BinPath:                    "-rwxr-xr-x root",
			UnitPath:                   "-rw-r--r-- root",
			RPMEnvPath:                 "-rw-r--r-- root cn",
			ManPath:                    "-rw-r--r-- root",
			RPMLicenseDir + "/LICENSE": "-rw-r--r-- root l",
		} {
			if attrs[path] != want {
				t.Errorf("rpm: %s is %q, want %q", path, attrs[path], want)
			}
		}
		scripts := rpm("-qp", "--scripts", rpmPath)
		for _, s := range []string{"postinstall scriptlet", "preuninstall scriptlet", "postuninstall scriptlet", "DPKG_ROOT"} {
			if !strings.Contains(scripts, s) {
				t.Errorf("rpm --scripts lacks %q:\n%s", s, scripts)
			}
		}
	})

	t.Run("deb", func(t *testing.T) {
		control := fields(output(t, dpkgDeb, "-f", debPath), ": ")
		for k, want := range map[string]string{"Package": Name, "Version": testPkgVersion + "-1",
			"Architecture": runtime.GOARCH, "Homepage": Homepage, "Section": "net"} {
			if control[k] != want {
				t.Errorf("dpkg-deb -f: %s is %q, want %q", k, control[k], want)
			}
		}
		info := output(t, dpkgDeb, "-I", debPath)
		for _, want := range []string{"conffiles", "postinst", "prerm", "postrm", "Description: " + Summary} {
			if !strings.Contains(info, want) {
				t.Errorf("dpkg-deb -I lacks %q:\n%s", want, info)
			}
		}
		if got := strings.TrimSpace(output(t, dpkgDeb, "-I", debPath, "conffiles")); got != DebEnvPath {
			t.Errorf("conffiles: %q, want %s", got, DebEnvPath)
		}
		// dpkg-deb -c: "-rwxr-xr-x root/root 17502370 2025-06-01 12:00 ./usr/bin/icapwatch"
		modes := map[string]string{}
		for line := range strings.SplitSeq(strings.TrimSpace(output(t, dpkgDeb, "-c", debPath)), "\n") {
			f := strings.Fields(line)
			if len(f) < 6 {
				t.Fatalf("dpkg-deb -c: %q", line)
			}
			modes[strings.TrimPrefix(f[5], ".")] = f[0] + " " + f[1]
			// Every file has SOURCE_DATE_EPOCH's time.
			if got, want := f[3]+" "+f[4], testTime.Format("2006-01-02 15:04"); got != want {
				t.Errorf("dpkg-deb -c: %s at %s, want %s", f[5], got, want)
			}
		}
		want := append(slices.Clone(packageFiles), DebEnvPath, DebDocDir+"/copyright", DebDocDir+"/LICENSE",
			DebDocDir+"/LICENSES/BSD-2-Clause.txt", DebDocDir+"/LICENSES/GPL-2.0-only.txt")
		for _, path := range want {
			m := "-rw-r--r-- root/root"
			if path == BinPath {
				m = "-rwxr-xr-x root/root"
			}
			if modes[path] != m {
				t.Errorf("dpkg-deb -c: %s is %q, want %q", path, modes[path], m)
			}
		}
	})

	// The binary a package installed says the version it was built with,
	// and the unit runs it with the family's environment file.
	checkInstalled := func(t *testing.T, root, envPath string) {
		t.Helper()
		for _, path := range append(slices.Clone(packageFiles), envPath) {
			if _, err := os.Stat(filepath.Join(root, path)); err != nil {
				t.Errorf("installed: %v", err)
			}
		}
		if out := output(t, filepath.Join(root, BinPath), "version"); !strings.HasPrefix(out, "icapwatch "+testVersion+" (revision "+testRevision) {
			t.Errorf("installed icapwatch version: %q", out)
		}
		unit, err := os.ReadFile(filepath.Join(root, UnitPath))
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{"\nEnvironmentFile=-" + envPath + "\n", "\nExecStart=" + BinPath + " agent\n"} {
			if !strings.Contains(string(unit), want) {
				t.Errorf("installed unit lacks %q", strings.TrimSpace(want))
			}
		}
		verifyUnit(t, root)
	}

	t.Run("rpm install", func(t *testing.T) {
		testutil.RequireRoot(t)
		root := t.TempDir()
		// The scripts run chrooted into root, which has no shell; what
		// they would do is systemd's of a running system anyway.
		output(t, rpmTool, "--root", root, "--dbpath", "/var/lib/rpm", "--nodeps", "--noscripts", "-i", rpmPath)
		got := strings.TrimSpace(output(t, rpmTool, "--root", root, "--dbpath", "/var/lib/rpm", "-q", Name))
		if want := Name + "-" + testPkgVersion + "-1"; !strings.HasPrefix(got, want) {
			t.Errorf("rpm -q: %q, want %s", got, want)
		}
		checkInstalled(t, root, RPMEnvPath)
	})

	t.Run("deb install", func(t *testing.T) {
		testutil.RequireRoot(t)
		dpkg := tool(t, "dpkg")
		root := t.TempDir()
		for _, d := range []string{"var/lib/dpkg/info", "var/lib/dpkg/updates"} {
			if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.WriteFile(filepath.Join(root, "var/lib/dpkg/status"), nil, 0o644); err != nil {
			t.Fatal(err)
		}
		// --root keeps dpkg's database and files in root. Its maintainer
		// scripts would run chrooted there, without a shell: chrootless,
		// they run here with DPKG_ROOT set, and do nothing for it.
		run := func(args ...string) string {
			return output(t, dpkg, append([]string{"--root", root, "--log", filepath.Join(root, "dpkg.log"),
				"--force-script-chrootless"}, args...)...)
		}
		run("-i", debPath)
		if got := output(t, dpkg, "--root", root, "-s", Name); !strings.Contains(got, "Status: install ok installed") {
			t.Errorf("dpkg -s:\n%s", got)
		}
		checkInstalled(t, root, DebEnvPath)

		// A changed environment file outlives a reinstall (an upgrade
		// keeps it the same way), and goes with a purge.
		env := filepath.Join(root, DebEnvPath)
		if err := os.WriteFile(env, []byte("ICAPWATCH_AGENT_PORTS=1344\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		run("-i", debPath)
		if b, err := os.ReadFile(env); err != nil || string(b) != "ICAPWATCH_AGENT_PORTS=1344\n" {
			t.Errorf("after a reinstall, %s is %q, %v", DebEnvPath, b, err)
		}
		run("--purge", Name)
		for _, path := range append(slices.Clone(packageFiles), DebEnvPath, DebDocDir) {
			if _, err := os.Stat(filepath.Join(root, path)); !os.IsNotExist(err) {
				t.Errorf("after a purge, %s: %v", path, err)
			}
		}
	})
}

// verifyUnit runs systemd-analyze verify on the unit installed under
// root, with root as its file system: ExecStart must name a binary there.
// The targets the unit orders itself after are stubs, as a root with one
// package installed has none.
func verifyUnit(t *testing.T, root string) {
	t.Helper()
	analyze := tool(t, "systemd-analyze")
	for _, target := range []string{"sysinit.target", "basic.target", "shutdown.target", "network-online.target", "multi-user.target"} {
		stub := "[Unit]\nDescription=" + target + " (stub for systemd-analyze verify)\n"
		if err := os.WriteFile(filepath.Join(root, filepath.Dir(UnitPath), target), []byte(stub), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	out, err := exec.Command(analyze, "verify", "--root", root, UnitPath).CombinedOutput()
	if err != nil || strings.Contains(string(out), "icapwatch") {
		t.Errorf("systemd-analyze verify --root %s %s: %v\n%s", root, UnitPath, err, out)
	}
}

// fields reads "Key<sep>value" lines; the first of a key counts, and
// lines without sep (a description's continuation) do not.
func fields(text, sep string) map[string]string {
	m := map[string]string{}
	for line := range strings.SplitSeq(text, "\n") {
		k, v, ok := strings.Cut(line, sep)
		k = strings.TrimSpace(k)
		if _, seen := m[k]; ok && !seen {
			m[k] = strings.TrimSpace(v)
		}
	}
	return m
}

func TestPackagedUnit(t *testing.T) {
	unit, err := os.ReadFile("../" + unitSource)
	if err != nil {
		t.Fatal(err)
	}
	for _, envPath := range []string{RPMEnvPath, DebEnvPath} {
		got, err := PackagedUnit(unit, envPath)
		if err != nil {
			t.Fatal(err)
		}
		text := string(got)
		if strings.Contains(text, "/usr/local") || strings.Count(text, envPath) != 2 {
			t.Errorf("unit for %s:\n%s", envPath, text)
		}
		// Everything but the header, the binary and the environment file
		// is deploy/systemd's, hardening included.
		_, body, _ := strings.Cut(string(unit), "[Unit]")
		body = strings.NewReplacer(manualBinPath, BinPath, RPMEnvPath, envPath).Replace(body)
		if !strings.HasSuffix(text, body) {
			t.Errorf("unit for %s is not deploy/systemd's:\n%s", envPath, text)
		}
	}
	// A unit that no longer says what to replace is an error, not a
	// package with the wrong paths in it.
	for _, bad := range []string{
		strings.ReplaceAll(string(unit), "/usr/local/bin/icapwatch", "/opt/icapwatch"),
		strings.ReplaceAll(string(unit), "EnvironmentFile=-", "EnvironmentFile="),
		"ExecStart=/usr/local/bin/icapwatch agent\n",
	} {
		if _, err := PackagedUnit([]byte(bad), DebEnvPath); err == nil {
			t.Errorf("PackagedUnit accepted:\n%s", bad)
		}
	}
}

func TestFixManPage(t *testing.T) {
	man := ".TH icapwatch 1 icapwatch v1 (revision x, go1.26, linux/amd64) \"\"\n.SH \"NAME\"\nicapwatch\n.SH \"SYNOPSIS\"\n"
	got, err := fixManPage([]byte(man), "1.2.3", testTime)
	if err != nil {
		t.Fatal(err)
	}
	want := ".TH ICAPWATCH 1 \"2025-06-01\" \"icapwatch 1.2.3\" \"icapwatch manual\"\n.SH \"NAME\"\n" +
		"icapwatch \\- " + Summary + "\n.SH \"SYNOPSIS\"\n"
	if string(got) != want {
		t.Errorf("got:\n%s\nwant:\n%s", got, want)
	}
	for _, bad := range []string{"", ".SH \"NAME\"\nicapwatch\n", ".TH x\n.SH \"NAME\"\nicapwatch - a tool\n"} {
		if _, err := fixManPage([]byte(bad), "1", testTime); err == nil {
			t.Errorf("fixManPage accepted %q", bad)
		}
	}
}
