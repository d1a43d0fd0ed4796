// Package storetest helps test code that keeps state in a store.Store: Mem is
// an in-memory store.Store, and Run checks that an implementation keeps every
// promise of the interface. It is imported by _test.go files only.
package storetest

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/meshca/meshca/ca/store"
)

// ErrClosed is returned by every Mem method called after Close.
var ErrClosed = errors.New("storetest: store is closed")

// Mem is an in-memory store.Store that honours the interface's contract as
// boltstore does, without a file: versioned CA state, duplicate serials
// refused, atomic join token use, the prune cutoffs. Values go in and out as
// JSON copies, as they would through a real store, so a caller that modifies
// what it passed or got back changes nothing stored. Use NewMem.
type Mem struct {
	mu      sync.Mutex
	closed  bool
	state   *store.CAState
	records map[string]store.Issuance
	// bySerial is the deny-list by serial; byID by SPIFFE ID, each ID's
	// entries oldest first.
	bySerial map[string]store.Revocation
	byID     map[string][]store.Revocation
	tokens   map[string]store.JoinToken
	// answers are the IssuedRequests by request key.
	answers map[string]store.IssuedRequest
	// federated are the federated bundles by trust domain.
	federated map[string]store.FederatedBundle
}

var _ store.Store = (*Mem)(nil)

// NewMem returns an empty store.
func NewMem() *Mem {
	return &Mem{
		records:  map[string]store.Issuance{},
		bySerial: map[string]store.Revocation{},
		byID:     map[string][]store.Revocation{},
		tokens:   map[string]store.JoinToken{},
		answers:  map[string]store.IssuedRequest{},

		federated: map[string]store.FederatedBundle{},
	}
}

// lock is called first by every method; the caller unlocks m.mu.
func (m *Mem) lock(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("storetest: %w", err)
	}
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return ErrClosed
	}
	return nil
}

// clone copies v through JSON, as a store that serialises would.
func clone[T any](v T) T {
	data, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("storetest: %v", err))
	}
	var out T
	if err := json.Unmarshal(data, &out); err != nil {
		panic(fmt.Sprintf("storetest: %v", err))
	}
	return out
}

// LoadCAState implements store.Store.
func (m *Mem) LoadCAState(ctx context.Context) (*store.CAState, error) {
	if err := m.lock(ctx); err != nil {
		return nil, err
	}
	defer m.mu.Unlock()
	if m.state == nil {
		return nil, store.ErrNotFound
	}
	st := clone(*m.state)
	return &st, nil
}

// SaveCAState implements store.Store.
func (m *Mem) SaveCAState(ctx context.Context, st *store.CAState) (uint64, error) {
	if err := m.lock(ctx); err != nil {
		return 0, err
	}
	defer m.mu.Unlock()
	if st == nil {
		return 0, errors.New("storetest: save CA state: nil state")
	}
	var stored uint64
	if m.state != nil {
		stored = m.state.Version
	}
	if st.Version != stored {
		return 0, fmt.Errorf("storetest: save CA state: stored version is %d, not %d: %w", stored, st.Version, store.ErrConflict)
	}
	next := clone(*st)
	next.Version++
	m.state = &next
	return next.Version, nil
}

// RecordIssuance implements store.Store.
func (m *Mem) RecordIssuance(ctx context.Context, rec store.Issuance) error {
	if err := m.lock(ctx); err != nil {
		return err
	}
	defer m.mu.Unlock()
	return m.record(rec)
}

// record checks and stores rec; m.mu is held.
func (m *Mem) record(rec store.Issuance) error {
	if _, err := store.EncodeIssuance(&rec); err != nil {
		return fmt.Errorf("storetest: record issuance %q: %w", rec.Serial, err)
	}
	if _, ok := m.records[rec.Serial]; ok {
		return fmt.Errorf("storetest: record issuance: duplicate serial %s", rec.Serial)
	}
	m.records[rec.Serial] = clone(rec)
	return nil
}

// RecordIssuanceOnce implements store.Store.
func (m *Mem) RecordIssuanceOnce(ctx context.Context, rec store.Issuance, req store.IssuedRequest) error {
	if err := m.lock(ctx); err != nil {
		return err
	}
	defer m.mu.Unlock()
	if err := store.CheckIssuedRequest(&req, &rec); err != nil {
		return fmt.Errorf("storetest: record issuance once: %w", err)
	}
	if _, ok := m.answers[req.Request]; ok {
		return fmt.Errorf("storetest: request %s already answered: %w", req.Request, store.ErrConflict)
	}
	if err := m.record(rec); err != nil {
		return err
	}
	m.answers[req.Request] = clone(req)
	return nil
}

// IssuedRequest implements store.Store.
func (m *Mem) IssuedRequest(ctx context.Context, request string) (*store.IssuedRequest, error) {
	if err := m.lock(ctx); err != nil {
		return nil, err
	}
	defer m.mu.Unlock()
	req, ok := m.answers[request]
	if !ok {
		return nil, fmt.Errorf("storetest: issued request %s: %w", request, store.ErrNotFound)
	}
	req = clone(req)
	return &req, nil
}

// Issuance implements store.Store.
func (m *Mem) Issuance(ctx context.Context, serial string) (*store.Issuance, error) {
	if err := m.lock(ctx); err != nil {
		return nil, err
	}
	defer m.mu.Unlock()
	rec, ok := m.records[serial]
	if !ok {
		return nil, fmt.Errorf("storetest: issuance %s: %w", serial, store.ErrNotFound)
	}
	rec = clone(rec)
	return &rec, nil
}

// Issuances implements store.Store.
func (m *Mem) Issuances(ctx context.Context, f store.IssuanceFilter) ([]store.IssuanceWithRevocations, error) {
	if err := m.lock(ctx); err != nil {
		return nil, err
	}
	defer m.mu.Unlock()
	if f.Limit < 0 {
		return nil, fmt.Errorf("storetest: issuances: negative limit %d", f.Limit)
	}
	var recs []store.Issuance
	for _, rec := range m.records {
		if (f.SPIFFEID == "" || rec.SPIFFEID == f.SPIFFEID) && !rec.IssuedAt.Before(f.IssuedSince) {
			recs = append(recs, rec)
		}
	}
	slices.SortFunc(recs, func(a, b store.Issuance) int {
		return cmp.Or(a.IssuedAt.Compare(b.IssuedAt), cmp.Compare(a.Serial, b.Serial))
	})
	if f.Limit > 0 && len(recs) > f.Limit {
		recs = recs[:f.Limit]
	}
	var out []store.IssuanceWithRevocations
	for _, rec := range recs {
		out = append(out, store.IssuanceWithRevocations{
			Issuance:    clone(rec),
			Revocations: m.revocations(rec.Serial, rec.SPIFFEID),
		})
	}
	return out, nil
}

// PruneIssuances implements store.Store.
func (m *Mem) PruneIssuances(ctx context.Context, cutoff time.Time) (int, error) {
	if err := m.lock(ctx); err != nil {
		return 0, err
	}
	defer m.mu.Unlock()
	n := 0
	for serial, rec := range m.records {
		if rec.NotAfter.Before(cutoff) {
			delete(m.records, serial)
			n++
		}
	}
	for key, req := range m.answers {
		if _, ok := m.records[req.Serial]; !ok {
			delete(m.answers, key)
		}
	}
	return n, nil
}

// Revoke implements store.Store, as boltstore does: revoking a serial again
// replaces its entry; a SPIFFE ID has one entry per RevokedAt.
func (m *Mem) Revoke(ctx context.Context, r store.Revocation) error {
	if err := m.lock(ctx); err != nil {
		return err
	}
	defer m.mu.Unlock()
	switch {
	case (r.Serial == "") == (r.SPIFFEID == ""):
		return errors.New("storetest: revoke: exactly one of serial and SPIFFE ID must be set")
	case r.RevokedAt.IsZero():
		return errors.New("storetest: revoke: revoked_at is required")
	}
	r = clone(r)
	if r.Serial != "" {
		m.bySerial[r.Serial] = r
		return nil
	}
	revs := m.byID[r.SPIFFEID]
	i, found := slices.BinarySearchFunc(revs, r, func(a, b store.Revocation) int { return a.RevokedAt.Compare(b.RevokedAt) })
	if found {
		revs[i] = r
	} else {
		revs = slices.Insert(revs, i, r)
	}
	m.byID[r.SPIFFEID] = revs
	return nil
}

// Revocations implements store.Store.
func (m *Mem) Revocations(ctx context.Context, serial, spiffeID string) ([]store.Revocation, error) {
	if err := m.lock(ctx); err != nil {
		return nil, err
	}
	defer m.mu.Unlock()
	return m.revocations(serial, spiffeID), nil
}

// revocations returns copies of the entries for serial, then spiffeID; nil
// if none.
func (m *Mem) revocations(serial, spiffeID string) []store.Revocation {
	var out []store.Revocation
	if r, ok := m.bySerial[serial]; ok && serial != "" {
		out = append(out, clone(r))
	}
	if spiffeID != "" {
		for _, r := range m.byID[spiffeID] {
			out = append(out, clone(r))
		}
	}
	return out
}

// PruneRevocations implements store.Store.
func (m *Mem) PruneRevocations(ctx context.Context, cutoff time.Time) (int, error) {
	if err := m.lock(ctx); err != nil {
		return 0, err
	}
	defer m.mu.Unlock()
	expired := func(r store.Revocation) bool { return !r.ExpiresAt.IsZero() && r.ExpiresAt.Before(cutoff) }
	n := 0
	for serial, r := range m.bySerial {
		if expired(r) {
			delete(m.bySerial, serial)
			n++
		}
	}
	for id, revs := range m.byID {
		kept := slices.DeleteFunc(revs, expired)
		n += len(revs) - len(kept)
		if len(kept) == 0 {
			delete(m.byID, id)
		} else {
			m.byID[id] = kept
		}
	}
	return n, nil
}

// CreateJoinToken implements store.Store.
func (m *Mem) CreateJoinToken(ctx context.Context, t store.JoinToken) error {
	if err := m.lock(ctx); err != nil {
		return err
	}
	defer m.mu.Unlock()
	switch {
	case t.Hash == "" || t.SPIFFEID == "":
		return errors.New("storetest: join token: a hash and a SPIFFE ID are required")
	case !t.UsedAt.IsZero() || !t.ExpiresAt.After(t.CreatedAt):
		return errors.New("storetest: join token must be unused and expire after its creation")
	}
	if _, ok := m.tokens[t.Hash]; ok {
		return errors.New("storetest: join token already exists")
	}
	m.tokens[t.Hash] = clone(t)
	return nil
}

// ConsumeJoinToken implements store.Store.
func (m *Mem) ConsumeJoinToken(ctx context.Context, hash string, now time.Time, usedBy string) (*store.JoinToken, error) {
	if err := m.lock(ctx); err != nil {
		return nil, err
	}
	defer m.mu.Unlock()
	t, ok := m.tokens[hash]
	if !ok {
		return nil, fmt.Errorf("%w: %w", store.ErrNotFound, store.ErrJoinTokenUnknown)
	}
	before := clone(t)
	switch {
	case !t.UsedAt.IsZero():
		return &before, store.ErrJoinTokenUsed
	case !now.Before(t.ExpiresAt):
		return &before, store.ErrJoinTokenExpired
	}
	t.UsedAt, t.UsedBy = now, usedBy
	m.tokens[hash] = clone(t)
	return &before, nil
}

// PruneJoinTokens implements store.Store.
func (m *Mem) PruneJoinTokens(ctx context.Context, cutoff time.Time) (int, error) {
	if err := m.lock(ctx); err != nil {
		return 0, err
	}
	defer m.mu.Unlock()
	n := 0
	for hash, t := range m.tokens {
		if t.ExpiresAt.Before(cutoff) {
			delete(m.tokens, hash)
			n++
		}
	}
	return n, nil
}

// SaveFederatedBundle implements store.Store.
func (m *Mem) SaveFederatedBundle(ctx context.Context, b store.FederatedBundle) error {
	if err := m.lock(ctx); err != nil {
		return err
	}
	defer m.mu.Unlock()
	if err := store.CheckFederatedBundle(&b); err != nil {
		return fmt.Errorf("storetest: save federated bundle: %w", err)
	}
	m.federated[b.TrustDomain] = clone(b)
	return nil
}

// FederatedBundles implements store.Store.
func (m *Mem) FederatedBundles(ctx context.Context) ([]store.FederatedBundle, error) {
	if err := m.lock(ctx); err != nil {
		return nil, err
	}
	defer m.mu.Unlock()
	var out []store.FederatedBundle
	for _, td := range slices.Sorted(maps.Keys(m.federated)) {
		out = append(out, clone(m.federated[td]))
	}
	return out, nil
}

// DeleteFederatedBundle implements store.Store.
func (m *Mem) DeleteFederatedBundle(ctx context.Context, trustDomain string) error {
	if err := m.lock(ctx); err != nil {
		return err
	}
	defer m.mu.Unlock()
	delete(m.federated, trustDomain)
	return nil
}

// Close implements store.Store; every later call fails with ErrClosed.
func (m *Mem) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.closed = true
	return nil
}

// Ping implements store.Store: an open Mem can always record.
func (m *Mem) Ping(ctx context.Context) error {
	if err := m.lock(ctx); err != nil {
		return err
	}
	m.mu.Unlock()
	return nil
}
