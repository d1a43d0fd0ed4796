package boltstore_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/meshca/meshca/ca/store"
)

func tokenHash(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:])
}

func TestJoinTokens(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "meshca.db")
	s := open(t, path)
	now := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	id := "spiffe://example.org/vm/web-1"
	mk := func(name string, ttl time.Duration) string {
		h := tokenHash(name)
		if err := s.CreateJoinToken(ctx, store.JoinToken{Hash: h, SPIFFEID: id, CreatedAt: now, ExpiresAt: now.Add(ttl)}); err != nil {
			t.Fatal(err)
		}
		return h
	}
	good, short := mk("good", time.Hour), mk("short", time.Minute)

	if err := s.CreateJoinToken(ctx, store.JoinToken{Hash: good, SPIFFEID: id, CreatedAt: now, ExpiresAt: now.Add(time.Hour)}); err == nil {
		t.Error("a second token with the same hash was stored")
	}
	for name, bad := range map[string]store.JoinToken{
		"short hash":       {Hash: "abc", SPIFFEID: id, CreatedAt: now, ExpiresAt: now.Add(time.Hour)},
		"no SPIFFE ID":     {Hash: tokenHash("x"), CreatedAt: now, ExpiresAt: now.Add(time.Hour)},
		"expires at birth": {Hash: tokenHash("y"), SPIFFEID: id, CreatedAt: now, ExpiresAt: now},
		"already used":     {Hash: tokenHash("z"), SPIFFEID: id, CreatedAt: now, ExpiresAt: now.Add(time.Hour), UsedAt: now},
	} {
		if err := s.CreateJoinToken(ctx, bad); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}

	tok, err := s.ConsumeJoinToken(ctx, good, now.Add(time.Minute), "10.0.0.1:5000")
	if err != nil || tok.SPIFFEID != id || !tok.UsedAt.IsZero() {
		t.Fatalf("first use = %+v, %v", tok, err)
	}
	if _, err := s.ConsumeJoinToken(ctx, good, now.Add(2*time.Minute), "10.0.0.2:5000"); !errors.Is(err, store.ErrJoinTokenUsed) {
		t.Fatalf("replay = %v, want ErrJoinTokenUsed", err)
	}
	if _, err := s.ConsumeJoinToken(ctx, short, now.Add(time.Minute), "x"); !errors.Is(err, store.ErrJoinTokenExpired) {
		t.Fatalf("expired = %v, want ErrJoinTokenExpired", err)
	}
	if _, err := s.ConsumeJoinToken(ctx, tokenHash("never issued"), now, "x"); !errors.Is(err, store.ErrJoinTokenUnknown) || !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("unknown = %v, want ErrJoinTokenUnknown and ErrNotFound", err)
	}

	// The use survives a restart: a replay after it is still a replay.
	s.Close()
	s = open(t, path)
	if _, err := s.ConsumeJoinToken(ctx, good, now.Add(3*time.Minute), "x"); !errors.Is(err, store.ErrJoinTokenUsed) {
		t.Fatalf("replay after restart = %v", err)
	}

	n, err := s.PruneJoinTokens(ctx, now.Add(30*time.Minute))
	if err != nil || n != 1 {
		t.Fatalf("prune = %d, %v; want the one expired token", n, err)
	}
	if _, err := s.ConsumeJoinToken(ctx, short, now, "x"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("pruned token still there: %v", err)
	}
}

// TestJoinTokenConsumedOnce: of many concurrent uses exactly one wins.
func TestJoinTokenConsumedOnce(t *testing.T) {
	ctx := context.Background()
	s := open(t, filepath.Join(t.TempDir(), "meshca.db"))
	now := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	h := tokenHash("race")
	if err := s.CreateJoinToken(ctx, store.JoinToken{Hash: h, SPIFFEID: "spiffe://example.org/vm/1", CreatedAt: now, ExpiresAt: now.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	var (
		wg            sync.WaitGroup
		mu            sync.Mutex
		wins, replays int
	)
	for range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := s.ConsumeJoinToken(ctx, h, now, "x")
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				wins++
			case errors.Is(err, store.ErrJoinTokenUsed):
				replays++
			default:
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if wins != 1 || replays != 49 {
		t.Fatalf("%d uses succeeded and %d were replays; want 1 and 49", wins, replays)
	}
}
