package cicap

import "syscall"

// procAttr puts c-icap in a process group of its own, and has the kernel
// stop it when the thread that started it ends, the test process's death
// included: no server is left behind.
func procAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
}

// groupAlive says whether a process of the group is still there.
func groupAlive(pgid int) bool { return syscall.Kill(-pgid, 0) == nil }

func killGroup(pgid int) { syscall.Kill(-pgid, syscall.SIGKILL) }
