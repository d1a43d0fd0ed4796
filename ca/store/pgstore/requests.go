package pgstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/meshca/meshca/ca/store"
)

// RecordIssuanceOnce implements store.Store with one transaction of two
// INSERTs, the record then the answer, each ON CONFLICT DO NOTHING: a
// replica answering the same request at the same time waits on the
// request's key until the first commits, then inserts nothing, and rolls
// its record back. When the record's serial is taken already, one SELECT
// tells a request answered already (ErrConflict) from a duplicate serial. It does not join the group commit: these calls are few
// (one per pod certificate), and each needs its own transaction.
func (s *Store) RecordIssuanceOnce(ctx context.Context, rec store.Issuance, req store.IssuedRequest) error {
	if err := s.enter(ctx); err != nil {
		return err
	}
	if err := store.CheckIssuedRequest(&req, &rec); err != nil {
		return fmt.Errorf("pgstore: record issuance once: %w", err)
	}
	record, err := store.EncodeIssuance(&rec)
	if err != nil {
		return fmt.Errorf("pgstore: record issuance %q: %w", rec.Serial, err)
	}
	answer, err := json.Marshal(&req)
	if err != nil {
		return fmt.Errorf("pgstore: record issuance once: %w", err)
	}
	var refused error // the request's own refusal, not the database's
	err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `INSERT INTO meshca_issuances (serial, spiffe_id, issued_at_ns, not_after_ns, record)
			VALUES ($1, $2, $3, $4, $5) ON CONFLICT (serial) DO NOTHING`,
			rec.Serial, rec.SPIFFEID, rec.IssuedAt.UnixNano(), rec.NotAfter.UnixNano(), record)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			// A request answered already is ErrConflict however its
			// serial came to be taken (the same write again, above all),
			// as in every store.
			var answered bool
			if err := tx.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM meshca_issued_requests WHERE request = $1)",
				req.Request).Scan(&answered); err != nil {
				return err
			}
			refused = fmt.Errorf("%w %s", errDuplicate, rec.Serial)
			if answered {
				refused = fmt.Errorf("pgstore: request %s already answered: %w", req.Request, store.ErrConflict)
			}
			return refused
		}
		tag, err = tx.Exec(ctx, `INSERT INTO meshca_issued_requests (request, serial, answer)
			VALUES ($1, $2, $3) ON CONFLICT (request) DO NOTHING`, req.Request, rec.Serial, answer)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			refused = fmt.Errorf("pgstore: request %s already answered: %w", req.Request, store.ErrConflict)
			return refused
		}
		return nil
	})
	if refused != nil && errors.Is(err, refused) {
		return refused
	}
	return s.wrap("record issuance once", err)
}

// IssuedRequest implements store.Store.
func (s *Store) IssuedRequest(ctx context.Context, request string) (*store.IssuedRequest, error) {
	if err := s.enter(ctx); err != nil {
		return nil, err
	}
	var data []byte
	err := s.pool.QueryRow(ctx, "SELECT answer FROM meshca_issued_requests WHERE request = $1", request).Scan(&data)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return nil, fmt.Errorf("pgstore: issued request %s: %w", request, store.ErrNotFound)
	case err != nil:
		return nil, s.wrap("issued request "+request, err)
	}
	req := new(store.IssuedRequest)
	if err := json.Unmarshal(data, req); err != nil {
		return nil, fmt.Errorf("pgstore: issued request %s: %w", request, err)
	}
	return req, nil
}
