package boltstore_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/meshca/meshca/ca/store"
	"github.com/meshca/meshca/ca/store/boltstore"
	"github.com/meshca/meshca/internal/storetest"
)

// commitCounter is a boltstore.Metrics counting group commits and
// checkpoints, and the records they wrote.
type commitCounter struct{ commits, records, checkpoints, checkpointed atomic.Int64 }

func (c *commitCounter) Committed(records int, _ time.Duration) {
	c.commits.Add(1)
	c.records.Add(int64(records))
}

func (c *commitCounter) Checkpointed(records int, _ time.Duration) {
	c.checkpoints.Add(1)
	c.checkpointed.Add(int64(records))
}

// openCounting is open with a commitCounter observing the store.
func openCounting(t testing.TB, path string) (*boltstore.Store, *commitCounter) {
	t.Helper()
	c := new(commitCounter)
	return openWith(t, path, boltstore.Options{Metrics: c}), c
}

// TestBatchErrorsPerRecord checks that records that cannot be written do not
// fail the others written in the same transaction.
func TestBatchErrorsPerRecord(t *testing.T) {
	ctx := context.Background()
	s, counter := openCounting(t, "")
	const id = "spiffe://example.org/a"
	if err := s.RecordIssuance(ctx, rec("01", id, 1, 2)); err != nil {
		t.Fatal(err)
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	commits, records := counter.commits.Load(), counter.records.Load()
	errs := boltstore.CommitBatch(s,
		[]store.Issuance{rec("02", id, 2, 3), rec("01", id, 3, 4), rec("03", id, 4, 5), rec("02", id, 5, 6), rec("04", id, 6, 7)},
		[]context.Context{4: cancelled})
	if n := counter.commits.Load() - commits; n != 1 {
		t.Errorf("batch written in %d commits, want 1", n)
	}
	if n := counter.records.Load() - records; n != 2 {
		t.Errorf("commit reported %d records written, want 2", n)
	}
	want := []error{nil, boltstore.ErrDuplicate, nil, boltstore.ErrDuplicate, context.Canceled}
	for i := range want {
		if want[i] == nil && errs[i] != nil || !errors.Is(errs[i], want[i]) {
			t.Errorf("record %d: got %v, want %v", i, errs[i], want[i])
		}
	}
	all, err := s.Issuances(ctx, store.IssuanceFilter{})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := serials(all), []string{"01", "02", "03"}; !reflect.DeepEqual(got, want) {
		t.Errorf("stored %v, want %v", got, want)
	}
	// The duplicate of 02 did not overwrite it.
	if r, _ := s.Issuance(ctx, "02"); r == nil || !r.IssuedAt.Equal(t0.Add(2*time.Hour)) {
		t.Errorf("record 02 = %+v, want the first one written", r)
	}
}

func TestConcurrentRecordIssuance(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "meshca.db")
	s, counter := openCounting(t, path)
	const n = 200
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			<-start
			if err := s.RecordIssuance(ctx, rec(fmt.Sprintf("%032x", i), "spiffe://example.org/a", i, i+1)); err != nil {
				t.Errorf("RecordIssuance: %v", err)
			}
		})
	}
	close(start)
	wg.Wait()
	commits := counter.commits.Load()
	t.Logf("%d records in %d commits", n, commits)
	if commits >= n {
		t.Errorf("%d records took %d commits: not grouped", n, commits)
	}
	if got := counter.records.Load(); got != n {
		t.Errorf("commits reported %d records written, want %d", got, n)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = open(t, path)
	got, err := s.Issuances(ctx, store.IssuanceFilter{})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != n {
		t.Errorf("%d records durable after reopening, want %d", len(got), n)
	}
}

func TestCloseWithPendingRecords(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "meshca.db")
	baseline := runtime.NumGoroutine()
	s, err := boltstore.Open(path, boltstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	var ok sync.Map
	var wg sync.WaitGroup
	for i := range 100 {
		wg.Go(func() {
			serial := fmt.Sprintf("%032x", i)
			switch err := s.RecordIssuance(ctx, rec(serial, "spiffe://example.org/a", 1, 2)); {
			case err == nil:
				ok.Store(serial, true)
			case !errors.Is(err, boltstore.ErrClosed):
				t.Errorf("RecordIssuance racing Close: %v", err)
			}
		})
	}
	time.Sleep(time.Millisecond)
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	wg.Wait()
	// The committer is gone.
	for deadline := time.Now().Add(5 * time.Second); runtime.NumGoroutine() > baseline; {
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines after Close, %d before Open", runtime.NumGoroutine(), baseline)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Every record reported written was.
	s = open(t, path)
	for serial := range ok.Range {
		if _, err := s.Issuance(ctx, serial.(string)); err != nil {
			t.Errorf("record %s reported written: %v", serial, err)
		}
	}
}

// BenchmarkRecordIssuance measures the request path: records journaled,
// no checkpoint (BenchmarkCheckpoint measures those).
func BenchmarkRecordIssuance(b *testing.B) {
	bench := func(b *testing.B, run func(b *testing.B, s *boltstore.Store, next func() store.Issuance)) {
		s, counter := openCounting(b, "")
		var n atomic.Uint64
		next := func() store.Issuance {
			i := n.Add(1)
			return rec(fmt.Sprintf("%032x", i), "spiffe://example.org/workload", int(i%1000), 1000+int(i%1000))
		}
		before := counter.commits.Load()
		b.ResetTimer()
		start := cpuTime(b)
		run(b, s, next)
		b.StopTimer()
		b.ReportMetric(float64(cpuTime(b)-start)/float64(b.N), "cpu-ns/op")
		b.ReportMetric(float64(counter.commits.Load()-before)/float64(b.N), "commits/op")
	}
	b.Run("sequential", func(b *testing.B) {
		bench(b, func(b *testing.B, s *boltstore.Store, next func() store.Issuance) {
			ctx := context.Background()
			for range b.N {
				if err := s.RecordIssuance(ctx, next()); err != nil {
					b.Fatal(err)
				}
			}
		})
	})
	b.Run("parallel", func(b *testing.B) {
		// CA requests wait on the disk, not the CPU: model many of them.
		b.SetParallelism(32)
		bench(b, func(b *testing.B, s *boltstore.Store, next func() store.Issuance) {
			ctx := context.Background()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if err := s.RecordIssuance(ctx, next()); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	})
}

// cpuTime is the process's user+system CPU time so far.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkCheckpoint measures what a checkpoint costs per record: 8192
// journaled records (500 identities) copied into a data file that already
// holds tree records. Only the checkpoints are timed. Serials are random,
// or ordered as the CA makes them (a time prefix, then random bits), which
// turns the primary bucket's inserts into appends.
func BenchmarkCheckpoint(b *testing.B) {
	const batch = 8192
	serials := map[string]func(n int) string{
		"random": func(n int) string { return fmt.Sprintf("%032x", uint64(n)*0x9e3779b97f4a7c15) },
		"ordered": func(n int) string {
			return fmt.Sprintf("%012x%020x", 0x19a00000000+uint64(n), uint64(n)*0x9e3779b97f4a7c15)
		},
	}
	for _, kind := range []string{"random", "ordered"} {
		for _, tree := range []int{0, 100000} {
			benchCheckpoint(b, kind, serials[kind], tree, batch)
		}
	}
}

func benchCheckpoint(b *testing.B, kind string, serial func(int) string, tree, batch int) {
	b.Run(fmt.Sprintf("serials=%s/tree=%d", kind, tree), func(b *testing.B) {
		s := openWith(b, "", manual)
		n := 0
		journal := func(count int) {
			for count > 0 {
				recs := make([]store.Issuance, min(count, 1000))
				for i := range recs {
					n++
					recs[i] = rec(serial(n), fmt.Sprintf("spiffe://example.org/ns/default/sa/w%d", n%500), n/100, 24+n/100)
				}
				for _, err := range boltstore.CommitBatch(s, recs, nil) {
					if err != nil {
						b.Fatal(err)
					}
				}
				count -= len(recs)
			}
		}
		for n < tree {
			journal(batch)
			if err := boltstore.Checkpoint(s); err != nil {
				b.Fatal(err)
			}
		}
		var wall, cpu time.Duration
		for b.Loop() {
			b.StopTimer()
			journal(batch)
			b.StartTimer()
			start, startCPU := time.Now(), cpuTime(b)
			if err := boltstore.Checkpoint(s); err != nil {
				b.Fatal(err)
			}
			wall, cpu = wall+time.Since(start), cpu+cpuTime(b)-startCPU
		}
		b.ReportMetric(float64(wall)/float64(b.N*batch), "ns/record")
		b.ReportMetric(float64(cpu)/float64(b.N*batch), "cpu-ns/record")
	})
}

// TestLoneCallerNotDelayed: group commit waits for company only while the
// process is CPU-bound, so a lone call is written at once even with a
// CommitDelay of an hour (the call would otherwise hit its deadline).
func TestLoneCallerNotDelayed(t *testing.T) {
	counter := new(commitCounter)
	s := openWith(t, "", boltstore.Options{CommitDelay: time.Hour, Metrics: counter})
	for i := range 3 {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		err := s.RecordIssuance(ctx, rec(fmt.Sprintf("%02x", i), "spiffe://example.org/a", i, i+1))
		cancel()
		if err != nil {
			t.Fatalf("lone RecordIssuance: %v", err)
		}
	}
	if n := counter.commits.Load(); n != 3 {
		t.Errorf("3 lone calls in %d commits", n)
	}
}

// TestDuplicateSerials: the committer reads the data file only for serials
// at or below the largest one stored there, and still refuses every serial
// recorded before, wherever it is: in the data file (checkpointed, or
// recorded by RecordIssuanceOnce), in the journal, on the same store, after
// reopening or after a crash.
func TestDuplicateSerials(t *testing.T) {
	ctx := context.Background()
	const id = "spiffe://example.org/a"
	tests := []struct {
		name   string
		serial string
		dup    bool
	}{
		{"checkpointed, below the bound", "05", true},
		{"checkpointed, the bound", "09", true},
		{"recorded once, the bound", "0a", true},
		{"journaled, above the bound", "0c", true},
		{"new, below the bound", "07", false},
		{"new, above everything", "0d", false},
	}
	for _, phase := range []struct {
		name  string
		bound string // after setup and phase
		next  func(t *testing.T, s *boltstore.Store, path string) *boltstore.Store
	}{
		{"same store", "0a", func(_ *testing.T, s *boltstore.Store, _ string) *boltstore.Store { return s }},
		{"reopened", "0c", func(t *testing.T, s *boltstore.Store, path string) *boltstore.Store {
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			return openWith(t, path, manual)
		}},
		{"crashed", "0c", func(t *testing.T, s *boltstore.Store, path string) *boltstore.Store {
			boltstore.Crash(s)
			return openWith(t, path, manual)
		}},
	} {
		t.Run(phase.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "meshca.db")
			s := openWith(t, path, manual)
			if got := boltstore.MaxIssued(s); got != "" {
				t.Errorf("bound of a new store %q, want none", got)
			}
			record := func(serial string) error { return s.RecordIssuance(ctx, rec(serial, id, 1, 2)) }
			for _, serial := range []string{"05", "09"} {
				if err := record(serial); err != nil {
					t.Fatal(err)
				}
			}
			if err := boltstore.Checkpoint(s); err != nil {
				t.Fatal(err)
			}
			if err := s.RecordIssuanceOnce(ctx, rec("0a", id, 1, 2), storetest.Answer("req", "0a")); err != nil {
				t.Fatal(err)
			}
			if err := record("0c"); err != nil {
				t.Fatal(err)
			}
			s = phase.next(t, s, path)
			if got := boltstore.MaxIssued(s); got != phase.bound {
				t.Errorf("bound %q, want %q", got, phase.bound)
			}
			for _, tt := range tests {
				t.Run(tt.name, func(t *testing.T) {
					err := record(tt.serial)
					if tt.dup != errors.Is(err, boltstore.ErrDuplicate) || !tt.dup && err != nil {
						t.Errorf("RecordIssuance(%s): %v, want duplicate: %v", tt.serial, err, tt.dup)
					}
				})
			}
			// Pruning never lowers the bound.
			if err := boltstore.Checkpoint(s); err != nil {
				t.Fatal(err)
			}
			if got := boltstore.MaxIssued(s); got != "0d" {
				t.Errorf("bound %q after a checkpoint, want 0d", got)
			}
			before := boltstore.MaxIssued(s)
			if n, err := s.PruneIssuances(ctx, t0.Add(100*time.Hour)); err != nil || n != 6 {
				t.Fatalf("PruneIssuances: %d, %v", n, err)
			}
			if got := boltstore.MaxIssued(s); got != before {
				t.Errorf("bound %q after pruning, was %q", got, before)
			}
		})
	}
}

// TestDuplicatesDuringCheckpoints: a serial recorded again while
// checkpoints move the first record from the journal to the data file is
// refused every time.
func TestDuplicatesDuringCheckpoints(t *testing.T) {
	ctx := context.Background()
	s := openWith(t, "", boltstore.Options{CheckpointRecords: 4, CheckpointInterval: time.Millisecond})
	var next atomic.Int64
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for {
				i := next.Add(1)
				if i > 300 {
					return
				}
				// Time-ordered, so above the bound when first recorded.
				r := rec(fmt.Sprintf("%012x%04x", 0x19a00000000+i, i), "spiffe://example.org/a", 1, 2)
				if err := s.RecordIssuance(ctx, r); err != nil {
					t.Errorf("RecordIssuance(%s): %v", r.Serial, err)
					return
				}
				for range 2 {
					if err := s.RecordIssuance(ctx, r); !errors.Is(err, boltstore.ErrDuplicate) {
						t.Errorf("RecordIssuance(%s) again: %v, want a duplicate", r.Serial, err)
						return
					}
				}
			}
		})
	}
	wg.Wait()
	// Counted once every record is in the data file: while a checkpoint
	// runs, a record is in both for a moment.
	if err := boltstore.Checkpoint(s); err != nil {
		t.Fatal(err)
	}
	if counts := boltstore.KeyCounts(s); counts[0] != 300 || boltstore.Journaled(s) != 0 {
		t.Errorf("%d records stored and %d journaled, want 300 and 0", counts[0], boltstore.Journaled(s))
	}
}

// BenchmarkFrameSync measures one group commit's write and fdatasync of a
// 16 KiB frame on the disk under the test's temporary directory: appended
// to a file that grows (the journal without reserved space), or written
// over zeros the file already has (the journal's reserved space, see
// minPrealloc). cpu-ns/op is this process's CPU; the work the
// filesystem does in its own threads is not counted.
func BenchmarkFrameSync(b *testing.B) {
	frame := bytes.Repeat([]byte{'x'}, 16<<10)
	for _, reserved := range []bool{false, true} {
		b.Run(fmt.Sprintf("reserved=%v", reserved), func(b *testing.B) {
			f, err := os.OpenFile(filepath.Join(b.TempDir(), "frames"), os.O_RDWR|os.O_CREATE, 0o600)
			if err != nil {
				b.Fatal(err)
			}
			defer f.Close()
			const span = 64 << 20 // then start over at 0, in a file of this size
			if reserved {
				if _, err := f.Write(make([]byte, span)); err != nil {
					b.Fatal(err)
				}
				if err := f.Sync(); err != nil {
					b.Fatal(err)
				}
			}
			var off int64
			start := cpuTime(b)
			for b.Loop() {
				if off+int64(len(frame)) > span {
					b.StopTimer()
					off = 0
					if !reserved {
						if err := f.Truncate(0); err != nil {
							b.Fatal(err)
						}
					}
					b.StartTimer()
				}
				if _, err := f.WriteAt(frame, off); err != nil {
					b.Fatal(err)
				}
				if err := boltstore.Fdatasync(f); err != nil {
					b.Fatal(err)
				}
				off += int64(len(frame))
			}
			b.ReportMetric(float64(cpuTime(b)-start)/float64(b.N), "cpu-ns/op")
		})
	}
}
