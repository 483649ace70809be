package deploy

import (
	"bufio"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

const runbookFile = "../docs/runbook.md"

// TestRunbook: every alert links, in its runbook_url annotation, its own
// section of docs/runbook.md on the project's repository, and every
// alert section of the runbook belongs to an alert.
func TestRunbook(t *testing.T) {
	mod, err := os.ReadFile("../go.mod")
	if err != nil {
		t.Fatal(err)
	}
	module, _, _ := strings.Cut(strings.TrimPrefix(string(mod), "module "), "\n")
	base := "https://" + strings.TrimSpace(module) + "/blob/main/docs/runbook.md"

	levels, err := runbookAnchors(runbookFile)
	if err != nil {
		t.Fatal(err)
	}
	rules, err := Rules(".")
	if err != nil {
		t.Fatal(err)
	}
	linked := map[string]bool{}
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" {
				continue
			}
			url := r.Annotations["runbook_url"]
			page, anchor, _ := strings.Cut(url, "#")
			want := strings.ToLower(r.Alert)
			switch {
			case page != base:
				t.Errorf("%s: runbook_url %q, want %s#%s", r.Alert, url, base, want)
			case anchor != want:
				t.Errorf("%s: runbook_url anchor %q, want its own section, #%s", r.Alert, anchor, want)
			case levels[anchor] != 2:
				t.Errorf("%s: %s has no section (## %s) for #%s", r.Alert, runbookFile, r.Alert, anchor)
			}
			linked[anchor] = true
		}
	}
	for anchor, level := range levels {
		if level == 2 && strings.HasPrefix(anchor, "icap") && !linked[anchor] {
			t.Errorf("%s: section #%s is for no alert of the rules", runbookFile, anchor)
		}
	}
}

var (
	heading  = regexp.MustCompile(`^(#{1,6})\s+(.*?)\s*#*\s*$`)
	notInURL = regexp.MustCompile(`[^\p{L}\p{N}\s_-]`)
)

// runbookAnchors reads a Markdown file's headings as GitHub anchors them
// (lower case, punctuation dropped, spaces as hyphens, repeats numbered),
// with their level. Code blocks are skipped.
func runbookAnchors(file string) (map[string]int, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	out := map[string]int{}
	seen := map[string]int{}
	fenced := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "```") {
			fenced = !fenced
		}
		m := heading.FindStringSubmatch(line)
		if fenced || m == nil {
			continue
		}
		slug := strings.ReplaceAll(notInURL.ReplaceAllString(strings.ToLower(m[2]), ""), " ", "-")
		anchor := slug
		if n := seen[slug]; n > 0 {
			anchor += "-" + strconv.Itoa(n)
		}
		seen[slug]++
		out[anchor] = len(m[1])
	}
	return out, sc.Err()
}
