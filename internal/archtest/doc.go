// Package archtest holds the layering rules of the module as a test: which
// packages may not depend on which, with their tests. It has no code of
// its own; the rules are in arch_test.go, which `go test ./...` runs.
package archtest
