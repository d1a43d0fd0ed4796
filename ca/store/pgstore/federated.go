package pgstore

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/meshca/meshca/ca/store"
)

// SaveFederatedBundle implements store.Store.
func (s *Store) SaveFederatedBundle(ctx context.Context, b store.FederatedBundle) error {
	if err := s.enter(ctx); err != nil {
		return err
	}
	if err := store.CheckFederatedBundle(&b); err != nil {
		return fmt.Errorf("pgstore: save federated bundle: %w", err)
	}
	data, err := json.Marshal(&b)
	if err != nil {
		return fmt.Errorf("pgstore: save federated bundle: %w", err)
	}
	_, err = s.pool.Exec(ctx, `INSERT INTO meshca_federated_bundles (trust_domain, record) VALUES ($1, $2)
		ON CONFLICT (trust_domain) DO UPDATE SET record = EXCLUDED.record`, b.TrustDomain, data)
	return s.wrap("save federated bundle", err)
}

// FederatedBundles implements store.Store.
func (s *Store) FederatedBundles(ctx context.Context) ([]store.FederatedBundle, error) {
	if err := s.enter(ctx); err != nil {
		return nil, err
	}
	rows, err := s.pool.Query(ctx, "SELECT record FROM meshca_federated_bundles ORDER BY trust_domain")
	if err != nil {
		return nil, s.wrap("federated bundles", err)
	}
	defer rows.Close()
	var out []store.FederatedBundle
	for rows.Next() {
		var data []byte
		if err := rows.Scan(&data); err != nil {
			return nil, s.wrap("federated bundles", err)
		}
		var b store.FederatedBundle
		if err := json.Unmarshal(data, &b); err != nil {
			return nil, fmt.Errorf("pgstore: federated bundles: %w", err)
		}
		out = append(out, b)
	}
	if err := rows.Err(); err != nil {
		return nil, s.wrap("federated bundles", err)
	}
	return out, nil
}

// DeleteFederatedBundle implements store.Store.
func (s *Store) DeleteFederatedBundle(ctx context.Context, trustDomain string) error {
	if err := s.enter(ctx); err != nil {
		return err
	}
	_, err := s.pool.Exec(ctx, "DELETE FROM meshca_federated_bundles WHERE trust_domain = $1", trustDomain)
	return s.wrap("delete federated bundle", err)
}
