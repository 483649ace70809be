package packaging

import (
	"fmt"
	"regexp"
	"strings"
)

var (
	// afterTag is git describe's form for a commit past a tag: TAG-N-gHASH.
	afterTag = regexp.MustCompile(`^(.+)-([0-9]+)-g([0-9a-f]{4,40})$`)
	// commitOnly is git describe --always where no tag is reachable.
	commitOnly = regexp.MustCompile(`^[0-9a-f]{4,40}$`)
	// release is a tag without its v: 1.2.3, and a pre-release after a
	// hyphen: 1.2.3-rc.1.
	release = regexp.MustCompile(`^([0-9][0-9A-Za-z.]*)(?:-([0-9A-Za-z.-]+))?$`)
)

// PackageVersion turns the Makefile's VERSION (git describe --tags
// --always --dirty) into a version that rpm and dpkg both accept and
// order as releases go:
//
//	v1.2.3                  1.2.3
//	v1.2.3-rc.1             1.2.3~rc.1          (~ sorts before 1.2.3)
//	v1.2.3-4-gabc1234       1.2.3+4.gabc1234    (after 1.2.3)
//	abc1234 (no tag)        0.0.0+gabc1234
//	any of them -dirty      …+dirty, or ….dirty after a +
//
// A dirty build has no place in that order: it is for trying, not for
// upgrading to.
//
// Only digits, letters, '.', '+' and '~' remain: rpm refuses '-' in a
// version and dpkg reads one as the start of the Debian revision. The
// caret (rpm's post-release mark) is avoided because RHEL 8's rpm 4.14
// does not know it.
func PackageVersion(describe string) (string, error) {
	d, dirty := strings.CutSuffix(strings.TrimSpace(describe), "-dirty")
	var tag, meta string
	if m := afterTag.FindStringSubmatch(d); m != nil {
		tag, meta = m[1], m[2]+".g"+m[3]
	} else if commitOnly.MatchString(d) {
		tag, meta = "0.0.0", "g"+d
	} else {
		tag = d
	}
	m := release.FindStringSubmatch(strings.TrimPrefix(tag, "v"))
	if m == nil {
		return "", fmt.Errorf("version %q: want git describe's form of a tag like v1.2.3, or a commit; set VERSION=1.2.3", describe)
	}
	v := m[1]
	if m[2] != "" {
		v += "~" + strings.ReplaceAll(m[2], "-", ".")
	}
	if dirty {
		meta = strings.TrimPrefix(meta+".dirty", ".")
	}
	if meta != "" {
		v += "+" + meta
	}
	return v, nil
}
