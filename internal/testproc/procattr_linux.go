package testproc

import "syscall"

// sysProcAttr makes the kernel kill the child when the test binary dies, so
// that a crashed or killed test run leaves no apiserver or etcd behind.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
