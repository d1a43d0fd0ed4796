package boltstore

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
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
	err = s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucket).Put(key, data)
	})
	return wrap("revoke", err)
}

// Revocations implements store.Store: the entry for serial, if any, then
// those for spiffeID, oldest first.
func (s *Store) Revocations(ctx context.Context, serial, spiffeID string) ([]store.Revocation, error) {
	if err := s.enter(ctx); err != nil {
		return nil, err
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
	n := 0
	err := s.db.Update(func(tx *bolt.Tx) error {
		for _, name := range [][]byte{bucketRevokedSerials, bucketRevokedIDs} {
			b := tx.Bucket(name)
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
				return err
			}
			for _, k := range expired {
				if err := b.Delete(k); err != nil {
					return err
				}
			}
			n += len(expired)
		}
		return nil
	})
	if err != nil {
		return 0, wrap("prune revocations", err)
	}
	return n, nil
}
