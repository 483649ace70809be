//go:build !linux

package cicap

import "syscall"

// c-icap is run on Linux only: elsewhere the instance is its one process.
func procAttr() *syscall.SysProcAttr { return nil }

func groupAlive(int) bool { return false }

func killGroup(int) {}
