package boltstore

import (
	"context"
	"log/slog"
	"maps"
	"os"
	"slices"

	"github.com/meshca/meshca/ca/store"
	bolt "go.etcd.io/bbolt"
)

var ErrDuplicate = errDuplicate

// CommitBatch writes recs as one group commit, as the committer would had
// they been queued together, and returns each record's outcome. ctxs[i], if
// set, is record i's context.
func CommitBatch(s *Store, recs []store.Issuance, ctxs []context.Context) []error {
	batch := make([]*pending, len(recs))
	for i := range recs {
		ctx := context.Background()
		if i < len(ctxs) && ctxs[i] != nil {
			ctx = ctxs[i]
		}
		p, err := newPending(ctx, &recs[i])
		if err != nil {
			panic(err)
		}
		batch[i] = p
	}
	s.commit(batch)
	errs := make([]error, len(batch))
	for i, p := range batch {
		errs[i] = <-p.reply
	}
	return errs
}

// KeyCounts returns the number of keys in each issuance bucket of the data
// file: records, and the NotAfter, IssuedAt and SPIFFE ID indexes.
func KeyCounts(s *Store) (counts [4]int) {
	err := s.db.View(func(tx *bolt.Tx) error {
		for i, name := range [][]byte{bucketIssuances, bucketByNotAfter, bucketByIssuedAt, bucketBySPIFFEID} {
			counts[i] = tx.Bucket(name).Stats().KeyN
		}
		return nil
	})
	if err != nil {
		panic(err)
	}
	return counts
}

// LeafFill returns, for the issuance log's buckets in KeyCounts' order, how
// full their leaf pages are (bytes in use over the pages' size).
func LeafFill(s *Store) (fill [4]float64) {
	err := s.db.View(func(tx *bolt.Tx) error {
		for i, name := range [][]byte{bucketIssuances, bucketByNotAfter, bucketByIssuedAt, bucketBySPIFFEID} {
			st := tx.Bucket(name).Stats()
			fill[i] = float64(st.LeafInuse) / float64(st.LeafAlloc)
		}
		return nil
	})
	if err != nil {
		panic(err)
	}
	return fill
}

// Journaled returns how many records are journaled and not yet in the data
// file.
func Journaled(s *Store) int { return s.journaled() }

// Checkpoint has every journaled record checkpointed, as PruneIssuances
// does.
func Checkpoint(s *Store) error { return s.requestCheckpoint(context.Background()) }

// Crash stops s as a killed process would: no checkpoint, no journal reset;
// the files are left as they are and their lock released. Each step of
// CheckpointSteps, done before, is where a checkpoint stopped.
func Crash(s *Store) {
	s.closeOnce.Do(func() {
		s.closed.Store(true)
		close(s.done)
		<-s.stopped
		<-s.ckptStopped
		_ = s.active.f.Close()
		if s.sealed != nil {
			_ = s.sealed.f.Close()
		}
		_ = s.db.Close()
	})
}

// CheckpointSteps are the steps of a checkpoint, to run one by one before
// Crash. They must not run while the checkpointer does (a large
// CheckpointRecords and CheckpointInterval keep it idle).
var CheckpointSteps = []struct {
	Name string
	Run  func(*Store) error
}{
	{"seal", (*Store).seal},
	{"store", func(s *Store) error { _, err := s.storeSealed(); return err }},
	{"retire", (*Store).retire},
}

// Frame returns a journal frame holding values, as the committer writes
// them (each value followed by a newline).
func Frame(values ...[]byte) []byte {
	var payload []byte
	for _, v := range values {
		payload = append(append(payload, v...), '\n')
	}
	return RawFrame(payload)
}

// RawFrame returns a valid frame around payload, whatever it holds.
func RawFrame(payload []byte) []byte {
	b := append(beginFrame(nil), payload...)
	endFrame(b, 0)
	return b
}

// MinPrealloc is the space a journal gets at Open.
const MinPrealloc = minPrealloc

// PreallocFor is the space a journal gets after one that took used bytes.
func PreallocFor(used int64) int64 { return preallocFor(used) }

// CreateJournal creates a journal file of prealloc bytes as a store does,
// with fill in place of the function that writes the zeros (nil: the
// store's).
func CreateJournal(path string, prealloc int64, fill func(f *os.File, off, end int64) error, log *slog.Logger) (*os.File, error) {
	if fill == nil {
		fill = fillZeros
	}
	return createJournal(path, prealloc, fill, log)
}

// Fdatasync is the journal's fdatasync.
func Fdatasync(f *os.File) error { return fdatasync(f) }

// JournalHeader starts every journal file.
const JournalHeader = journalHeader

// DecodeJournal decodes a journal file's contents: the records' JSON, and
// where the valid frames end.
func DecodeJournal(data []byte) ([][]byte, int, error) {
	raw, end, err := decodeJournal(data)
	values := make([][]byte, len(raw))
	for i, r := range raw {
		values[i] = r.value
	}
	return values, end, err
}

// ParseRecord checks a journaled record as a replay does.
func ParseRecord(value []byte) error {
	_, err := parseRecord(value)
	return err
}

// AppendIssuance is the committer's JSON encoding of rec.
func AppendIssuance(rec *store.Issuance) ([]byte, error) { return store.AppendIssuanceJSON(nil, rec) }

// MaxIssued is the store's upper bound of the serials in the data file (""
// if none was ever stored).
func MaxIssued(s *Store) string {
	if p := s.maxIssued.Load(); p != nil {
		return *p
	}
	return ""
}

// DeniedKeys returns the deny-list's keys the store holds in memory, and
// those read afresh from its data file: revoked serials, then SPIFFE IDs
// with an entry, each sorted.
func DeniedKeys(s *Store) (inMemory, inFile [2][]string) {
	keys := func(d *denied) [2][]string {
		d.mu.RLock()
		defer d.mu.RUnlock()
		keys := [2][]string{slices.AppendSeq([]string{}, maps.Keys(d.serials)), slices.AppendSeq([]string{}, maps.Keys(d.ids))}
		slices.Sort(keys[0])
		slices.Sort(keys[1])
		return keys
	}
	var fresh denied
	if err := s.db.View(fresh.load); err != nil {
		panic(err)
	}
	return keys(&s.denied), keys(&fresh)
}
