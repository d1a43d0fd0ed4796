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
	"github.com/meshca/meshca/internal/clock"
)

// Kind is the credential kind recorded for join tokens.
const Kind = "join-token"

// Prefix starts every join token, so the attestor chain can tell a join
// token from a JWT without trying it.
const Prefix = "meshca-jt."

// MaxTTL bounds a join token's lifetime: it is a bootstrap secret.
const MaxTTL = 30 * 24 * time.Hour

// Errors a Store returns from ConsumeJoinToken.
var (
	// ErrUnknown: no token with this hash is stored (it never was, or it
	// expired and was pruned).
	ErrUnknown = errors.New("jointoken: unknown token")
	// ErrUsed: the token was already consumed; this is a replay.
	ErrUsed = errors.New("jointoken: token already used")
	// ErrExpired: the token expired before it was used.
	ErrExpired = errors.New("jointoken: token expired")
)

// Token is a stored join token: single-use, bound to one SPIFFE ID. Only a
// hash of the token is stored.
type Token struct {
	// Hash is the lowercase hex SHA-256 of the token (see Hash).
	Hash      string    `json:"hash"`
	SPIFFEID  string    `json:"spiffe_id"`
	CreatedAt time.Time `json:"created_at"`
	ExpiresAt time.Time `json:"expires_at"`
	// UsedAt and UsedBy are set when the token is consumed.
	UsedAt time.Time `json:"used_at,omitzero"`
	UsedBy string    `json:"used_by,omitempty"`
}

// Store keeps join tokens. The CA's store implements it.
type Store interface {
	// CreateJoinToken stores a new, unused token; a token with the same
	// hash already stored is an error.
	CreateJoinToken(ctx context.Context, t Token) error
	// ConsumeJoinToken marks the token with this hash used by usedBy at
	// now, atomically: of any number of concurrent or later calls (on any
	// replica sharing the store) exactly one succeeds, and it returns the
	// token as it was before. Otherwise it returns ErrUnknown, or the
	// stored token with ErrUsed (a replay) or ErrExpired (now is at or
	// after ExpiresAt). A used token is kept until it expires, so a replay
	// is told from an unknown token.
	ConsumeJoinToken(ctx context.Context, hash string, now time.Time, usedBy string) (*Token, error)
}

// Hash returns the stored form of a token.
func Hash(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:])
}

// Create makes a random token for id valid for ttl from now, stores its
// hash, and returns the token: the only time it exists in clear.
func Create(ctx context.Context, st Store, id spiffeid.ID, ttl time.Duration, now time.Time) (string, Token, error) {
	if id.IsZero() {
		return "", Token{}, errors.New("jointoken: a SPIFFE ID is required")
	}
	if ttl <= 0 || ttl > MaxTTL {
		return "", Token{}, fmt.Errorf("jointoken: TTL %s must be positive and at most %s", ttl, MaxTTL)
	}
	var raw [32]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return "", Token{}, err
	}
	token := Prefix + base64.RawURLEncoding.EncodeToString(raw[:])
	rec := Token{Hash: Hash(token), SPIFFEID: id.String(), CreatedAt: now, ExpiresAt: now.Add(ttl)}
	if err := st.CreateJoinToken(ctx, rec); err != nil {
		return "", Token{}, fmt.Errorf("jointoken: %w", err)
	}
	return token, rec, nil
}

// Attestor consumes join tokens presented as bearer tokens.
type Attestor struct {
	store Store
	clock clock.Clock
	log   *slog.Logger
}

// Config configures the join token attestor.
type Config struct {
	// Store consumes the tokens. Required.
	Store Store
	// Clock judges expiry. Default the wall clock.
	Clock clock.Clock
	// Logger receives replays. Default discarding.
	Logger *slog.Logger
}

// New returns the join token attestor.
func New(cfg Config) (*Attestor, error) {
	if cfg.Store == nil {
		return nil, errors.New("jointoken: a store is required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Attestor{store: cfg.Store, clock: clock.OrReal(cfg.Clock), log: cfg.Logger}, nil
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
	case errors.Is(err, ErrUnknown):
		return attestor.Identity{}, fmt.Errorf("%w: unknown join token", attestor.ErrUnauthenticated)
	case errors.Is(err, ErrUsed):
		a.log.Warn("join token replayed", "spiffe_id", tok.SPIFFEID, "token", hash[:16],
			"first_used_at", tok.UsedAt, "first_used_by", tok.UsedBy, "replayed_by", c.Peer)
		return attestor.Identity{}, fmt.Errorf("%w: join token already used", attestor.ErrUnauthenticated)
	case errors.Is(err, ErrExpired):
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
