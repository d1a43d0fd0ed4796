package boltstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/meshca/meshca/ca/store"
	bolt "go.etcd.io/bbolt"
)

// errUnknownJoinToken is ConsumeJoinToken's error for an unknown hash.
var errUnknownJoinToken = fmt.Errorf("%w: %w", store.ErrNotFound, store.ErrJoinTokenUnknown)

// CreateJoinToken implements store.Store.
func (s *Store) CreateJoinToken(ctx context.Context, t store.JoinToken) error {
	if err := s.enter(ctx); err != nil {
		return err
	}
	if err := store.CheckSerial(t.Hash); err != nil || len(t.Hash) != 64 {
		return errors.New("boltstore: join token hash must be 64 lowercase hex digits")
	}
	if err := store.CheckSPIFFEID(t.SPIFFEID); err != nil {
		return fmt.Errorf("boltstore: join token: %w", err)
	}
	if !t.UsedAt.IsZero() || !t.ExpiresAt.After(t.CreatedAt) {
		return errors.New("boltstore: join token must be unused and expire after its creation")
	}
	data, err := json.Marshal(t)
	if err != nil {
		return fmt.Errorf("boltstore: join token: %w", err)
	}
	err = s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketJoinTokens)
		if b.Get([]byte(t.Hash)) != nil {
			return errors.New("join token already exists")
		}
		return b.Put([]byte(t.Hash), data)
	})
	return wrap("create join token", err)
}

// ConsumeJoinToken implements store.Store: the check and the mark happen in
// one write transaction, so of two concurrent uses exactly one succeeds.
func (s *Store) ConsumeJoinToken(ctx context.Context, hash string, now time.Time, usedBy string) (*store.JoinToken, error) {
	if err := s.enter(ctx); err != nil {
		return nil, err
	}
	var (
		before store.JoinToken
		result error
	)
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketJoinTokens)
		v := b.Get([]byte(hash))
		if v == nil {
			result = errUnknownJoinToken
			return nil
		}
		if err := json.Unmarshal(v, &before); err != nil {
			return err
		}
		switch {
		case !before.UsedAt.IsZero():
			result = store.ErrJoinTokenUsed
			return nil
		case !now.Before(before.ExpiresAt):
			result = store.ErrJoinTokenExpired
			return nil
		}
		used := before
		used.UsedAt, used.UsedBy = now, usedBy
		data, err := json.Marshal(used)
		if err != nil {
			return err
		}
		return b.Put([]byte(hash), data)
	})
	if err != nil {
		return nil, wrap("consume join token", err)
	}
	switch {
	case result == errUnknownJoinToken:
		return nil, result
	case result != nil:
		return &before, result
	}
	return &before, nil
}

// PruneJoinTokens implements store.Store.
func (s *Store) PruneJoinTokens(ctx context.Context, cutoff time.Time) (int, error) {
	if err := s.enter(ctx); err != nil {
		return 0, err
	}
	n := 0
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketJoinTokens)
		var expired [][]byte // deleting under a cursor would skip entries
		err := b.ForEach(func(k, v []byte) error {
			var t store.JoinToken
			if err := json.Unmarshal(v, &t); err != nil {
				return err
			}
			if t.ExpiresAt.Before(cutoff) {
				expired = append(expired, k)
			}
			return nil
		})
		for _, k := range expired {
			if err == nil {
				err = b.Delete(k)
			}
		}
		n = len(expired)
		return err
	})
	if err != nil {
		// The transaction was rolled back: nothing was deleted.
		return 0, wrap("prune join tokens", err)
	}
	return n, nil
}
