package boltstore

import (
	"bytes"
	"cmp"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/meshca/meshca/ca/store"
	bolt "go.etcd.io/bbolt"
)

const (
	// pruneChunk caps the records deleted per transaction by
	// PruneIssuances, so a large prune does not hold the (single) writer
	// lock, and with it every RecordIssuance, for long.
	pruneChunk = 5000
)

// Issuance implements store.Store. It looks among the journaled records
// first (see Store.mu).
func (s *Store) Issuance(ctx context.Context, serial string) (*store.Issuance, error) {
	if err := s.enter(ctx); err != nil {
		return nil, err
	}
	s.mu.RLock()
	j := s.pend[serial]
	s.mu.RUnlock()
	rec := new(store.Issuance)
	if j != nil {
		if err := json.Unmarshal(j.value, rec); err != nil {
			return nil, fmt.Errorf("boltstore: issuance %s: %w", serial, err)
		}
		return rec, nil
	}
	err := s.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketIssuances).Get([]byte(serial))
		if v == nil {
			return store.ErrNotFound
		}
		return json.Unmarshal(v, rec)
	})
	if err != nil {
		return nil, wrap("issuance "+serial, err)
	}
	return rec, nil
}

// Issuances implements store.Store. It merges two lists in IssuedAt order:
// the journaled records that match f, and an index of the data file walked
// from f.IssuedSince (the SPIFFE ID index when f.SPIFFEID is set, else the
// IssuedAt index), and stops at f.Limit. The deny-list entries are read in
// the same transaction, those of each SPIFFE ID once.
func (s *Store) Issuances(ctx context.Context, f store.IssuanceFilter) ([]store.IssuanceWithRevocations, error) {
	if err := s.enter(ctx); err != nil {
		return nil, err
	}
	if f.Limit < 0 {
		return nil, fmt.Errorf("boltstore: issuances: negative limit %d", f.Limit)
	}
	index, prefix := bucketByIssuedAt, []byte(nil)
	if f.SPIFFEID != "" {
		if err := store.CheckSPIFFEID(f.SPIFFEID); err != nil {
			return nil, fmt.Errorf("boltstore: issuances: %w", err)
		}
		index, prefix = bucketBySPIFFEID, append([]byte(f.SPIFFEID), 0)
	}
	// The journaled records first, then the transaction (see Store.mu).
	journal := s.journaledMatching(f)
	var out []store.IssuanceWithRevocations
	err := s.db.View(func(tx *bolt.Tx) error {
		byID := map[string][]store.Revocation{} // the entries of each ID seen
		add := func(serial, value []byte) error {
			var rec store.IssuanceWithRevocations
			if err := json.Unmarshal(value, &rec.Issuance); err != nil {
				return fmt.Errorf("record %s: %w", serial, err)
			}
			revs, err := serialRevocation(tx, rec.Serial)
			if err != nil {
				return err
			}
			idRevs, seen := byID[rec.SPIFFEID]
			if !seen {
				if idRevs, err = idRevocations(tx, rec.SPIFFEID); err != nil {
					return err
				}
				byID[rec.SPIFFEID] = idRevs
			}
			// A slice of its own for each record (nil if empty), so that
			// no caller sees another record's changes.
			rec.Revocations = append(revs, idRevs...)
			out = append(out, rec)
			return nil
		}
		full := func() bool { return f.Limit > 0 && len(out) == f.Limit }
		recs := tx.Bucket(bucketIssuances)
		c := tx.Bucket(index).Cursor()
		start := binary.BigEndian.AppendUint64(bytes.Clone(prefix), seekNanos(f.IssuedSince))
		for k, _ := c.Seek(start); k != nil && bytes.HasPrefix(k, prefix) && !full(); k, _ = c.Next() {
			if err := ctx.Err(); err != nil {
				return err
			}
			at, serial, ok := splitTimeSerial(k[len(prefix):])
			if !ok {
				return fmt.Errorf("malformed index key %q", k)
			}
			if at.Before(f.IssuedSince) { // only if IssuedSince is before 1970
				continue
			}
			// Journaled records that come first; one found in both
			// (being checkpointed) is listed once, from the data file.
			for len(journal) > 0 && !full() {
				if c := compareIndex(journal[0], at.UnixNano(), serial); c > 0 {
					break
				} else if c < 0 {
					if err := add([]byte(journal[0].serial), journal[0].value); err != nil {
						return err
					}
				}
				journal = journal[1:]
			}
			if full() {
				break
			}
			v := recs.Get(serial)
			if v == nil {
				return fmt.Errorf("index entry for missing record %s", serial)
			}
			if err := add(serial, v); err != nil {
				return err
			}
		}
		for ; len(journal) > 0 && !full(); journal = journal[1:] {
			if err := add([]byte(journal[0].serial), journal[0].value); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, wrap("issuances", err)
	}
	return out, nil
}

// journaledMatching returns the journaled records that f selects (ignoring
// its limit), in index order.
func (s *Store) journaledMatching(f store.IssuanceFilter) []*journaled {
	var out []*journaled
	s.mu.RLock()
	for _, j := range s.order {
		if (f.SPIFFEID == "" || j.spiffeID == f.SPIFFEID) && !time.Unix(0, j.issuedAt).Before(f.IssuedSince) {
			out = append(out, j)
		}
	}
	s.mu.RUnlock()
	slices.SortFunc(out, byIssuedAt)
	return out
}

// compareIndex orders j against the index entry (issuedAt, serial) as the
// index keys sort: by time, then serial.
func compareIndex(j *journaled, issuedAt int64, serial []byte) int {
	return cmp.Or(cmp.Compare(j.issuedAt, issuedAt), strings.Compare(j.serial, string(serial)))
}

// PruneIssuances implements store.Store. It first has every journaled
// record checkpointed (a record deleted from the data file must not come
// back from the journal), then deletes in transactions of at most
// pruneChunk records; on error it returns how many were deleted before.
func (s *Store) PruneIssuances(ctx context.Context, cutoff time.Time) (int, error) {
	if err := s.enter(ctx); err != nil {
		return 0, err
	}
	if err := s.requestCheckpoint(ctx); err != nil {
		return 0, err
	}
	total := 0
	for {
		if err := s.enter(ctx); err != nil {
			return total, err
		}
		n, err := s.pruneChunk(cutoff)
		total += n
		if err != nil || n < pruneChunk {
			return total, err
		}
	}
}

func (s *Store) pruneChunk(cutoff time.Time) (int, error) {
	n := 0
	err := s.db.Update(func(tx *bolt.Tx) error {
		recs := tx.Bucket(bucketIssuances)
		byNotAfter := tx.Bucket(bucketByNotAfter)
		// Collect first: deleting under a bbolt cursor can make it skip
		// keys.
		var expired [][]byte
		c := byNotAfter.Cursor()
		for k, _ := c.First(); k != nil && len(expired) < pruneChunk; k, _ = c.Next() {
			notAfter, _, ok := splitTimeSerial(k)
			if !ok {
				return fmt.Errorf("malformed index key %q", k)
			}
			if !notAfter.Before(cutoff) {
				break
			}
			expired = append(expired, bytes.Clone(k))
		}
		for _, k := range expired {
			serial := k[8:]
			if v := recs.Get(serial); v != nil {
				var rec store.Issuance
				if err := json.Unmarshal(v, &rec); err != nil {
					return fmt.Errorf("record %s: %w", serial, err)
				}
				if err := tx.Bucket(bucketByIssuedAt).Delete(timeSerialKey(rec.IssuedAt, rec.Serial)); err != nil {
					return err
				}
				if err := tx.Bucket(bucketBySPIFFEID).Delete(spiffeIDKey(&rec)); err != nil {
					return err
				}
				if err := recs.Delete(serial); err != nil {
					return err
				}
				if err := deleteIssuedRequest(tx, serial); err != nil {
					return err
				}
			}
			if err := byNotAfter.Delete(k); err != nil {
				return err
			}
		}
		n = len(expired)
		return nil
	})
	if err != nil {
		return 0, wrap("prune", err)
	}
	return n, nil
}
