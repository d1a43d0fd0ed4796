package boltstore

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
)

// storeChunk caps the records copied into the data file per transaction,
// by a checkpoint or a replay.
const storeChunk = 10000

// appendFill is how full bbolt fills a page it splits, in the buckets whose
// new keys come after the old ones: the serials (time-ordered) and the
// IssuedAt index. Half-full pages (bbolt's default, for keys that land
// anywhere) would double the pages each checkpoint writes there and their
// share of the file. The NotAfter index keeps the default: a certificate
// asked for an hour lands among those issued for a day before it.
const appendFill = 0.95

// A checkpoint copies journaled records into the data file, in large
// transactions off the request path, and then drops the journal file that
// held them. It runs in three steps, and a crash after any of them loses
// nothing:
//
//  1. seal: create the next journal file (JournalPath+".next", synced with
//     its directory) and direct the committer to it; the current file
//     receives no more records.
//  2. store: copy the sealed file's records into the data file (synced),
//     then drop them from s.pend.
//  3. retire: rename the next file over the sealed one and sync the
//     directory.
//
// Open replays both files, if present, skipping records the data file
// already holds; so a crash between 2 and 3 costs only a second copy.

// checkpointer runs checkpoints until Close: when the committer signals
// that the journal holds CheckpointRecords records, every
// CheckpointInterval, and when a caller asks (PruneIssuances). After a
// failure it waits for the next interval or request before trying again.
func (s *Store) checkpointer() {
	defer close(s.ckptStopped)
	tick := time.NewTicker(s.ckptInterval)
	defer tick.Stop()
	failed := false
	for {
		var reply chan error
		select {
		case <-s.done:
			return
		case <-s.ckptSignal:
			if failed {
				continue
			}
		case <-tick.C:
		case reply = <-s.ckptReq:
		}
		var err error
		if reply != nil {
			err = s.checkpointAll()
			reply <- err
		} else {
			err = s.checkpoint()
		}
		if failed = err != nil; failed {
			s.log.Error("checkpoint failed; the records stay in the journal and it is retried", "err", err)
		}
	}
}

// checkpoint runs the three steps; it picks up where a failed one stopped.
func (s *Store) checkpoint() error {
	start := time.Now()
	if err := s.seal(); err != nil || s.sealed == nil {
		return err
	}
	n, err := s.storeSealed()
	if err != nil {
		return err
	}
	if err := s.retire(); err != nil {
		return err
	}
	s.metrics.Checkpointed(n, time.Since(start))
	return nil
}

// checkpointAll stores every record journaled before the call.
func (s *Store) checkpointAll() error {
	if s.sealed != nil { // a failed checkpoint's file first
		if err := s.checkpoint(); err != nil {
			return err
		}
	}
	return s.checkpoint()
}

// seal is step 1. It does nothing if a file is sealed already, or if no
// record is journaled.
func (s *Store) seal() error {
	if s.sealed != nil || s.journaled() == 0 {
		return nil
	}
	// The next file is given the space this one took, and a little more.
	s.jmu.Lock()
	used := s.active.size
	s.jmu.Unlock()
	f, err := s.createJournal(s.nextPath, preallocFor(used))
	if err != nil {
		return fmt.Errorf("boltstore: checkpoint: %w", err)
	}
	s.jmu.Lock()
	s.sealed = s.active
	s.active = &journalFile{f: f, size: int64(len(journalHeader)), gen: s.sealed.gen + 1}
	s.jmu.Unlock()
	return nil
}

// storeSealed is step 2: it stores the records of the sealed file and
// returns how many.
func (s *Store) storeSealed() (int, error) {
	gen := s.sealed.gen
	s.mu.RLock()
	// s.order is in journal order, so the sealed file's records come first.
	n, _ := slices.BinarySearchFunc(s.order, gen+1, func(j *journaled, g uint64) int { return cmp.Compare(j.gen, g) })
	recs := s.order[:n:n]
	s.mu.RUnlock()
	if _, err := s.store(recs, false); err != nil {
		return 0, fmt.Errorf("boltstore: checkpoint: %w", err)
	}
	s.mu.Lock()
	for _, j := range recs {
		delete(s.pend, j.serial)
	}
	// A copy, so that the array holding the stored records is freed.
	s.order = append([]*journaled(nil), s.order[n:]...)
	s.mu.Unlock()
	return n, nil
}

// retire is step 3.
func (s *Store) retire() error {
	// After a failed directory sync, the rename is done already.
	if err := os.Rename(s.nextPath, s.journalPath); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("boltstore: checkpoint: %w", err)
	}
	if err := syncDir(filepath.Dir(s.journalPath)); err != nil {
		return fmt.Errorf("boltstore: checkpoint: %w", err)
	}
	_ = s.sealed.f.Close() // only read since sealed
	s.sealed = nil
	return nil
}

// journaled returns how many records are journaled and not yet in the data
// file.
func (s *Store) journaled() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.order)
}

// requestCheckpoint has the checkpointer store every record journaled
// before the call, and waits for it.
func (s *Store) requestCheckpoint(ctx context.Context) error {
	if s.journaled() == 0 {
		return nil
	}
	reply := make(chan error, 1)
	select {
	case s.ckptReq <- reply:
	case <-ctx.Done():
		return fmt.Errorf("boltstore: %w", ctx.Err())
	case <-s.done:
		return ErrClosed
	}
	select {
	case err := <-reply:
		return err
	case <-ctx.Done():
		return fmt.Errorf("boltstore: %w", ctx.Err())
	}
}

// store writes recs into the data file in transactions of at most
// storeChunk records. A checkpoint's records are new to the data file (the
// committer checked), or were stored by an attempt that failed later and
// are stored again, unchanged. A replay's (check) may be stored already by a
// checkpoint that a crash interrupted: store skips those, returns how many,
// and fails on a serial stored with another value.
func (s *Store) store(recs []*journaled, check bool) (skipped int, err error) {
	for len(recs) > 0 {
		chunk := recs[:min(len(recs), storeChunk)]
		recs = recs[len(chunk):]
		err := s.db.Update(func(tx *bolt.Tx) error {
			n, err := s.storeRecords(tx, chunk, check)
			skipped += n
			return err
		})
		if err != nil {
			return skipped, wrap("store journaled records", err)
		}
	}
	return skipped, nil
}

// storeRecords puts recs and their index entries in tx, each bucket in key
// order, and returns how many records it skipped as stored already. It
// raises maxIssued first, before the records can be in the data file (a
// transaction that fails leaves it higher than it need be, which is safe).
func (s *Store) storeRecords(tx *bolt.Tx, recs []*journaled, check bool) (int, error) {
	sorted := slices.Clone(recs)
	slices.SortFunc(sorted, func(a, b *journaled) int { return strings.Compare(a.serial, b.serial) })
	if len(sorted) > 0 {
		s.raiseMaxIssued(sorted[len(sorted)-1].serial)
	}
	fresh := sorted[:0]
	primary := tx.Bucket(bucketIssuances)
	primary.FillPercent = appendFill
	var key []byte // Put copies its key
	for _, j := range sorted {
		key = append(key[:0], j.serial...)
		if check {
			if v := primary.Get(key); v != nil {
				if !bytes.Equal(v, j.value) {
					return 0, fmt.Errorf("serial %s is stored with another record", j.serial)
				}
				continue
			}
		}
		if err := primary.Put(key, j.value); err != nil {
			return 0, err
		}
		fresh = append(fresh, j)
	}
	for _, index := range []struct {
		bucket []byte
		fill   float64
		order  func(a, b *journaled) int
		key    func([]byte, *journaled) []byte
	}{
		{bucketByNotAfter, bolt.DefaultFillPercent, func(a, b *journaled) int {
			return cmp.Or(cmp.Compare(a.notAfter, b.notAfter), strings.Compare(a.serial, b.serial))
		}, func(k []byte, j *journaled) []byte { return nanosSerialKey(k, j.notAfter, j.serial) }},
		{bucketByIssuedAt, appendFill, byIssuedAt, func(k []byte, j *journaled) []byte { return nanosSerialKey(k, j.issuedAt, j.serial) }},
		{bucketBySPIFFEID, bolt.DefaultFillPercent, func(a, b *journaled) int {
			return cmp.Or(strings.Compare(a.spiffeID, b.spiffeID), byIssuedAt(a, b))
		}, func(k []byte, j *journaled) []byte {
			return nanosSerialKey(append(append(k, j.spiffeID...), 0), j.issuedAt, j.serial)
		}},
	} {
		// In the order of the keys, which Go compares faster as fields.
		slices.SortFunc(fresh, index.order)
		b := tx.Bucket(index.bucket)
		b.FillPercent = index.fill
		for _, j := range fresh {
			key = index.key(key[:0], j)
			if err := b.Put(key, nil); err != nil {
				return 0, err
			}
		}
	}
	return len(recs) - len(fresh), nil
}

// byIssuedAt orders records as the IssuedAt index does.
func byIssuedAt(a, b *journaled) int {
	return cmp.Or(cmp.Compare(a.issuedAt, b.issuedAt), strings.Compare(a.serial, b.serial))
}
