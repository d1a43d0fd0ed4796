package boltstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/meshca/meshca/ca/store"
	bolt "go.etcd.io/bbolt"
)

// LoadCAState implements store.Store.
func (s *Store) LoadCAState(ctx context.Context) (*store.CAState, error) {
	if err := s.enter(ctx); err != nil {
		return nil, err
	}
	var st *store.CAState
	err := s.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketCA).Get(keyCAState)
		if v == nil {
			return store.ErrNotFound
		}
		st = new(store.CAState)
		return json.Unmarshal(v, st)
	})
	if err != nil {
		return nil, wrap("load CA state", err)
	}
	return st, nil
}

// SaveCAState implements store.Store. st itself is not modified.
func (s *Store) SaveCAState(ctx context.Context, st *store.CAState) (uint64, error) {
	if err := s.enter(ctx); err != nil {
		return 0, err
	}
	if st == nil {
		return 0, errors.New("boltstore: save CA state: nil state")
	}
	next := *st
	next.Version++
	data, err := json.Marshal(&next)
	if err != nil {
		return 0, fmt.Errorf("boltstore: save CA state: %w", err)
	}
	err = s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketCA)
		var stored uint64
		if v := b.Get(keyCAState); v != nil {
			var cur struct {
				Version uint64 `json:"version"`
			}
			if err := json.Unmarshal(v, &cur); err != nil {
				return err
			}
			stored = cur.Version
		}
		if stored != st.Version {
			return fmt.Errorf("stored version is %d, not %d: %w", stored, st.Version, store.ErrConflict)
		}
		return b.Put(keyCAState, data)
	})
	if err != nil {
		return 0, wrap("save CA state", err)
	}
	return next.Version, nil
}
