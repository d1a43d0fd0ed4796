package boltstore

import (
	"context"
	"encoding/json"
	"fmt"

	bolt "go.etcd.io/bbolt"

	"github.com/meshca/meshca/ca/store"
)

// SaveFederatedBundle implements store.Store.
func (s *Store) SaveFederatedBundle(ctx context.Context, b store.FederatedBundle) error {
	if err := s.enter(ctx); err != nil {
		return err
	}
	if err := store.CheckFederatedBundle(&b); err != nil {
		return fmt.Errorf("boltstore: save federated bundle: %w", err)
	}
	data, err := json.Marshal(&b)
	if err != nil {
		return fmt.Errorf("boltstore: save federated bundle: %w", err)
	}
	return wrap("save federated bundle", s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketFederated).Put([]byte(b.TrustDomain), data)
	}))
}

// FederatedBundles implements store.Store.
func (s *Store) FederatedBundles(ctx context.Context) ([]store.FederatedBundle, error) {
	if err := s.enter(ctx); err != nil {
		return nil, err
	}
	var out []store.FederatedBundle
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketFederated).ForEach(func(_, v []byte) error {
			var b store.FederatedBundle
			if err := json.Unmarshal(v, &b); err != nil {
				return err
			}
			out = append(out, b)
			return nil
		})
	})
	if err != nil {
		return nil, wrap("federated bundles", err)
	}
	return out, nil
}

// DeleteFederatedBundle implements store.Store.
func (s *Store) DeleteFederatedBundle(ctx context.Context, trustDomain string) error {
	if err := s.enter(ctx); err != nil {
		return err
	}
	return wrap("delete federated bundle", s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketFederated).Delete([]byte(trustDomain))
	}))
}
