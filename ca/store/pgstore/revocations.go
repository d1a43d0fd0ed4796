package pgstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/meshca/meshca/ca/store"
)

// Revoke implements store.Store. Revoking a serial again replaces its
// entry; revoking a SPIFFE ID again at another time adds one.
func (s *Store) Revoke(ctx context.Context, r store.Revocation) error {
	if err := s.enter(ctx); err != nil {
		return err
	}
	if (r.Serial == "") == (r.SPIFFEID == "") {
		return errors.New("pgstore: revoke: exactly one of serial and SPIFFE ID must be set")
	}
	if !store.StorableTime(r.RevokedAt) {
		return errors.New("pgstore: revoke: revoked_at must be between 1970 and 2262")
	}
	data, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("pgstore: revoke: %w", err)
	}
	var expires any // NULL: never pruned
	if !r.ExpiresAt.IsZero() {
		expires = nanos(r.ExpiresAt)
	}
	if r.Serial != "" {
		if err := store.CheckSerial(r.Serial); err != nil {
			return fmt.Errorf("pgstore: revoke: %w", err)
		}
		_, err = s.pool.Exec(ctx, `INSERT INTO meshca_revoked_serials (serial, expires_at_ns, record) VALUES ($1, $2, $3)
			ON CONFLICT (serial) DO UPDATE SET expires_at_ns = excluded.expires_at_ns, record = excluded.record`,
			r.Serial, expires, data)
	} else {
		if err := store.CheckSPIFFEID(r.SPIFFEID); err != nil {
			return fmt.Errorf("pgstore: revoke: %w", err)
		}
		_, err = s.pool.Exec(ctx, `INSERT INTO meshca_revoked_ids (spiffe_id, revoked_at_ns, expires_at_ns, record) VALUES ($1, $2, $3, $4)
			ON CONFLICT (spiffe_id, revoked_at_ns) DO UPDATE SET expires_at_ns = excluded.expires_at_ns, record = excluded.record`,
			r.SPIFFEID, r.RevokedAt.UnixNano(), expires, data)
	}
	return s.wrap("revoke", err)
}

// Revocations implements store.Store: the entry for serial, if any, then
// those for spiffeID, oldest first, read in one statement.
func (s *Store) Revocations(ctx context.Context, serial, spiffeID string) ([]store.Revocation, error) {
	if err := s.enter(ctx); err != nil {
		return nil, err
	}
	rows, err := s.pool.Query(ctx, `SELECT record FROM meshca_revoked_serials WHERE serial = $1
		UNION ALL (SELECT record FROM meshca_revoked_ids WHERE spiffe_id = $2 ORDER BY revoked_at_ns)`,
		serial, spiffeID)
	if err != nil {
		return nil, s.wrap("revocations", err)
	}
	var (
		out  []store.Revocation
		data []byte
	)
	_, err = pgx.ForEachRow(rows, []any{&data}, func() error {
		var r store.Revocation
		if err := json.Unmarshal(data, &r); err != nil {
			return fmt.Errorf("%w: revocation: %w", errDecode, err)
		}
		out = append(out, r)
		return nil
	})
	if err != nil {
		return nil, s.wrap("revocations", err)
	}
	return out, nil
}

// PruneRevocations implements store.Store, in one transaction.
func (s *Store) PruneRevocations(ctx context.Context, cutoff time.Time) (int, error) {
	if err := s.enter(ctx); err != nil {
		return 0, err
	}
	var n int64
	err := s.pool.QueryRow(ctx, `WITH a AS (DELETE FROM meshca_revoked_serials WHERE expires_at_ns < $1 RETURNING 1),
		b AS (DELETE FROM meshca_revoked_ids WHERE expires_at_ns < $1 RETURNING 1)
		SELECT (SELECT count(*) FROM a) + (SELECT count(*) FROM b)`, nanos(cutoff)).Scan(&n)
	if err != nil {
		return 0, s.wrap("prune revocations", err)
	}
	return int(n), nil
}
