package ca_test

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/meshca/meshca/ca/store"
)

// memStore is an in-memory store.Store for unit tests of CA logic; the
// durable implementation is tested in boltstore and end to end in server.
type memStore struct {
	mu      sync.Mutex
	state   *store.CAState
	records map[string]store.Issuance
	revs    []store.Revocation
	tokens  map[string]store.JoinToken
	failRec error
}

func newMemStore() *memStore { return &memStore{records: map[string]store.Issuance{}} }

func (m *memStore) LoadCAState(context.Context) (*store.CAState, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.state == nil {
		return nil, store.ErrNotFound
	}
	cp := *m.state
	return &cp, nil
}

func (m *memStore) SaveCAState(_ context.Context, st *store.CAState) (uint64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var cur uint64
	if m.state != nil {
		cur = m.state.Version
	}
	if st.Version != cur {
		return 0, store.ErrConflict
	}
	cp := *st
	cp.Version = cur + 1
	m.state = &cp
	return cp.Version, nil
}

func (m *memStore) RecordIssuance(_ context.Context, rec store.Issuance) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.failRec != nil {
		return m.failRec
	}
	m.records[rec.Serial] = rec
	return nil
}

func (m *memStore) Issuance(_ context.Context, serial string) (*store.Issuance, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	r, ok := m.records[serial]
	if !ok {
		return nil, store.ErrNotFound
	}
	return &r, nil
}

func (m *memStore) Issuances(_ context.Context, f store.IssuanceFilter) ([]store.IssuanceWithRevocations, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []store.IssuanceWithRevocations
	for _, r := range m.records {
		if (f.SPIFFEID == "" || r.SPIFFEID == f.SPIFFEID) && !r.IssuedAt.Before(f.IssuedSince) {
			out = append(out, store.IssuanceWithRevocations{Issuance: r})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].IssuedAt.Before(out[j].IssuedAt) })
	return out, nil
}

func (m *memStore) PruneRevocations(_ context.Context, cutoff time.Time) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	kept := m.revs[:0]
	for _, r := range m.revs {
		if r.ExpiresAt.IsZero() || !r.ExpiresAt.Before(cutoff) {
			kept = append(kept, r)
		}
	}
	n := len(m.revs) - len(kept)
	m.revs = kept
	return n, nil
}

func (m *memStore) PruneIssuances(_ context.Context, cutoff time.Time) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := 0
	for k, r := range m.records {
		if r.NotAfter.Before(cutoff) {
			delete(m.records, k)
			n++
		}
	}
	return n, nil
}

func (m *memStore) Revoke(_ context.Context, r store.Revocation) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.revs = append(m.revs, r)
	return nil
}

func (m *memStore) Revocations(_ context.Context, serial, id string) ([]store.Revocation, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []store.Revocation
	for _, r := range m.revs {
		if (serial != "" && r.Serial == serial) || (id != "" && r.SPIFFEID == id) {
			out = append(out, r)
		}
	}
	return out, nil
}

func (m *memStore) CreateJoinToken(_ context.Context, t store.JoinToken) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.tokens == nil {
		m.tokens = map[string]store.JoinToken{}
	}
	m.tokens[t.Hash] = t
	return nil
}

func (m *memStore) ConsumeJoinToken(_ context.Context, hash string, now time.Time, usedBy string) (*store.JoinToken, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	t, ok := m.tokens[hash]
	switch {
	case !ok:
		return nil, fmt.Errorf("%w: %w", store.ErrNotFound, store.ErrJoinTokenUnknown)
	case !t.UsedAt.IsZero():
		return &t, store.ErrJoinTokenUsed
	case !now.Before(t.ExpiresAt):
		return &t, store.ErrJoinTokenExpired
	}
	used := t
	used.UsedAt, used.UsedBy = now, usedBy
	m.tokens[hash] = used
	return &t, nil
}

func (m *memStore) PruneJoinTokens(_ context.Context, cutoff time.Time) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := 0
	for h, t := range m.tokens {
		if t.ExpiresAt.Before(cutoff) {
			delete(m.tokens, h)
			n++
		}
	}
	return n, nil
}

func (m *memStore) Close() error { return nil }

func (m *memStore) count() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.records)
}
