//go:build !linux

package main

import "os/exec"

// stopWithParent: only Linux has a parent-death signal.
func stopWithParent(*exec.Cmd) {}
