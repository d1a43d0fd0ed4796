package pgenv

import "syscall"

// sysProcAttr runs a child as cred (nil: as this process) and makes the
// kernel kill it when the test binary dies, so that a crashed or killed
// test run leaves no postmaster behind (its backends exit with it).
func sysProcAttr(cred *syscall.Credential) *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Credential: cred, Pdeathsig: syscall.SIGKILL}
}
