package boltstore_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/meshca/meshca/ca/store"
	"github.com/meshca/meshca/ca/store/boltstore"
)

// manual keeps the checkpointer idle: checkpoints happen only when a test
// asks (boltstore.Checkpoint, PruneIssuances) and at Close.
var manual = boltstore.Options{CheckpointRecords: 1 << 30, CheckpointInterval: time.Hour}

// recordRange records serials from..to-1 (4 hex digits), one group commit
// each, issued an hour apart.
func recordRange(t testing.TB, s *boltstore.Store, from, to int) {
	t.Helper()
	for i := from; i < to; i++ {
		if err := s.RecordIssuance(context.Background(), rec(fmt.Sprintf("%04x", i), "spiffe://example.org/a", i, i+24)); err != nil {
			t.Fatalf("RecordIssuance(%d): %v", i, err)
		}
	}
}

func serialRange(from, to int) []string {
	var out []string
	for i := from; i < to; i++ {
		out = append(out, fmt.Sprintf("%04x", i))
	}
	return out
}

// checkRecords checks that s holds exactly want (in issuance order), each
// once, through every read.
func checkRecords(t testing.TB, s *boltstore.Store, want []string) {
	t.Helper()
	ctx := context.Background()
	for _, f := range []store.IssuanceFilter{{}, {SPIFFEID: "spiffe://example.org/a"}} {
		all, err := s.Issuances(ctx, f)
		if err != nil {
			t.Fatal(err)
		}
		if got := serials(all); !slices.Equal(got, want) && !(len(got) == 0 && len(want) == 0) {
			t.Fatalf("Issuances(%+v) = %v, want %v", f, got, want)
		}
	}
	for _, serial := range want {
		if _, err := s.Issuance(ctx, serial); err != nil {
			t.Fatalf("Issuance(%s): %v", serial, err)
		}
	}
}

// checkReplayed checks that a store just opened after a crash holds want,
// all in the data file, and an empty journal.
func checkReplayed(t *testing.T, s *boltstore.Store, path string, want []string) {
	t.Helper()
	checkRecords(t, s, want)
	if n := boltstore.Journaled(s); n != 0 {
		t.Errorf("%d records still journaled after Open", n)
	}
	if counts, n := boltstore.KeyCounts(s), len(want); counts != [4]int{n, n, n, n} {
		t.Errorf("data file keys %v, want %d each", counts, n)
	}
	if data := journalFrames(t, boltstore.JournalPath(path)); string(data) != boltstore.JournalHeader {
		t.Errorf("journal after Open: %q; want only the header", data)
	}
	if _, err := os.Stat(boltstore.JournalPath(path) + ".next"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s.next left after Open: %v", boltstore.JournalPath(path), err)
	}
}

// journalFrames reads the journal file at path and returns its header and
// frames, without the zeros reserved after them, which it checks are zeros.
func journalFrames(t *testing.T, path string) []byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	_, end, err := boltstore.DecodeJournal(data)
	if err != nil {
		t.Fatalf("journal %s: %v", path, err)
	}
	if i := bytes.IndexFunc(data[end:], func(r rune) bool { return r != 0 }); i >= 0 {
		t.Fatalf("journal %s: a byte that is not zero at %d, after its last frame at %d", path, end+i, end)
	}
	return data[:end]
}

func TestJournalPath(t *testing.T) {
	for in, want := range map[string]string{
		"/var/lib/meshca/meshca.db": "/var/lib/meshca/meshca.journal",
		"f.db":                      "f.journal",
		"data":                      "data.journal",
		"x.journal":                 "x.journal.journal",
	} {
		if got := boltstore.JournalPath(in); got != want {
			t.Errorf("JournalPath(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestRecordsJournaled: an acknowledged record is in the journal and
// readable before any checkpoint, and a checkpoint moves it to the data file
// without changing what reads return.
func TestRecordsJournaled(t *testing.T) {
	path := filepath.Join(t.TempDir(), "meshca.db")
	s := openWith(t, path, manual)
	recordRange(t, s, 0, 3)
	if n := boltstore.Journaled(s); n != 3 {
		t.Fatalf("%d records journaled, want 3", n)
	}
	if counts := boltstore.KeyCounts(s); counts != [4]int{} {
		t.Fatalf("data file keys %v before a checkpoint", counts)
	}
	data := journalFrames(t, boltstore.JournalPath(path))
	values, end, err := boltstore.DecodeJournal(data)
	if err != nil || end != len(data) || len(values) != 3 {
		t.Fatalf("journal holds %d records up to %d of %d bytes, %v", len(values), end, len(data), err)
	}
	fi, err := os.Stat(boltstore.JournalPath(path))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("journal mode: %v, %v; want 0600", fi.Mode(), err)
	}
	checkRecords(t, s, serialRange(0, 3))
	if err := boltstore.Checkpoint(s); err != nil {
		t.Fatal(err)
	}
	if n := boltstore.Journaled(s); n != 0 {
		t.Errorf("%d records journaled after a checkpoint", n)
	}
	if counts := boltstore.KeyCounts(s); counts != [4]int{3, 3, 3, 3} {
		t.Errorf("data file keys %v after a checkpoint, want 3 each", counts)
	}
	checkRecords(t, s, serialRange(0, 3))
	// The duplicate check sees both places.
	for _, serial := range []string{"0001"} {
		if err := s.RecordIssuance(context.Background(), rec(serial, "spiffe://example.org/a", 9, 10)); !errors.Is(err, boltstore.ErrDuplicate) {
			t.Errorf("duplicate of a checkpointed record: %v", err)
		}
	}
	recordRange(t, s, 3, 4)
	if err := s.RecordIssuance(context.Background(), rec("0003", "spiffe://example.org/a", 9, 10)); !errors.Is(err, boltstore.ErrDuplicate) {
		t.Errorf("duplicate of a journaled record: %v", err)
	}
}

// TestCloseEmptiesJournal: after Close the data file holds every record and
// the journal nothing, not even reserved space, so the data file alone is a
// complete copy and the journal is its header alone.
func TestCloseEmptiesJournal(t *testing.T) {
	for _, tt := range []struct {
		name string
		// before runs on the open store; it records n records.
		before func(t *testing.T, s *boltstore.Store)
		n      int
	}{
		{"records journaled", func(t *testing.T, s *boltstore.Store) { recordRange(t, s, 0, 5) }, 5},
		{"nothing recorded", func(*testing.T, *boltstore.Store) {}, 0},
		{"records checkpointed", func(t *testing.T, s *boltstore.Store) {
			recordRange(t, s, 0, 5)
			if err := boltstore.Checkpoint(s); err != nil {
				t.Fatal(err)
			}
		}, 5},
	} {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "meshca.db")
			s, err := boltstore.Open(path, manual)
			if err != nil {
				t.Fatal(err)
			}
			tt.before(t, s)
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			if data, err := os.ReadFile(boltstore.JournalPath(path)); err != nil || string(data) != boltstore.JournalHeader {
				t.Fatalf("journal after Close: %d bytes %.40q, %v; want the header alone", len(data), data, err)
			}
			// Without the journal, the data file still has everything.
			if err := os.Remove(boltstore.JournalPath(path)); err != nil {
				t.Fatal(err)
			}
			checkReplayed(t, open(t, path), path, serialRange(0, tt.n))
		})
	}
}

// TestCrashDuringCheckpoint stops a store as a killed process would after
// each step of a checkpoint, with records journaled before the checkpoint
// began and after it sealed the journal, and reopens it: every acknowledged
// record is there, once, in the data file.
func TestCrashDuringCheckpoint(t *testing.T) {
	for steps := 0; steps <= len(boltstore.CheckpointSteps); steps++ {
		name := "before any step"
		if steps > 0 {
			name = "after " + boltstore.CheckpointSteps[steps-1].Name
		}
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "meshca.db")
			s, err := boltstore.Open(path, manual)
			if err != nil {
				t.Fatal(err)
			}
			recordRange(t, s, 0, 10)
			for i, step := range boltstore.CheckpointSteps[:steps] {
				if err := step.Run(s); err != nil {
					t.Fatalf("%s: %v", step.Name, err)
				}
				// Records journaled while the checkpoint runs.
				recordRange(t, s, 10+2*i, 12+2*i)
			}
			want := serialRange(0, 10+2*steps)
			checkRecords(t, s, want)
			boltstore.Crash(s)

			var log bytes.Buffer
			s = openWith(t, path, boltstore.Options{Logger: slog.New(slog.NewTextHandler(&log, nil))})
			checkReplayed(t, s, path, want)
			if steps > 0 && !strings.Contains(log.String(), "replayed") {
				t.Errorf("replay not logged: %s", log.String())
			}
		})
	}
}

// TestCrashWhileCreatingJournal: a crash while the next journal file was
// being created leaves it empty, with part of its header, or with its
// header and some of the zeros after it (the header is synced first); it
// holds no record and is not an error.
func TestCrashWhileCreatingJournal(t *testing.T) {
	for _, next := range []string{"", "mesh", boltstore.JournalHeader, boltstore.JournalHeader + strings.Repeat("\x00", 8192)} {
		t.Run(fmt.Sprintf("%.24q, %d bytes", next, len(next)), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "meshca.db")
			s, err := boltstore.Open(path, manual)
			if err != nil {
				t.Fatal(err)
			}
			recordRange(t, s, 0, 3)
			boltstore.Crash(s)
			if err := os.WriteFile(boltstore.JournalPath(path)+".next", []byte(next), 0o600); err != nil {
				t.Fatal(err)
			}
			checkReplayed(t, open(t, path), path, serialRange(0, 3))
		})
	}
}

// crashedJournal returns a data file path whose store recorded serials
// 0000..n-1, one frame each, and was stopped as by a crash; and its journal
// contents up to the end of its last frame (without the zeros after it).
func crashedJournal(t *testing.T, n int) (string, []byte) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "meshca.db")
	s, err := boltstore.Open(path, manual)
	if err != nil {
		t.Fatal(err)
	}
	recordRange(t, s, 0, n)
	boltstore.Crash(s)
	return path, journalFrames(t, boltstore.JournalPath(path))
}

// TestTornTail: a journal that ends inside a frame (the write of a batch
// that no caller heard back about, cut by a crash) is replayed up to that
// frame; the rest is dropped with a warning.
func TestTornTail(t *testing.T) {
	_, whole := crashedJournal(t, 3)
	values, _, err := boltstore.DecodeJournal(whole)
	if err != nil || len(values) != 3 {
		t.Fatal(err)
	}
	lastFrame := len(whole) - len(boltstore.Frame(values[2]))
	zeros := func(b []byte, n int) []byte { return append(b, make([]byte, n)...) }
	tests := []struct {
		name string
		tail func([]byte) []byte // applied to the header and frames
		kept int
		// logged: the tail is not zeros alone, so replay says it
		// dropped a write interrupted by a crash.
		logged bool
	}{
		{"complete", func(b []byte) []byte { return b }, 3, false},
		{"complete, the reserved zeros after it", func(b []byte) []byte { return zeros(b, 1<<18) }, 3, false},
		{"one byte of the last frame", func(b []byte) []byte { return b[:lastFrame+1] }, 2, true},
		{"header of the last frame only", func(b []byte) []byte { return b[:lastFrame+12] }, 2, true},
		{"header of the last frame, then zeros", func(b []byte) []byte { return zeros(b[:lastFrame+12], 4096) }, 2, true},
		{"all but its last byte", func(b []byte) []byte { return b[:len(b)-1] }, 2, true},
		{"all but its last byte, then zeros", func(b []byte) []byte { return zeros(b[:len(b)-1], 1) }, 2, true},
		{"zeros in place of the last frame", func(b []byte) []byte { return zeros(b[:lastFrame], 4096) }, 2, false},
		{"last frame's payload damaged", func(b []byte) []byte { b[len(b)-5] ^= 1; return b }, 2, true},
		{"garbage appended", func(b []byte) []byte { return append(b, "\x00\x17garbage"...) }, 3, true},
		{"garbage after the zeros", func(b []byte) []byte { return append(zeros(b, 4096), "\x17"...) }, 3, true},
		{"start of a next frame", func(b []byte) []byte { return append(b, boltstore.Frame([]byte("{}"))[:7]...) }, 3, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path, data := crashedJournal(t, 3)
			if err := os.WriteFile(boltstore.JournalPath(path), tt.tail(data), 0o600); err != nil {
				t.Fatal(err)
			}
			var log bytes.Buffer
			s := openWith(t, path, boltstore.Options{Logger: slog.New(slog.NewTextHandler(&log, nil))})
			checkReplayed(t, s, path, serialRange(0, tt.kept))
			if torn := strings.Contains(log.String(), "interrupted by a crash"); torn != tt.logged {
				t.Errorf("torn tail logged = %v; log: %s", torn, log.String())
			}
		})
	}
}

// TestCorruptJournal: damage that a crash cannot cause (a bad frame
// followed by a good one, a foreign file, a checksummed record that does
// not parse, a record that contradicts the data file) keeps the store from
// opening, with an error naming the file and the offset; nothing is
// changed, so nothing is lost silently.
func TestCorruptJournal(t *testing.T) {
	const firstFrame = len(boltstore.JournalHeader)
	good := func(serial string) []byte {
		v, err := boltstore.AppendIssuance(ptr(rec(serial, "spiffe://example.org/a", 1, 2)))
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	tests := []struct {
		name string
		// journal returns the journal's contents from those of a
		// crashed store that recorded 0000..0002.
		journal func([]byte) []byte
		want    string
	}{
		{"damaged frame followed by a valid one", func(b []byte) []byte {
			b[firstFrame+20] ^= 0x40
			return b
		}, fmt.Sprintf("at offset %d: damaged record followed by a valid one", firstFrame)},
		{"damaged length followed by a valid frame", func(b []byte) []byte {
			b[firstFrame+4] = 0xff
			return b
		}, fmt.Sprintf("at offset %d: damaged record", firstFrame)},
		{"valid frame after reserved zeros", func(b []byte) []byte {
			return append(append(b, make([]byte, 4096)...), boltstore.Frame(good("0009"))...)
		}, "damaged record followed by a valid one at offset"},
		{"not a journal", func([]byte) []byte { return []byte("PK\x03\x04 something else entirely") }, "at offset 0: not a meshca journal"},
		{"a later version", func(b []byte) []byte { return append([]byte("meshca journal 2\n"), b[firstFrame:]...) }, "at offset 0"},
		{"checksummed record that is not JSON", func(b []byte) []byte {
			return append(b, boltstore.Frame([]byte("not json"))...)
		}, "record in the batch at offset"},
		{"checksummed record with a bad serial", func(b []byte) []byte {
			return append(b, boltstore.Frame(bytes.Replace(good("0009"), []byte(`"0009"`), []byte(`"ZZ"`), 1))...)
		}, "is not lowercase hex"},
		{"checksummed frame without newline", func(b []byte) []byte {
			return append(b, boltstore.RawFrame(good("0009"))...)
		}, "not newline-terminated"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path, data := crashedJournal(t, 3)
			corrupt := tt.journal(bytes.Clone(data))
			jpath := boltstore.JournalPath(path)
			if err := os.WriteFile(jpath, corrupt, 0o600); err != nil {
				t.Fatal(err)
			}
			s, err := boltstore.Open(path, boltstore.Options{})
			if err == nil {
				s.Close()
				t.Fatal("Open succeeded")
			}
			if !errors.Is(err, boltstore.ErrJournalCorrupt) || !strings.Contains(err.Error(), jpath) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Open: %v; want ErrJournalCorrupt naming %s and %q", err, jpath, tt.want)
			}
			if after, _ := os.ReadFile(jpath); !bytes.Equal(after, corrupt) {
				t.Error("the refused journal was changed")
			}
		})
	}
	t.Run("record contradicting the data file", func(t *testing.T) {
		path, data := crashedJournal(t, 3)
		s := openWith(t, path, manual) // 0000..0002 now in the data file
		s.Close()
		other := rec("0001", "spiffe://example.org/other", 1, 2)
		v, _ := boltstore.AppendIssuance(&other)
		if err := os.WriteFile(boltstore.JournalPath(path), append(data, boltstore.Frame(v)...), 0o600); err != nil {
			t.Fatal(err)
		}
		if s, err := boltstore.Open(path, boltstore.Options{}); err == nil || !strings.Contains(err.Error(), "serial 0001 is stored with another record") {
			if err == nil {
				s.Close()
			}
			t.Fatalf("Open: %v", err)
		}
	})
}

func ptr[T any](v T) *T { return &v }

// TestJournalLargerThanCheckpoint: many more records than one checkpoint
// holds, recorded concurrently with checkpoints running on their own, and a
// replay of more records than one transaction holds.
func TestJournalLargerThanCheckpoint(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "meshca.db")
	counter := new(commitCounter)
	s, err := boltstore.Open(path, boltstore.Options{CheckpointRecords: 100, CheckpointInterval: time.Hour, Metrics: counter})
	if err != nil {
		t.Fatal(err)
	}
	const n = 3000
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for i := w; i < n; i += 8 {
				if err := s.RecordIssuance(ctx, rec(fmt.Sprintf("%04x", i), "spiffe://example.org/a", i, i+24)); err != nil {
					t.Errorf("RecordIssuance: %v", err)
					return
				}
			}
		})
	}
	wg.Wait()
	if c := counter.checkpoints.Load(); c < 2 {
		t.Errorf("%d checkpoints for %d records, CheckpointRecords 100", c, n)
	}
	t.Logf("%d checkpoints stored %d records; %d journaled", counter.checkpoints.Load(), counter.checkpointed.Load(), boltstore.Journaled(s))
	checkRecords(t, s, serialRange(0, n))
	boltstore.Crash(s)
	checkReplayed(t, open(t, path), path, serialRange(0, n))

	// A replay of more records than one transaction takes.
	path = filepath.Join(t.TempDir(), "meshca.db")
	s, err = boltstore.Open(path, manual)
	if err != nil {
		t.Fatal(err)
	}
	const big = 25000
	recs := make([]store.Issuance, big)
	for i := range recs {
		recs[i] = rec(fmt.Sprintf("%05x", i), "spiffe://example.org/a", i, i+24)
	}
	for i := 0; i < big; i += 1000 {
		for _, err := range boltstore.CommitBatch(s, recs[i:i+1000], nil) {
			if err != nil {
				t.Fatal(err)
			}
		}
	}
	boltstore.Crash(s)
	s = open(t, path)
	if counts := boltstore.KeyCounts(s); counts != [4]int{big, big, big, big} {
		t.Fatalf("data file keys after replaying %d records: %v", big, counts)
	}
}

// TestCheckpointFillsAppendedPages: checkpoints of time-ordered records
// leave the pages of the buckets they append to (the serials, the IssuedAt
// index) nearly full, not half full as bbolt splits pages by default.
func TestCheckpointFillsAppendedPages(t *testing.T) {
	s := openWith(t, filepath.Join(t.TempDir(), "meshca.db"), manual)
	n := 0
	for range 5 {
		recs := make([]store.Issuance, 2000)
		for i := range recs {
			n++
			recs[i] = rec(fmt.Sprintf("%012x%020x", 0x19a00000000+uint64(n), uint64(n)*0x9e3779b97f4a7c15),
				fmt.Sprintf("spiffe://example.org/ns/default/sa/w%d", n%50), n/100, 24+n/100)
		}
		for _, err := range boltstore.CommitBatch(s, recs, nil) {
			if err != nil {
				t.Fatal(err)
			}
		}
		if err := boltstore.Checkpoint(s); err != nil {
			t.Fatal(err)
		}
	}
	fill := boltstore.LeafFill(s)
	for i, name := range []string{"issuances", "", "by IssuedAt"} {
		if name != "" && fill[i] < 0.85 {
			t.Errorf("%s: leaf pages %.0f %% full, want at least 85 %%", name, 100*fill[i])
		}
	}
	t.Logf("leaf pages full: %.0f %% (serials), %.0f %% (NotAfter), %.0f %% (IssuedAt), %.0f %% (SPIFFE ID)", 100*fill[0], 100*fill[1], 100*fill[2], 100*fill[3])
}

// TestReadsDuringCheckpoints: readers running beside writers and frequent
// checkpoints always find every record acknowledged before they started,
// once each, in order.
func TestReadsDuringCheckpoints(t *testing.T) {
	ctx := context.Background()
	s := openWith(t, "", boltstore.Options{CheckpointRecords: 50, CheckpointInterval: 5 * time.Millisecond})
	var acked atomic.Int64 // records 0..acked-1 are all acknowledged
	var mu sync.Mutex
	done := map[int]bool{}
	stop := make(chan struct{})
	var writers, readers sync.WaitGroup
	var next atomic.Int64
	for range 4 {
		writers.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= 1000 {
					return
				}
				if err := s.RecordIssuance(ctx, rec(fmt.Sprintf("%04x", i), "spiffe://example.org/a", i, i+24)); err != nil {
					t.Errorf("RecordIssuance: %v", err)
					return
				}
				mu.Lock()
				done[i] = true
				for done[int(acked.Load())] {
					acked.Add(1)
				}
				mu.Unlock()
			}
		})
	}
	for r := range 3 {
		readers.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				before := int(acked.Load())
				from := max(0, before-50) // a window keeps each read short
				switch r {
				case 0, 1:
					f := store.IssuanceFilter{IssuedSince: t0.Add(time.Duration(from) * time.Hour)}
					if r == 1 {
						f.SPIFFEID = "spiffe://example.org/a"
					}
					all, err := s.Issuances(ctx, f)
					if err != nil {
						t.Errorf("Issuances: %v", err)
						return
					}
					got := serials(all)
					if !slices.IsSorted(got) || len(slices.Compact(slices.Clone(got))) != len(got) {
						t.Errorf("Issuances not in order or with duplicates: %v", got)
						return
					}
					if want := serialRange(from, before); len(got) < len(want) || !slices.Equal(got[:len(want)], want) {
						t.Errorf("Issuances since %d missed records acknowledged before it started (up to %d): got %v", from, before, got)
						return
					}
				case 2:
					for i := from; i < before; i++ {
						if _, err := s.Issuance(ctx, fmt.Sprintf("%04x", i)); err != nil {
							t.Errorf("Issuance(%04x) acknowledged before: %v", i, err)
							return
						}
					}
				}
			}
		})
	}
	writers.Wait()
	close(stop)
	readers.Wait()
	checkRecords(t, s, serialRange(0, 1000))
}

// TestPruneJournaled: records still in the journal are pruned like the
// others, and do not come back from the journal after a crash.
func TestPruneJournaled(t *testing.T) {
	path := filepath.Join(t.TempDir(), "meshca.db")
	s, err := boltstore.Open(path, manual)
	if err != nil {
		t.Fatal(err)
	}
	recordRange(t, s, 0, 10) // NotAfter t0 + (i+24) h
	n, err := s.PruneIssuances(context.Background(), t0.Add(29*time.Hour+time.Minute))
	if err != nil || n != 6 {
		t.Fatalf("PruneIssuances = %d, %v; want 6", n, err)
	}
	checkRecords(t, s, serialRange(6, 10))
	boltstore.Crash(s)
	s = open(t, path)
	checkReplayed(t, s, path, serialRange(6, 10))
	if !reflect.DeepEqual(boltstore.KeyCounts(s), [4]int{4, 4, 4, 4}) {
		t.Error("keys")
	}
}

func TestPreallocFor(t *testing.T) {
	const kib, mib = 1 << 10, 1 << 20
	for _, tt := range []struct {
		name       string
		used, want int64
	}{
		{"nothing", 0, 256 * kib},
		{"a few records", 5 * kib, 256 * kib},
		{"exactly the minimum", 256 * kib, 512 * kib},
		{"a checkpoint's worth", 8 * mib, 10 * mib},
		{"a quarter more, rounded up", 9 * mib, 11*mib + 256*kib},
		{"near the cap", 60 * mib, 64 * mib},
		{"far past the cap", 1 << 40, 64 * mib},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := boltstore.PreallocFor(tt.used); got != tt.want {
				t.Errorf("PreallocFor(%d) = %d, want %d", tt.used, got, tt.want)
			}
		})
	}
}

// TestJournalSpaceReserved: a journal file is created with its space
// written as zeros, records overwrite them without growing the file, and
// the next file gets the space the last one took.
func TestJournalSpaceReserved(t *testing.T) {
	path := filepath.Join(t.TempDir(), "meshca.db")
	jpath := boltstore.JournalPath(path)
	s, err := boltstore.Open(path, manual)
	if err != nil {
		t.Fatal(err)
	}
	size := func() int64 {
		t.Helper()
		fi, err := os.Stat(jpath)
		if err != nil {
			t.Fatal(err)
		}
		return fi.Size()
	}
	if got := size(); got != boltstore.MinPrealloc {
		t.Fatalf("journal after Open: %d bytes, want %d", got, boltstore.MinPrealloc)
	}
	recordRange(t, s, 0, 3)
	if got := size(); got != boltstore.MinPrealloc {
		t.Errorf("journal grew to %d bytes for 3 records within its reserved %d", got, boltstore.MinPrealloc)
	}
	if vals, _, _ := boltstore.DecodeJournal(journalFrames(t, jpath)); len(vals) != 3 {
		t.Fatalf("journal holds %d records, want 3", len(vals))
	}
	// More than the reserved space: the file grows past it.
	big := 2 * boltstore.MinPrealloc
	recordRange(t, s, 3, 3+int(big)/256)
	used := int64(len(journalFrames(t, jpath)))
	if used <= boltstore.MinPrealloc || size() != used {
		t.Fatalf("journal of %d bytes holding %d of frames; want it grown to its frames", size(), used)
	}
	if err := boltstore.Checkpoint(s); err != nil {
		t.Fatal(err)
	}
	if got, want := size(), boltstore.PreallocFor(used); got != want {
		t.Errorf("journal after a checkpoint: %d bytes, want %d after one of %d", got, want, used)
	}

	recordRange(t, s, 3+int(big)/256, 5+int(big)/256)
	boltstore.Crash(s)
	checkReplayed(t, open(t, path), path, serialRange(0, 5+int(big)/256))
}

// TestJournalReserveFails: a journal file whose space cannot be written or
// synced (the disk is full) is left with its header alone, and a warning; a
// store then appends to it, as past the end of its reserved space
// (TestJournalSpaceReserved).
func TestJournalReserveFails(t *testing.T) {
	for _, tt := range []struct {
		name    string
		fill    func(*os.File, int64, int64) error
		size    int64
		warning bool
	}{
		{"reserved", nil, 1 << 20, false},
		{"disk full", func(*os.File, int64, int64) error { return syscall.ENOSPC }, int64(len(boltstore.JournalHeader)), true},
		{"disk full halfway", func(f *os.File, off, end int64) error {
			if _, err := f.WriteAt(make([]byte, (end-off)/2), off); err != nil {
				return err
			}
			return syscall.ENOSPC
		}, int64(len(boltstore.JournalHeader)), true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var log bytes.Buffer
			path := filepath.Join(t.TempDir(), "meshca.journal")
			f, err := boltstore.CreateJournal(path, 1<<20, tt.fill, slog.New(slog.NewTextHandler(&log, nil)))
			if err != nil {
				t.Fatalf("CreateJournal: %v", err)
			}
			f.Close()
			data, err := os.ReadFile(path)
			if err != nil || int64(len(data)) != tt.size || string(journalFrames(t, path)) != boltstore.JournalHeader {
				t.Fatalf("journal of %d bytes (%v); want %d, its header and zeros", len(data), err, tt.size)
			}
			if warned := strings.Contains(log.String(), "could not reserve space"); warned != tt.warning {
				t.Errorf("warning logged = %v, want %v: %s", warned, tt.warning, log.String())
			}
		})
	}
}
