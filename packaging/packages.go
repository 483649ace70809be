// Package packaging builds what icapwatch ships besides its source: rpm and
// deb packages for bare scan hosts, with nfpm (no rpmbuild, no dpkg-deb),
// and an OCI image from an empty base, with go-containerregistry (no
// container engine). Both pack the static binary that make build writes;
// scripts/package and scripts/image are the programs make calls.
package packaging

import (
	"bytes"
	"compress/gzip"
	"embed"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/goreleaser/nfpm/v2"
	"github.com/goreleaser/nfpm/v2/deb"
	"github.com/goreleaser/nfpm/v2/files"
	"github.com/goreleaser/nfpm/v2/rpm"
)

// Name is the package's and the command's name.
const Name = "icapwatch"

// What the packages describe themselves with; License is an SPDX
// expression, as LICENSE and LICENSES/ say (the eBPF C is dual-licensed).
const (
	Summary     = "eBPF observability for ICAP-over-TLS scanning"
	Homepage    = "https://github.com/icapwatch/icapwatch"
	License     = "Apache-2.0 AND (GPL-2.0-only OR BSD-2-Clause)"
	description = Summary + `
icapwatch watches the TLS connections of scan hosts to an ICAP antivirus
server with eBPF, measures the gap between a request and its answer,
catches requests that are stuck while they are stuck, says why, and
exports it as Prometheus metrics, JSON events and logs.`
)

// Where the packages put their files. The unit and the binary are the
// package manager's (/usr), not /usr/local as deploy/systemd's manual
// install; the environment file is where each family keeps one.
const (
	BinPath        = "/usr/bin/icapwatch"
	UnitPath       = "/usr/lib/systemd/system/icapwatch.service"
	ManPath        = "/usr/share/man/man1/icapwatch.1.gz"
	CompletionPath = "/usr/share/bash-completion/completions/icapwatch"
	RPMEnvPath     = "/etc/sysconfig/icapwatch"
	DebEnvPath     = "/etc/default/icapwatch"
	RPMLicenseDir  = "/usr/share/licenses/icapwatch"
	DebDocDir      = "/usr/share/doc/icapwatch"
)

// The unit and the environment file of deploy/systemd, and what the
// packages change in them.
const (
	unitSource    = "deploy/systemd/icapwatch.service"
	envSource     = "deploy/systemd/icapwatch.env"
	manualBinPath = "/usr/local/bin/icapwatch"
)

// licenseFiles are the license texts under the repository, as they are
// installed under the license directory.
var licenseFiles = []string{"LICENSE", "LICENSES/BSD-2-Clause.txt", "LICENSES/GPL-2.0-only.txt"}

//go:embed scripts/*.sh
var scripts embed.FS

// Options says what to pack and where to write it.
type Options struct {
	Binary     string    // the static icapwatch, built for Arch; it is run for its man page and completion
	Version    string    // the Makefile's VERSION (git describe); see PackageVersion
	Root       string    // the repository: deploy/systemd, LICENSE, LICENSES/
	Out        string    // the directory the packages are written to
	Arch       string    // GOARCH the binary is built for; default this one's
	Maintainer string    // default "The icapwatch developers"
	MTime      time.Time // the files' time; default SOURCE_DATE_EPOCH, else now
}

// Packages builds the rpm and the deb into o.Out and returns their paths.
func Packages(o Options) ([]string, error) {
	if o.Arch == "" {
		o.Arch = runtime.GOARCH
	}
	if o.Maintainer == "" {
		o.Maintainer = "The icapwatch developers"
	}
	if o.MTime.IsZero() {
		o.MTime = SourceDate()
	}
	version, err := PackageVersion(o.Version)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(o.Out, 0o755); err != nil {
		return nil, err
	}
	stage, err := os.MkdirTemp("", "icapwatch-package-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(stage)
	if err := stageFiles(o, version, stage); err != nil {
		return nil, err
	}

	var paths []string
	for _, p := range []struct {
		format string
		pkgr   nfpm.Packager
	}{{"rpm", rpm.DefaultRPM}, {"deb", deb.Default}} {
		info := packageInfo(o, version, stage, p.format)
		path := filepath.Join(o.Out, p.pkgr.ConventionalFileName(info))
		if err := write(path, p.pkgr, info); err != nil {
			return paths, fmt.Errorf("%s: %w", p.format, err)
		}
		paths = append(paths, path)
	}
	return paths, nil
}

func write(path string, pkgr nfpm.Packager, info *nfpm.Info) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := pkgr.Package(info, f); err != nil {
		f.Close()
		os.Remove(path)
		return err
	}
	return f.Close()
}

// stageFiles writes what the packages hold that is not in the repository
// as it is: the unit and environment file of each family, the man page,
// the completion and the maintainer scripts.
func stageFiles(o Options, version, stage string) error {
	unit, err := os.ReadFile(filepath.Join(o.Root, unitSource))
	if err != nil {
		return err
	}
	env, err := os.ReadFile(filepath.Join(o.Root, envSource))
	if err != nil {
		return err
	}
	man, err := run(o.Binary, "--help-man")
	if err != nil {
		return err
	}
	man, err = fixManPage(man, version, o.MTime)
	if err != nil {
		return err
	}
	completion, err := run(o.Binary, "--completion-script-bash")
	if err != nil {
		return err
	}
	// The gzip header holds a time: the build's, so that a rebuild is the same.
	var manGz bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&manGz, gzip.BestCompression)
	zw.ModTime = o.MTime
	if _, err := zw.Write(man); err != nil {
		return err
	}
	if err := zw.Close(); err != nil {
		return err
	}

	rpmUnit, err := PackagedUnit(unit, RPMEnvPath)
	if err != nil {
		return err
	}
	debUnit, err := PackagedUnit(unit, DebEnvPath)
	if err != nil {
		return err
	}
	generated := map[string][]byte{
		"icapwatch.1.gz":        manGz.Bytes(),
		"icapwatch.bash":        completion,
		"copyright":             []byte(debCopyright),
		"rpm-icapwatch.service": rpmUnit,
		"deb-icapwatch.service": debUnit,
		"rpm-icapwatch.env":     env,
		"deb-icapwatch.env":     []byte(strings.ReplaceAll(string(env), RPMEnvPath, DebEnvPath)),
	}
	for _, s := range []string{"postinstall.sh", "preremove.sh", "postremove.sh"} {
		if generated["scripts/"+s], err = scripts.ReadFile("scripts/" + s); err != nil {
			return err
		}
	}
	for name, b := range generated {
		path := filepath.Join(stage, name)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(path, b, 0o644); err != nil {
			return err
		}
	}
	return nil
}

// debCopyright is Debian's place to say under which licenses a package
// is; the texts are beside it.
const debCopyright = `icapwatch: ` + Homepage + `

License: ` + License + `

The Go code is under the Apache License 2.0 (LICENSE). The eBPF C programs
and headers, compiled into the binary, are dual-licensed GPL-2.0-only OR
BSD-2-Clause (LICENSES/), as the kernel requires a GPL-compatible license.
The full texts are in this directory.
`

// packageInfo describes one package, rpm or deb.
func packageInfo(o Options, version, stage, format string) *nfpm.Info {
	envPath, licenseDir, licenseType := RPMEnvPath, RPMLicenseDir, files.TypeRPMLicense
	if format == "deb" {
		envPath, licenseDir, licenseType = DebEnvPath, DebDocDir, files.TypeFile
	}
	unitSrc, envSrc := format+"-icapwatch.service", format+"-icapwatch.env"
	mode := func(m os.FileMode) *files.ContentFileInfo {
		return &files.ContentFileInfo{Owner: "root", Group: "root", Mode: m, MTime: o.MTime}
	}
	contents := files.Contents{
		{Source: o.Binary, Destination: BinPath, FileInfo: mode(0o755)},
		{Source: filepath.Join(stage, unitSrc), Destination: UnitPath, FileInfo: mode(0o644)},
		{Source: filepath.Join(stage, envSrc), Destination: envPath, Type: files.TypeConfigNoReplace, FileInfo: mode(0o644)},
		{Source: filepath.Join(stage, "icapwatch.1.gz"), Destination: ManPath, FileInfo: mode(0o644)},
		{Source: filepath.Join(stage, "icapwatch.bash"), Destination: CompletionPath, FileInfo: mode(0o644)},
	}
	// The package owns its license directories, so that removing it
	// removes them.
	for _, d := range []string{licenseDir, licenseDir + "/LICENSES"} {
		contents = append(contents, &files.Content{Destination: d, Type: files.TypeDir, FileInfo: mode(0o755)})
	}
	for _, l := range licenseFiles {
		contents = append(contents, &files.Content{Source: filepath.Join(o.Root, l),
			Destination: licenseDir + "/" + l, Type: licenseType, FileInfo: mode(0o644)})
	}
	if format == "deb" {
		contents = append(contents, &files.Content{Source: filepath.Join(stage, "copyright"),
			Destination: DebDocDir + "/copyright", FileInfo: mode(0o644)})
	}
	info := &nfpm.Info{
		Name:          Name,
		Arch:          o.Arch,
		Platform:      "linux",
		Version:       version,
		VersionSchema: "none", // PackageVersion made it valid for both
		Release:       "1",
		Section:       "net",
		Priority:      "optional",
		Maintainer:    o.Maintainer,
		Description:   description,
		Vendor:        Name,
		Homepage:      Homepage,
		License:       License,
		MTime:         o.MTime,
		Overridables: nfpm.Overridables{
			Contents: contents,
			Umask:    0o022,
			Scripts: nfpm.Scripts{
				PostInstall: filepath.Join(stage, "scripts/postinstall.sh"),
				PreRemove:   filepath.Join(stage, "scripts/preremove.sh"),
				PostRemove:  filepath.Join(stage, "scripts/postremove.sh"),
			},
			// gzip: every rpm and dpkg reads it, RHEL 8's included, and it
			// packs the binary in about a second.
			RPM: nfpm.RPM{Compression: "gzip", Summary: Summary, Group: "System Environment/Daemons"},
			Deb: nfpm.Deb{Compression: "gzip"},
		},
	}
	return nfpm.WithDefaults(info)
}

// PackagedUnit is deploy/systemd's unit as a package installs it: the
// binary in /usr/bin, the flags from envPath, and a header that says so
// in place of the manual install's.
func PackagedUnit(unit []byte, envPath string) ([]byte, error) {
	text := string(unit)
	start := strings.Index(text, "[Unit]")
	if start < 0 {
		return nil, fmt.Errorf("%s: no [Unit] section", unitSource)
	}
	text = text[start:]
	for _, r := range []struct{ old, new string }{
		{"ExecStart=" + manualBinPath + " ", "ExecStart=" + BinPath + " "},
		{"EnvironmentFile=-" + RPMEnvPath + "\n", "EnvironmentFile=-" + envPath + "\n"},
	} {
		if n := strings.Count(text, r.old); n != 1 {
			return nil, fmt.Errorf("%s: want one %q, found %d", unitSource, strings.TrimSpace(r.old), n)
		}
		text = strings.Replace(text, r.old, r.new, 1)
	}
	header := "# icapwatch agent, installed by its package. Set its flags in " + envPath + ",\n" +
		"# then: systemctl enable --now icapwatch. Local changes: systemctl edit icapwatch.\n"
	return []byte(header + text), nil
}

// fixManPage gives kingpin's man page a header man(7) reads as meant:
// kingpin writes the whole version line unquoted into .TH, whose words
// then become the date, the source and the manual; and a NAME line with
// the one-line description, which whatis and apropos show.
func fixManPage(man []byte, version string, date time.Time) ([]byte, error) {
	text := string(man)
	th, rest, ok := strings.Cut(text, "\n")
	if !ok || !strings.HasPrefix(th, ".TH ") {
		return nil, fmt.Errorf("man page: want a .TH line first, found %.40q", th)
	}
	text = fmt.Sprintf(".TH ICAPWATCH 1 %q %q %q\n", date.UTC().Format("2006-01-02"), "icapwatch "+version, "icapwatch manual") + rest
	const name = ".SH \"NAME\"\nicapwatch\n"
	if strings.Count(text, name) != 1 {
		return nil, fmt.Errorf("man page: want a NAME section with icapwatch alone in it")
	}
	text = strings.Replace(text, name, ".SH \"NAME\"\nicapwatch \\- "+Summary+"\n", 1)
	return []byte(text), nil
}

// run runs the binary with an empty environment, so that no ICAPWATCH_*
// variable of the build changes the defaults the man page shows.
func run(bin string, args ...string) ([]byte, error) {
	cmd := exec.Command(bin, args...)
	cmd.Env = []string{}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w: %s", bin, strings.Join(args, " "), err, bytes.TrimSpace(stderr.Bytes()))
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s %s: no output", bin, strings.Join(args, " "))
	}
	return out, nil
}
