package boltstore

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

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
	if !keyTime(r.RevokedAt) {
		return errors.New("boltstore: revoke: revoked_at must be between 1970 and 2262")
	}
	var bucket, key []byte
	if r.Serial != "" {
		if err := checkSerial(r.Serial); err != nil {
			return fmt.Errorf("boltstore: revoke: %w", err)
		}
		bucket, key = bucketRevokedSerials, []byte(r.Serial)
	} else {
		if err := checkSPIFFEID(r.SPIFFEID); err != nil {
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
	add := func(v []byte) error {
		var r store.Revocation
		if err := json.Unmarshal(v, &r); err != nil {
			return err
		}
		out = append(out, r)
		return nil
	}
	err := s.db.View(func(tx *bolt.Tx) error {
		if serial != "" {
			if v := tx.Bucket(bucketRevokedSerials).Get([]byte(serial)); v != nil {
				if err := add(v); err != nil {
					return err
				}
			}
		}
		// An ID with 0x00 in it is never stored, and its prefix could
		// match another ID's keys.
		if spiffeID == "" || strings.IndexByte(spiffeID, 0) >= 0 {
			return nil
		}
		prefix := append([]byte(spiffeID), 0)
		c := tx.Bucket(bucketRevokedIDs).Cursor()
		for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			if err := add(v); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, wrap("revocations", err)
	}
	return out, nil
}
