package boltstore

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/meshca/meshca/ca/store"
	bolt "go.etcd.io/bbolt"
)

// Revoke implements store.Store. Revoking a serial again replaces the entry;
// revoking a SPIFFE ID again at another time adds one.
func (s *Store) Revoke(ctx context.Context, r store.Revocation) error {
	if err := s.enter(ctx); err != nil {
		return err
	}
	if (r.Serial == "") == (r.SPIFFEID == "") {
		return errors.New("boltstore: revoke: exactly one of serial and SPIFFE ID must be set")
	}
	if !store.StorableTime(r.RevokedAt) {
		return errors.New("boltstore: revoke: revoked_at must be between 1970 and 2262")
	}
	var bucket, key []byte
	if r.Serial != "" {
		if err := store.CheckSerial(r.Serial); err != nil {
			return fmt.Errorf("boltstore: revoke: %w", err)
		}
		bucket, key = bucketRevokedSerials, []byte(r.Serial)
	} else {
		if err := store.CheckSPIFFEID(r.SPIFFEID); err != nil {
			return fmt.Errorf("boltstore: revoke: %w", err)
		}
		bucket = bucketRevokedIDs
		key = binary.BigEndian.AppendUint64(append([]byte(r.SPIFFEID), 0), uint64(r.RevokedAt.UnixNano()))
	}
	data, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("boltstore: revoke: %w", err)
	}
	s.denied.wmu.Lock()
	defer s.denied.wmu.Unlock()
	err = s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucket).Put(key, data)
	})
	// Even if the transaction failed: it may have reached the file, and a
	// key in the sets that the file lacks costs only a read.
	s.denied.add(r.Serial, r.SPIFFEID)
	return wrap("revoke", err)
}

// Revocations implements store.Store: the entry for serial, if any, then
// those for spiffeID, oldest first. When neither is among the deny-list's
// keys (denied), as for almost every call, it answers without reading the
// file.
func (s *Store) Revocations(ctx context.Context, serial, spiffeID string) ([]store.Revocation, error) {
	if err := s.enter(ctx); err != nil {
		return nil, err
	}
	if !s.denied.has(serial, spiffeID) {
		return nil, nil
	}
	var out []store.Revocation
	err := s.db.View(func(tx *bolt.Tx) error {
		var err error
		if out, err = serialRevocation(tx, serial); err != nil {
			return err
		}
		byID, err := idRevocations(tx, spiffeID)
		out = append(out, byID...)
		return err
	})
	if err != nil {
		return nil, wrap("revocations", err)
	}
	return out, nil
}

// serialRevocation returns the entry for serial in tx, if any.
func serialRevocation(tx *bolt.Tx, serial string) ([]store.Revocation, error) {
	if serial == "" {
		return nil, nil
	}
	v := tx.Bucket(bucketRevokedSerials).Get([]byte(serial))
	if v == nil {
		return nil, nil
	}
	var r store.Revocation
	if err := json.Unmarshal(v, &r); err != nil {
		return nil, fmt.Errorf("revocation of %s: %w", serial, err)
	}
	return []store.Revocation{r}, nil
}

// idRevocations returns the entries for spiffeID in tx, oldest first.
func idRevocations(tx *bolt.Tx, spiffeID string) ([]store.Revocation, error) {
	// An ID with 0x00 in it is never stored, and its prefix could
	// match another ID's keys.
	if spiffeID == "" || strings.IndexByte(spiffeID, 0) >= 0 {
		return nil, nil
	}
	var out []store.Revocation
	prefix := append([]byte(spiffeID), 0)
	c := tx.Bucket(bucketRevokedIDs).Cursor()
	for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
		var r store.Revocation
		if err := json.Unmarshal(v, &r); err != nil {
			return nil, fmt.Errorf("revocation of %s: %w", spiffeID, err)
		}
		out = append(out, r)
	}
	return out, nil
}

// PruneRevocations implements store.Store. The deny-list has no index by
// expiry (it is small, and an index would change the file's layout), so it
// scans both buckets in one transaction.
func (s *Store) PruneRevocations(ctx context.Context, cutoff time.Time) (int, error) {
	if err := s.enter(ctx); err != nil {
		return 0, err
	}
	s.denied.wmu.Lock()
	defer s.denied.wmu.Unlock()
	var serials, ids []string // the keys of denied left without an entry
	n := 0
	err := s.db.Update(func(tx *bolt.Tx) error {
		expired, err := expiredRevocations(tx.Bucket(bucketRevokedSerials), cutoff)
		if err != nil {
			return err
		}
		for _, k := range expired {
			serials = append(serials, string(k))
		}
		n = len(expired)
		byID := tx.Bucket(bucketRevokedIDs)
		if expired, err = expiredRevocations(byID, cutoff); err != nil {
			return err
		}
		n += len(expired)
		for i, k := range expired {
			// The ID and its separator: a slice of the key, which lives
			// in the read-only map and must not be appended to.
			sep := bytes.IndexByte(k, 0)
			if sep < 0 {
				continue // a key without the separator belongs to no ID
			}
			prefix := k[:sep+1]
			if i > 0 && bytes.HasPrefix(expired[i-1], prefix) {
				continue // the same ID as the key before (keys are in order)
			}
			if next, _ := byID.Cursor().Seek(prefix); next == nil || !bytes.HasPrefix(next, prefix) {
				ids = append(ids, string(prefix[:sep]))
			}
		}
		return nil
	})
	if err != nil {
		return 0, wrap("prune revocations", err)
	}
	s.denied.remove(serials, ids)
	return n, nil
}

// expiredRevocations deletes from b the entries that expire before cutoff,
// and returns their keys, in order.
func expiredRevocations(b *bolt.Bucket, cutoff time.Time) ([][]byte, error) {
	var expired [][]byte // deleting under a cursor would skip entries
	err := b.ForEach(func(k, v []byte) error {
		var r store.Revocation
		if err := json.Unmarshal(v, &r); err != nil {
			return fmt.Errorf("revocation %q: %w", k, err)
		}
		if !r.ExpiresAt.IsZero() && r.ExpiresAt.Before(cutoff) {
			expired = append(expired, k)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	for _, k := range expired {
		if err := b.Delete(k); err != nil {
			return nil, err
		}
	}
	return expired, nil
}

// denied holds the deny-list's keys in memory: the revoked serials, and the
// SPIFFE IDs with at least one entry. The data file's lock keeps other
// processes out, and only Revoke and PruneRevocations write the two buckets
// (a replay or checkpoint touches only issuance records). The sets, read at
// Open and updated by those two, hold every key of the file but the one a
// Revoke in progress adds: a key is added once its entry's transaction has
// ended (committed or not), before Revoke returns, and removed only after
// the transaction that deleted its last entry committed. A reader may thus
// find a key whose entry is gone (and read the file to learn it), and never
// misses one whose Revoke has returned.
type denied struct {
	// wmu is held by Revoke and PruneRevocations from their transaction to
	// their update of the sets, which are thus updated in the order the
	// transactions committed: otherwise a prune could remove a key that a
	// revocation committed after it had put back.
	wmu sync.Mutex
	// mu guards the sets.
	mu      sync.RWMutex
	serials map[string]struct{}
	ids     map[string]struct{}
}

// load reads the sets from tx.
func (d *denied) load(tx *bolt.Tx) error {
	serials, ids := map[string]struct{}{}, map[string]struct{}{}
	err := tx.Bucket(bucketRevokedSerials).ForEach(func(k, _ []byte) error {
		serials[string(k)] = struct{}{}
		return nil
	})
	if err != nil {
		return err
	}
	err = tx.Bucket(bucketRevokedIDs).ForEach(func(k, _ []byte) error {
		// A key without the separator matches no ID's prefix.
		if id, _, ok := bytes.Cut(k, []byte{0}); ok {
			ids[string(id)] = struct{}{}
		}
		return nil
	})
	if err != nil {
		return err
	}
	d.mu.Lock()
	d.serials, d.ids = serials, ids
	d.mu.Unlock()
	return nil
}

// has reports whether the deny-list may have an entry for serial or
// spiffeID; if not, it has none.
func (d *denied) has(serial, spiffeID string) bool {
	d.mu.RLock()
	defer d.mu.RUnlock()
	_, bySerial := d.serials[serial]
	_, byID := d.ids[spiffeID]
	return bySerial || byID
}

// add adds a revocation's serial or SPIFFE ID (whichever is set).
func (d *denied) add(serial, spiffeID string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if serial != "" {
		d.serials[serial] = struct{}{}
	} else {
		d.ids[spiffeID] = struct{}{}
	}
}

// remove removes serials and ids.
func (d *denied) remove(serials, ids []string) {
	if len(serials)+len(ids) == 0 {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, k := range serials {
		delete(d.serials, k)
	}
	for _, k := range ids {
		delete(d.ids, k)
	}
}
