package pgstore

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/meshca/meshca/ca/store"
)

// errUnknownJoinToken is ConsumeJoinToken's error for an unknown hash.
var errUnknownJoinToken = fmt.Errorf("%w: %w", store.ErrNotFound, store.ErrJoinTokenUnknown)

// CreateJoinToken implements store.Store.
func (s *Store) CreateJoinToken(ctx context.Context, t store.JoinToken) error {
	if err := s.enter(ctx); err != nil {
		return err
	}
	if err := store.CheckSerial(t.Hash); err != nil || len(t.Hash) != 64 {
		return errors.New("pgstore: join token hash must be 64 lowercase hex digits")
	}
	if err := store.CheckSPIFFEID(t.SPIFFEID); err != nil {
		return fmt.Errorf("pgstore: join token: %w", err)
	}
	if !t.UsedAt.IsZero() || !t.ExpiresAt.After(t.CreatedAt) {
		return errors.New("pgstore: join token must be unused and expire after its creation")
	}
	if !store.StorableTime(t.CreatedAt) || !store.StorableTime(t.ExpiresAt) {
		return errors.New("pgstore: join token times must be between 1970 and 2262")
	}
	_, err := s.pool.Exec(ctx, `INSERT INTO meshca_join_tokens (hash, spiffe_id, created_at_ns, expires_at_ns) VALUES ($1, $2, $3, $4)`,
		t.Hash, t.SPIFFEID, t.CreatedAt.UnixNano(), t.ExpiresAt.UnixNano())
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "23505" { // unique_violation
		return errors.New("pgstore: create join token: join token already exists")
	}
	return s.wrap("create join token", err)
}

// ConsumeJoinToken implements store.Store. The check and the mark are one
// UPDATE: PostgreSQL locks the row, and a concurrent UPDATE on any replica
// re-checks used_at_ns once the first commits, so exactly one succeeds.
// Only when it matches no row does a second statement read the token to
// say why (unknown, used or expired): a token once used or expired stays
// so, so that answer cannot contradict the UPDATE.
func (s *Store) ConsumeJoinToken(ctx context.Context, hash string, now time.Time, usedBy string) (*store.JoinToken, error) {
	if err := s.enter(ctx); err != nil {
		return nil, err
	}
	t := store.JoinToken{Hash: hash}
	var created, expires int64
	err := s.pool.QueryRow(ctx, `UPDATE meshca_join_tokens SET used_at_ns = $2, used_by = $3
		WHERE hash = $1 AND used_at_ns IS NULL AND expires_at_ns > $2
		RETURNING spiffe_id, created_at_ns, expires_at_ns`, hash, nanos(now), usedBy).Scan(&t.SPIFFEID, &created, &expires)
	if err == nil {
		t.CreatedAt, t.ExpiresAt = fromNanos(created), fromNanos(expires)
		return &t, nil
	}
	if !errors.Is(err, pgx.ErrNoRows) {
		return nil, s.wrap("consume join token", err)
	}
	var used *int64
	err = s.pool.QueryRow(ctx, `SELECT spiffe_id, created_at_ns, expires_at_ns, used_at_ns, used_by FROM meshca_join_tokens WHERE hash = $1`,
		hash).Scan(&t.SPIFFEID, &created, &expires, &used, &t.UsedBy)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return nil, errUnknownJoinToken
	case err != nil:
		return nil, s.wrap("consume join token", err)
	}
	t.CreatedAt, t.ExpiresAt = fromNanos(created), fromNanos(expires)
	switch {
	case used != nil:
		t.UsedAt = fromNanos(*used)
		return &t, store.ErrJoinTokenUsed
	case nanos(now) >= expires:
		return &t, store.ErrJoinTokenExpired
	}
	// Neither used nor expired, yet the UPDATE matched nothing: the token
	// was created between the two statements. It was unknown to the UPDATE.
	return nil, errUnknownJoinToken
}

// PruneJoinTokens implements store.Store.
func (s *Store) PruneJoinTokens(ctx context.Context, cutoff time.Time) (int, error) {
	if err := s.enter(ctx); err != nil {
		return 0, err
	}
	tag, err := s.pool.Exec(ctx, "DELETE FROM meshca_join_tokens WHERE expires_at_ns < $1", nanos(cutoff))
	if err != nil {
		return 0, s.wrap("prune join tokens", err)
	}
	return int(tag.RowsAffected()), nil
}
