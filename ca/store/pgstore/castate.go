package pgstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/meshca/meshca/ca/store"
)

// LoadCAState implements store.Store.
func (s *Store) LoadCAState(ctx context.Context) (*store.CAState, error) {
	if err := s.enter(ctx); err != nil {
		return nil, err
	}
	var (
		version int64
		data    []byte
	)
	err := s.pool.QueryRow(ctx, "SELECT version, state FROM meshca_ca_state WHERE id").Scan(&version, &data)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return nil, fmt.Errorf("pgstore: load CA state: %w", store.ErrNotFound)
	case err != nil:
		return nil, s.wrap("load CA state", err)
	}
	st := new(store.CAState)
	if err := json.Unmarshal(data, st); err != nil {
		return nil, fmt.Errorf("pgstore: load CA state: %w", err)
	}
	st.Version = uint64(version) //nolint:gosec // G115: the column is checked positive
	return st, nil
}

// SaveCAState implements store.Store: the first state is inserted unless a
// row exists, a later one replaces the row only where its version is still
// st.Version, so of concurrent writers on any replicas one wins and the
// others get store.ErrConflict. st itself is not modified.
func (s *Store) SaveCAState(ctx context.Context, st *store.CAState) (uint64, error) {
	if err := s.enter(ctx); err != nil {
		return 0, err
	}
	if st == nil {
		return 0, errors.New("pgstore: save CA state: nil state")
	}
	if st.Version >= math.MaxInt64 {
		return 0, fmt.Errorf("pgstore: save CA state: version %d out of range: %w", st.Version, store.ErrConflict)
	}
	next := *st
	next.Version++
	data, err := json.Marshal(&next)
	if err != nil {
		return 0, fmt.Errorf("pgstore: save CA state: %w", err)
	}
	var tag pgconn.CommandTag
	if st.Version == 0 {
		tag, err = s.pool.Exec(ctx, "INSERT INTO meshca_ca_state (version, state) VALUES (1, $1) ON CONFLICT (id) DO NOTHING", data)
	} else {
		tag, err = s.pool.Exec(ctx, "UPDATE meshca_ca_state SET version = version + 1, state = $1 WHERE id AND version = $2",
			data, int64(st.Version)) //nolint:gosec // G115: checked above
	}
	if err != nil {
		return 0, s.wrap("save CA state", err)
	}
	if tag.RowsAffected() != 1 {
		return 0, fmt.Errorf("pgstore: save CA state: the stored version is not %d: %w", st.Version, store.ErrConflict)
	}
	return next.Version, nil
}
