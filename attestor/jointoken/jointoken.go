// Package jointoken attests machines outside Kubernetes with single-use join
// tokens: random bearer tokens, each bound to one SPIFFE ID, stored only as a
// hash, and consumed atomically by the first CSR that presents them.
package jointoken

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshca/meshca/attestor"
	"github.com/meshca/meshca/ca/store"
	"github.com/meshca/meshca/internal/clock"
)

// Kind is the credential kind recorded for join tokens.
const Kind = "join-token"

// Prefix starts every join token, so the attestor chain can tell a join
// token from a JWT without trying it.
const Prefix = "meshca-jt."

// MaxTTL bounds a join token's lifetime: it is a bootstrap secret.
const MaxTTL = 30 * 24 * time.Hour

// Store is the part of store.Store join tokens need.
type Store interface {
	CreateJoinToken(ctx context.Context, t store.JoinToken) error
	ConsumeJoinToken(ctx context.Context, hash string, now time.Time, usedBy string) (*store.JoinToken, error)
}

// Hash returns the stored form of a token.
func Hash(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:])
}

// Create makes a random token for id valid for ttl from now, stores its
// hash, and returns the token: the only time it exists in clear.
func Create(ctx context.Context, st Store, id spiffeid.ID, ttl time.Duration, now time.Time) (string, store.JoinToken, error) {
	if id.IsZero() {
		return "", store.JoinToken{}, errors.New("jointoken: a SPIFFE ID is required")
	}
	if ttl <= 0 || ttl > MaxTTL {
		return "", store.JoinToken{}, fmt.Errorf("jointoken: TTL %s must be positive and at most %s", ttl, MaxTTL)
	}
	var raw [32]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return "", store.JoinToken{}, err
	}
	token := Prefix + base64.RawURLEncoding.EncodeToString(raw[:])
	rec := store.JoinToken{Hash: Hash(token), SPIFFEID: id.String(), CreatedAt: now, ExpiresAt: now.Add(ttl)}
	if err := st.CreateJoinToken(ctx, rec); err != nil {
		return "", store.JoinToken{}, fmt.Errorf("jointoken: %w", err)
	}
	return token, rec, nil
}

// Attestor consumes join tokens presented as bearer tokens.
type Attestor struct {
	store Store
	clock clock.Clock
	log   *slog.Logger
}

// New returns the join token attestor. Nil clock and logger get defaults.
func New(st Store, clk clock.Clock, log *slog.Logger) *Attestor {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Attestor{store: st, clock: clock.OrReal(clk), log: log}
}

// Attest implements attestor.Attestor. The token is consumed here, before
// the CSR is checked: a join token buys one attempt, as in SPIRE.
func (a *Attestor) Attest(ctx context.Context, c attestor.Credential) (attestor.Identity, error) {
	if !strings.HasPrefix(c.BearerToken, Prefix) {
		return attestor.Identity{}, attestor.ErrNoCredential
	}
	hash := Hash(c.BearerToken)
	now := a.clock.Now()
	tok, err := a.store.ConsumeJoinToken(ctx, hash, now, c.Peer)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return attestor.Identity{}, fmt.Errorf("%w: unknown join token", attestor.ErrUnauthenticated)
	case errors.Is(err, store.ErrJoinTokenUsed):
		a.log.Warn("join token replayed", "spiffe_id", tok.SPIFFEID, "token", hash[:16],
			"first_used_at", tok.UsedAt, "first_used_by", tok.UsedBy, "replayed_by", c.Peer)
		return attestor.Identity{}, fmt.Errorf("%w: join token already used", attestor.ErrUnauthenticated)
	case errors.Is(err, store.ErrJoinTokenExpired):
		return attestor.Identity{}, fmt.Errorf("%w: join token expired at %s", attestor.ErrUnauthenticated, tok.ExpiresAt.UTC().Format(time.RFC3339))
	case err != nil:
		return attestor.Identity{}, fmt.Errorf("jointoken: %w", err)
	}
	id, err := spiffeid.FromString(tok.SPIFFEID)
	if err != nil {
		return attestor.Identity{}, fmt.Errorf("jointoken: stored SPIFFE ID: %w", err)
	}
	return attestor.Identity{ID: id, Kind: Kind, Subject: "join-token:" + hash[:16]}, nil
}
