package boltstore_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshca/meshca/ca/store"
)

// The contract (replays, expiry, one winner, pruning) is checked by
// storetest.Run in TestContract; these tests cover what is boltstore's own.

func tokenHash(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:])
}

func TestCreateJoinTokenInvalid(t *testing.T) {
	ctx := context.Background()
	s := open(t, "")
	now := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	id := "spiffe://example.org/vm/web-1"
	tests := []struct {
		name string
		t    store.JoinToken
	}{
		{"short hash", store.JoinToken{Hash: "abc", SPIFFEID: id, CreatedAt: now, ExpiresAt: now.Add(time.Hour)}},
		{"uppercase hash", store.JoinToken{Hash: strings.ToUpper(tokenHash("x")), SPIFFEID: id, CreatedAt: now, ExpiresAt: now.Add(time.Hour)}},
		{"SPIFFE ID with NUL", store.JoinToken{Hash: tokenHash("y"), SPIFFEID: id + "\x00", CreatedAt: now, ExpiresAt: now.Add(time.Hour)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := s.CreateJoinToken(ctx, tt.t)
			if err == nil || !strings.HasPrefix(err.Error(), "boltstore: ") {
				t.Fatalf("CreateJoinToken: got %v, want a boltstore error", err)
			}
		})
	}
}

// TestJoinTokenUseSurvivesRestart: a replay after a restart is still a
// replay.
func TestJoinTokenUseSurvivesRestart(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "meshca.db")
	s := open(t, path)
	now := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	h := tokenHash("good")
	if err := s.CreateJoinToken(ctx, store.JoinToken{Hash: h, SPIFFEID: "spiffe://example.org/vm/1", CreatedAt: now, ExpiresAt: now.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.ConsumeJoinToken(ctx, h, now, "10.0.0.1:5000"); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = open(t, path)
	tok, err := s.ConsumeJoinToken(ctx, h, now.Add(time.Minute), "10.0.0.2:5000")
	if !errors.Is(err, store.ErrJoinTokenUsed) || tok == nil || tok.UsedBy != "10.0.0.1:5000" {
		t.Fatalf("replay after restart = %+v, %v", tok, err)
	}
}
