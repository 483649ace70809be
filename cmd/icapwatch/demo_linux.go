package main

import (
	"os/exec"
	"syscall"
)

// stopWithParent has the kernel send the process SIGTERM when the demo
// dies, SIGKILL included, so that no application outlives it.
func stopWithParent(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
}
