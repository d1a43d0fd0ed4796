package boltstore_test

import (
	"context"
	"errors"
	"path/filepath"
	"testing"

	"github.com/meshca/meshca/ca/store"
	"github.com/meshca/meshca/internal/storetest"
)

// TestIssuedRequestDurable: an answer and its record are in the data file
// when RecordIssuanceOnce returns, found again after a reopen; a journaled
// record's serial is refused for an answer.
func TestIssuedRequestDurable(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "meshca.db")
	s := open(t, path)
	if err := s.RecordIssuance(ctx, storetest.Issuance("0a", "spiffe://example.org/a", 1, 2)); err != nil {
		t.Fatal(err)
	}
	if err := s.RecordIssuanceOnce(ctx, storetest.Issuance("0a", "spiffe://example.org/a", 1, 2), storetest.Answer("pcr/a", "0a")); err == nil {
		t.Fatal("an answer recorded with the serial of a journaled record")
	}
	if err := s.RecordIssuanceOnce(ctx, storetest.Issuance("0b", "spiffe://example.org/b", 1, 2), storetest.Answer("pcr/b", "0b")); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = open(t, path)
	if got, err := s.IssuedRequest(ctx, "pcr/b"); err != nil || got.Serial != "0b" {
		t.Fatalf("answer after reopen: (%+v, %v)", got, err)
	}
	if _, err := s.IssuedRequest(ctx, "pcr/a"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("refused answer found after reopen: %v", err)
	}
	for _, serial := range []string{"0a", "0b"} {
		if _, err := s.Issuance(ctx, serial); err != nil {
			t.Errorf("record %s after reopen: %v", serial, err)
		}
	}
	if err := s.Check(ctx); err != nil {
		t.Error(err)
	}
}
