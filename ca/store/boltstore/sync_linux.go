package boltstore

import (
	"os"
	"syscall"
)

// fdatasync flushes f's data, and only the metadata needed to read it back
// (its size), to stable storage.
func fdatasync(f *os.File) error {
	return syscall.Fdatasync(int(f.Fd())) //nolint:gosec // G115: a file descriptor fits an int
}
