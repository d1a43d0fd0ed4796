package sds

import (
	"context"
	"errors"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshca/meshca/internal/clock"
	"github.com/meshca/meshca/internal/jwtsvid"
)

// DefaultJWTBundleRefresh is how often the JWTCache asks the CA for its JWT
// bundle once a workload has used the JWT profile. A CA alone publishes a
// new key hours before it signs with it; a CA replica that starts beside
// others publishes its key two minutes (ca.DefaultJWTPublishDelay) before,
// which this must stay well under.
const DefaultJWTBundleRefresh = time.Minute

// missRefreshEvery bounds how often a token signed by a key not in the
// bundle makes the cache ask the CA again (RefreshAfterMiss): tokens with
// made-up key IDs must not turn into CA calls.
const missRefreshEvery = 10 * time.Second

// maxCachedJWTSVIDs bounds the JWT-SVIDs cached (one per audience set).
const maxCachedJWTSVIDs = 256

// JWTCA is what the JWTCache needs of the CA: ca/client.Client is one.
type JWTCA interface {
	// MintJWTSVID returns a JWT-SVID for the audiences, proving the
	// workload with token (or, when empty, the client's certificate).
	MintJWTSVID(ctx context.Context, audiences []string, token string) (string, error)
	// JWTBundle returns the trust domain's JWT bundle.
	JWTBundle(ctx context.Context, td spiffeid.TrustDomain) (*jwtbundle.Bundle, error)
}

// JWTConfig configures a JWTCache. CA and ID are required.
type JWTConfig struct {
	// ID is the workload's SPIFFE ID (its trust domain's bundle is
	// fetched).
	ID spiffeid.ID
	CA JWTCA
	// Token returns the credential sent with a request; nil sends none
	// (the CA client presents the X.509-SVID over mTLS).
	Token func(ctx context.Context) (string, error)
	// BundleRefresh is how often the bundle is fetched again. Default
	// DefaultJWTBundleRefresh.
	BundleRefresh time.Duration
	// Clock and Logger default to the wall clock and discarding.
	Clock  clock.Clock
	Logger *slog.Logger
}

// JWTCache gives a workload its JWT-SVIDs, one per audience set, cached
// and renewed at half their lifetime, and the JWT bundle, fetched from the
// CA when first wanted and again every BundleRefresh while Run runs.
type JWTCache struct {
	cfg JWTConfig

	mu      sync.Mutex
	svids   map[string]cachedJWT // by audience set (sorted, joined)
	bundle  *jwtbundle.Bundle    // nil before the first fetch
	changed chan struct{}        // closed when bundle changes
	wanted  bool                 // a workload has used the JWT profile
	fetched time.Time            // when the CA was last asked
	missing chan struct{}        // closed when RefreshAfterMiss's fetch ends; nil: none
}

type cachedJWT struct {
	token         string
	renew, expiry time.Time
}

// NewJWTCache returns a cache for cfg.
func NewJWTCache(cfg JWTConfig) (*JWTCache, error) {
	if cfg.CA == nil || cfg.ID.IsZero() {
		return nil, errors.New("sds: a CA and a SPIFFE ID are required for JWT-SVIDs")
	}
	if cfg.BundleRefresh <= 0 {
		cfg.BundleRefresh = DefaultJWTBundleRefresh
	}
	cfg.Clock = clock.OrReal(cfg.Clock)
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &JWTCache{cfg: cfg, svids: map[string]cachedJWT{}, changed: make(chan struct{})}, nil
}

// ID is the workload's SPIFFE ID.
func (c *JWTCache) ID() spiffeid.ID { return c.cfg.ID }

// Now is the cache's clock.
func (c *JWTCache) Now() time.Time { return c.cfg.Clock.Now() }

// FetchJWTSVID returns a JWT-SVID for the audiences: the cached one while
// it is in the first half of its life, else a new one from the CA.
func (c *JWTCache) FetchJWTSVID(ctx context.Context, audiences []string) (string, error) {
	key := audienceKey(audiences)
	now := c.cfg.Clock.Now()
	c.mu.Lock()
	c.wanted = true
	e, ok := c.svids[key]
	c.mu.Unlock()
	if ok && now.Before(e.renew) {
		return e.token, nil
	}
	var token string
	if c.cfg.Token != nil {
		t, err := c.cfg.Token(ctx)
		if err != nil {
			return "", err
		}
		token = t
	}
	svid, err := c.cfg.CA.MintJWTSVID(ctx, audiences, token)
	if err != nil {
		if ok && now.Before(e.expiry) { // the CA is down: the old one still works
			c.cfg.Logger.Warn("JWT-SVID renewal failed; serving the cached one", "audience", audiences, "err", err)
			return e.token, nil
		}
		return "", err
	}
	t, err := jwtsvid.Parse(svid)
	if err != nil {
		return "", err
	}
	iat := t.IssuedAt
	if iat.IsZero() || iat.After(now) {
		iat = now
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.svids) >= maxCachedJWTSVIDs {
		maps.DeleteFunc(c.svids, func(_ string, v cachedJWT) bool { return !now.Before(v.expiry) })
		if len(c.svids) >= maxCachedJWTSVIDs {
			clear(c.svids)
		}
	}
	c.svids[key] = cachedJWT{token: svid, renew: iat.Add(t.ExpiresAt.Sub(iat) / 2), expiry: t.ExpiresAt}
	return svid, nil
}

// audienceKey names an audience set: the same audiences in any order and
// with repeats share one token.
func audienceKey(aud []string) string {
	s := slices.Clone(aud)
	slices.Sort(s)
	return strings.Join(slices.Compact(s), "\x00")
}

// Bundle returns the JWT bundle (nil before the first fetch) and a channel
// closed when it next changes. A first call fetches it from the CA (within
// ctx), and makes Run fetch it again every BundleRefresh; if that fetch
// fails, Bundle returns nil and the error, and Run tries again.
func (c *JWTCache) Bundle(ctx context.Context) (*jwtbundle.Bundle, <-chan struct{}, error) {
	c.mu.Lock()
	c.wanted = true
	b, ch := c.bundle, c.changed
	c.mu.Unlock()
	if b != nil {
		return b, ch, nil
	}
	if err := c.Refresh(ctx); err != nil {
		return nil, ch, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.bundle, c.changed, nil
}

// Refresh fetches the JWT bundle from the CA now, and publishes it if it
// changed.
func (c *JWTCache) Refresh(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	c.mu.Lock()
	c.fetched = c.cfg.Clock.Now()
	c.mu.Unlock()
	b, err := c.cfg.CA.JWTBundle(ctx, c.cfg.ID.TrustDomain())
	if err != nil {
		c.cfg.Logger.Warn("fetching the JWT bundle failed", "err", err)
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.bundle != nil && c.bundle.Equal(b) {
		return nil
	}
	c.bundle = b
	close(c.changed)
	c.changed = make(chan struct{})
	c.cfg.Logger.Info("JWT bundle updated", "keys", len(b.JWTAuthorities()))
	return nil
}

// RefreshAfterMiss is called after a token was signed by a key not in
// tried, the bundle Bundle returned (a CA replica's new key may be
// younger than the last fetch). It fetches the bundle again unless the CA
// was asked less than 10 s ago, and reports whether the bundle held now
// differs from tried. Misses at the same moment share one fetch, which runs
// on its own: a caller that gives up (its ctx ends) stops waiting, and the
// others still get the fetch's outcome.
func (c *JWTCache) RefreshAfterMiss(ctx context.Context, tried *jwtbundle.Bundle) bool {
	c.mu.Lock()
	wait := c.missing
	if wait == nil {
		if c.cfg.Clock.Now().Sub(c.fetched) < missRefreshEvery {
			defer c.mu.Unlock()
			return c.bundle != tried
		}
		wait = make(chan struct{})
		c.missing = wait
		go func() {
			_ = c.Refresh(context.WithoutCancel(ctx)) // logged; bounded by Refresh's own timeout
			c.mu.Lock()
			close(wait)
			c.missing = nil
			c.mu.Unlock()
		}()
	}
	c.mu.Unlock()
	select {
	case <-wait:
	case <-ctx.Done():
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.bundle != tried
}

// Run fetches the bundle every BundleRefresh once a workload has used the
// JWT profile, until ctx ends.
func (c *JWTCache) Run(ctx context.Context) error {
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-c.cfg.Clock.After(c.cfg.BundleRefresh):
		}
		c.mu.Lock()
		wanted := c.wanted
		c.mu.Unlock()
		if wanted {
			_ = c.Refresh(ctx) // logged; tried again at the next tick
		}
	}
}
