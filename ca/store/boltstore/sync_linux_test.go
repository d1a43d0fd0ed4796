package boltstore_test

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/meshca/meshca/ca/store/boltstore"
)

// BenchmarkFrameSyncDirect compares, in one run, the journal's way of
// making a frame durable (a write through the page cache, then
// fdatasync) with a direct, synchronous write (O_DIRECT|O_DSYNC: no page
// cache, the whole 4 KiB blocks the frame touches rewritten), both into a
// file of zeros as the journal reserves, for a lone record's frame and a
// loaded commit's. It is what "mTLS renewal" in BENCHMARKS.md cites for
// not writing the journal directly.
func BenchmarkFrameSyncDirect(b *testing.B) {
	const span = 64 << 20 // then start over at 0, in a file of this size
	path := filepath.Join(b.TempDir(), "frames")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		b.Fatal(err)
	}
	if _, err = f.Write(make([]byte, span)); err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		b.Fatal(err)
	}
	for _, size := range []int{1500, 16 << 10} {
		for _, direct := range []bool{false, true} {
			b.Run(fmt.Sprintf("frame=%d/direct=%v", size, direct), func(b *testing.B) {
				flags := os.O_RDWR
				if direct {
					flags |= unix.O_DIRECT | unix.O_DSYNC
				}
				f, err := os.OpenFile(path, flags, 0o600)
				if err != nil {
					b.Skipf("open with O_DIRECT: %v", err)
				}
				defer f.Close()
				buf := alignedBlocks(size + 2*4096)
				var off int64
				start := cpuTime(b)
				for b.Loop() {
					if off+int64(size)+4096 > span {
						off = 0
					}
					if direct {
						first, end := off&^4095, (off+int64(size)+4095)&^4095
						_, err = f.WriteAt(buf[:end-first], first)
					} else if _, err = f.WriteAt(buf[:size], off); err == nil {
						err = boltstore.Fdatasync(f)
					}
					if err != nil {
						b.Fatal(err)
					}
					off += int64(size)
				}
				b.ReportMetric(float64(cpuTime(b)-start)/float64(b.N), "cpu-ns/op")
			})
		}
	}
}

// alignedBlocks returns n bytes starting on a 4 KiB boundary, as O_DIRECT
// needs.
func alignedBlocks(n int) []byte {
	b := make([]byte, n+4096)
	skip := (4096 - int(uintptr(unsafe.Pointer(&b[0]))%4096)) % 4096
	return b[skip : skip+n]
}
