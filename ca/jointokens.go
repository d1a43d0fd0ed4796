package ca

import (
	"context"
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshca/meshca/attestor/jointoken"
)

// DefaultJoinTokenTTL is a join token's lifetime when none is asked for.
const DefaultJoinTokenTTL = time.Hour

// CreateJoinToken makes a single-use join token bound to id, valid for ttl
// (zero: DefaultJoinTokenTTL, at most jointoken.MaxTTL), and returns the
// token, shown this once, and its stored record (which holds only a hash).
func (a *Authority) CreateJoinToken(ctx context.Context, id spiffeid.ID, ttl time.Duration) (string, jointoken.Token, error) {
	if ttl == 0 {
		ttl = DefaultJoinTokenTTL
	}
	switch {
	case id.TrustDomain() != a.cfg.TrustDomain:
		return "", jointoken.Token{}, fmt.Errorf("ca: %w: %s is not in trust domain %s", ErrInvalidJoinToken, id, a.cfg.TrustDomain.Name())
	case ttl < 0 || ttl > jointoken.MaxTTL:
		return "", jointoken.Token{}, fmt.Errorf("ca: %w: ttl %s must be positive and at most %s", ErrInvalidJoinToken, ttl, jointoken.MaxTTL)
	}
	token, rec, err := jointoken.Create(ctx, a.cfg.Store, id, ttl, a.cfg.Clock.Now())
	if err != nil {
		return "", jointoken.Token{}, fmt.Errorf("ca: %w", err)
	}
	return token, rec, nil
}
