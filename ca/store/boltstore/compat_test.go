package boltstore_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/meshca/meshca/ca/store"
)

// TestReadsOlderFile opens testdata/v1.db, written by boltstore as it was
// before the store redesign (commit a47487d): a CA state, three issuance
// records, a revocation by serial and one by SPIFFE ID, and two join tokens,
// the second used. Everything must read as it was written.
func TestReadsOlderFile(t *testing.T) {
	ctx := context.Background()
	data, err := os.ReadFile(filepath.Join("testdata", "v1.db"))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "meshca.db")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	s := open(t, path)

	key := &store.CAKey{CertDER: []byte("cert"), Key: store.SealedKey{Alg: "aes-256-gcm", KeyID: "k1", Nonce: []byte{1, 2}, Data: []byte("sealed")}}
	st, err := s.LoadCAState(ctx)
	if want := (store.CAState{Version: 1, Root: key, Active: key}); err != nil || !reflect.DeepEqual(*st, want) {
		t.Errorf("LoadCAState: got (%+v, %v), want %+v", st, err, want)
	}

	const idA, idB = "spiffe://example.org/a", "spiffe://example.org/b"
	issuance := func(serial, id string, i int) store.Issuance {
		at := t0.Add(time.Duration(i) * time.Hour)
		return store.Issuance{Serial: serial, SPIFFEID: id, NotBefore: at.Add(-time.Minute), NotAfter: at.Add(24 * time.Hour),
			PublicKeySHA256: strings.Repeat("e", 64), CredentialKind: "mtls", Requester: "01", Peer: "10.0.0.1:4242", IssuedAt: at, Details: map[string]string{"node": "n1"}}
	}
	bySerial := store.Revocation{Serial: "0b", RevokedAt: t0.Add(3 * time.Hour), Reason: "key compromise"}
	byID := store.Revocation{SPIFFEID: idA, RevokedAt: t0.Add(90 * time.Minute), Reason: "decommissioned"}
	want := []store.IssuanceWithRevocations{
		{Issuance: issuance("0a", idA, 0), Revocations: []store.Revocation{byID}},
		{Issuance: issuance("0b", idB, 1), Revocations: []store.Revocation{bySerial}},
		{Issuance: issuance("0c", idA, 2), Revocations: []store.Revocation{byID}},
	}
	recs, err := s.Issuances(ctx, store.IssuanceFilter{})
	if err != nil || !reflect.DeepEqual(recs, want) {
		t.Errorf("Issuances: got (%+v, %v), want %+v", recs, err, want)
	}

	// Entries written before ExpiresAt existed are never pruned.
	if n, err := s.PruneRevocations(ctx, time.Date(3000, 1, 1, 0, 0, 0, 0, time.UTC)); err != nil || n != 0 {
		t.Errorf("PruneRevocations: got (%d, %v), want nothing pruned", n, err)
	}
	if revs, err := s.Revocations(ctx, "0b", idA); err != nil || !reflect.DeepEqual(revs, []store.Revocation{bySerial, byID}) {
		t.Errorf("Revocations: got (%+v, %v)", revs, err)
	}

	if tok, err := s.ConsumeJoinToken(ctx, strings.Repeat("a", 64), t0.Add(time.Minute), "x"); err != nil || tok.SPIFFEID != "spiffe://example.org/vm" {
		t.Errorf("ConsumeJoinToken of the unused token: (%+v, %v)", tok, err)
	}
	tok, err := s.ConsumeJoinToken(ctx, strings.Repeat("b", 64), t0.Add(time.Minute), "x")
	if !errors.Is(err, store.ErrJoinTokenUsed) || tok == nil || tok.UsedBy != "10.0.0.2:5000" || !tok.UsedAt.Equal(t0.Add(time.Minute)) {
		t.Errorf("ConsumeJoinToken of the used token: (%+v, %v), want a replay", tok, err)
	}
}
