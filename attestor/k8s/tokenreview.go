package k8s

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4/jwt"
	"golang.org/x/sync/singleflight"
	authnv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/cache"
	"k8s.io/client-go/kubernetes"

	"github.com/meshca/meshca/attestor"
	"github.com/meshca/meshca/attestor/jwks"
)

// Reviewer sends one TokenReview.
type Reviewer interface {
	Review(ctx context.Context, token string, audiences []string) (authnv1.TokenReviewStatus, error)
}

// ClientReviewer sends TokenReviews through client-go. The client's QPS and
// Burst (rest.Config) bound the rate of reviews: client-go's default of 5
// QPS is far too low for a CA; set it explicitly (meshca's --k8s-qps).
type ClientReviewer struct{ Client kubernetes.Interface }

// Review implements Reviewer.
func (r ClientReviewer) Review(ctx context.Context, token string, audiences []string) (authnv1.TokenReviewStatus, error) {
	tr, err := r.Client.AuthenticationV1().TokenReviews().Create(ctx, &authnv1.TokenReview{
		Spec: authnv1.TokenReviewSpec{Token: token, Audiences: audiences},
	}, metav1.CreateOptions{})
	if err != nil {
		return authnv1.TokenReviewStatus{}, err
	}
	return tr.Status, nil
}

// CacheConfig bounds the TokenReview caches. Zero fields get defaults.
//
// Successes and refusals are cached apart, so however many refused tokens
// arrive (forged ones pass the offline checks), they can never evict a
// success: only other successes, that is other real workloads, can.
type CacheConfig struct {
	// Size is the most successful reviews remembered. Default 10,000;
	// negative is an error.
	Size int
	// TTL is how long a positive review is trusted, never past the token's
	// own expiry. Default 1 minute: a ServiceAccount deleted meanwhile can
	// get certificates for at most that long.
	TTL time.Duration
	// NegativeSize is the most refused tokens remembered. Default 1,000;
	// negative is an error.
	NegativeSize int
	// NegativeTTL is how long a refused token stays refused without asking
	// again, to keep a flood of bad tokens off the API server. Default 5s.
	NegativeTTL time.Duration
}

// TokenReviewAttestor asks the API server about each token it has not seen
// recently.
type TokenReviewAttestor struct {
	cfg      Config
	cc       CacheConfig
	issuer   string
	reviewer Reviewer
	// cache and refused map a token's SHA-256 to its *cachedReview:
	// successes and refusals apart. Their clock is cfg.Clock, so a fake
	// clock in tests drives expiry.
	cache, refused *cache.LRUExpireCache
	// slots bounds the reviews in flight: a send holds one.
	slots chan struct{}
	// reviews shares one review among concurrent calls with the same
	// token, keyed like cache: never by the token itself.
	reviews singleflight.Group
}

type reviewResult struct {
	id  attestor.Identity
	err error
}

// cachedReview is a review result and when it stops being trusted. The
// cache measures a TTL from when the entry is added, after the review came
// back; the result's lifetime runs from before the review was sent, so the
// entry carries its own deadline, which is the one that counts.
type cachedReview struct {
	res     reviewResult
	expires time.Time
}

// flight is what one shared review hands every caller waiting on it.
type flight struct {
	res reviewResult
	hit bool // answered from the cache, not by a review
}

// TokenReviewConfig configures NewTokenReview.
type TokenReviewConfig struct {
	// Config holds the settings every Kubernetes attestor shares.
	Config
	// Reviewer sends TokenReviews to the API server. Required.
	Reviewer Reviewer
	// Cache bounds the review caches; zero fields get CacheConfig's
	// defaults.
	Cache CacheConfig
	// Issuer is the "iss" every token must carry, checked offline before
	// any review. Default DefaultIssuer.
	Issuer string
	// MaxInFlight bounds the TokenReviews being sent at once. A review
	// beyond it waits for a slot until the context of the request that
	// needs it ends, so a burst of tokens queues instead of failing, and
	// neither the API server nor client-go's rate limiter sees more than
	// MaxInFlight at a time. Default 16; negative is an error.
	MaxInFlight int
}

// DefaultMaxInFlight is TokenReviewConfig.MaxInFlight's default.
const DefaultMaxInFlight = 16

// NewTokenReview returns the TokenReview attestor.
func NewTokenReview(tc TokenReviewConfig) (*TokenReviewAttestor, error) {
	cfg, r, cc := tc.Config, tc.Reviewer, tc.Cache
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	if r == nil {
		return nil, errors.New("k8s: a TokenReview reviewer is required")
	}
	for _, n := range []struct {
		what string
		v    *int
		def  int
	}{
		{"TokenReview cache size", &cc.Size, 10_000},
		{"TokenReview negative cache size", &cc.NegativeSize, 1_000},
		{"TokenReview MaxInFlight", &tc.MaxInFlight, DefaultMaxInFlight},
	} {
		switch {
		case *n.v == 0:
			*n.v = n.def
		case *n.v < 0:
			return nil, fmt.Errorf("k8s: %s %d is negative", n.what, *n.v)
		}
	}
	if cc.TTL == 0 {
		cc.TTL = time.Minute
	}
	if cc.NegativeTTL == 0 {
		cc.NegativeTTL = 5 * time.Second
	}
	if tc.Issuer == "" {
		tc.Issuer = DefaultIssuer
	}
	return &TokenReviewAttestor{
		cfg:      cfg,
		cc:       cc,
		issuer:   tc.Issuer,
		reviewer: r,
		// meshca's clock.Clock has the Now method cache.Clock asks for.
		cache:   cache.NewLRUExpireCacheWithClock(cc.Size, cfg.Clock),
		refused: cache.NewLRUExpireCacheWithClock(cc.NegativeSize, cfg.Clock),
		slots:   make(chan struct{}, tc.MaxInFlight),
	}, nil
}

// Attest implements attestor.Attestor: the token is checked offline
// (precheck), then answered from the caches, then reviewed. Concurrent calls
// with the same token share one review; each stops waiting for it when its
// own ctx ends.
func (t *TokenReviewAttestor) Attest(ctx context.Context, c attestor.Credential) (attestor.Identity, error) {
	if !looksLikeJWT(c.BearerToken) {
		return attestor.Identity{}, attestor.ErrNoCredential
	}
	now := t.cfg.Clock.Now()
	// The caches first: a token in them passed precheck when it was
	// reviewed, and its entry ends no later than the token does.
	key := tokenKey(c.BearerToken)
	if res, ok := t.cached(key, now); ok {
		t.countHit(res)
		return res.id, res.err
	}
	exp, err := t.precheck(c.BearerToken, now)
	if err != nil {
		return attestor.Identity{}, err
	}
	ch := t.reviews.DoChan(key, func() (any, error) {
		// Look again: a review of this token may have finished and been
		// cached since the first look.
		if res, ok := t.cached(key, now); ok {
			return flight{res: res, hit: true}, nil
		}
		// Wait for a slot on the caller's context: beyond MaxInFlight,
		// reviews queue until the request that needs them ends.
		select {
		case t.slots <- struct{}{}:
		case <-ctx.Done():
			t.cfg.Metrics.Throttled()
			return flight{res: reviewResult{err: fmt.Errorf("%w: k8s: too many TokenReviews in flight: %w", attestor.ErrUnavailable, ctx.Err())}}, nil
		}
		t.cfg.Metrics.ReviewsInFlight(len(t.slots))
		defer func() {
			<-t.slots
			t.cfg.Metrics.ReviewsInFlight(len(t.slots))
		}()
		// Others may wait on this review: the caller that started it giving
		// up must not fail them, so it runs on its own deadline.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), reviewTimeout)
		defer cancel()
		res, ttl := t.review(rctx, c.BearerToken, now, exp)
		switch {
		case ttl <= 0:
		case res.err == nil:
			t.cache.Add(key, &cachedReview{res: res, expires: now.Add(ttl)}, ttl)
		default:
			t.refused.Add(key, &cachedReview{res: res, expires: now.Add(ttl)}, ttl)
		}
		return flight{res: res}, nil
	})
	select {
	case r := <-ch:
		f := r.Val.(flight)
		if f.hit {
			t.countHit(f.res)
		}
		return f.res.id, f.res.err
	case <-ctx.Done():
		return attestor.Identity{}, ctx.Err()
	}
}

func (t *TokenReviewAttestor) countHit(res reviewResult) {
	if res.err == nil {
		t.cfg.Metrics.CacheHit()
	} else {
		t.cfg.Metrics.NegativeCacheHit()
	}
}

// cached returns the cached result for key if it is still trusted at now.
func (t *TokenReviewAttestor) cached(key string, now time.Time) (reviewResult, bool) {
	for _, c := range []*cache.LRUExpireCache{t.cache, t.refused} {
		if v, ok := c.Get(key); ok {
			if e := v.(*cachedReview); now.Before(e.expires) {
				return e.res, true
			}
		}
	}
	return reviewResult{}, false
}

// precheck refuses, offline and before any review, a token that cannot be a
// ServiceAccount token of this cluster for this CA: not a signed JWT, another
// issuer, none of the accepted audiences, no expiry or expired beyond the
// leeway. The signature is not checked (that is the API server's job), so a
// forged token passes; what precheck stops is junk costing a TokenReview.
// It returns the token's expiry, which bounds how long a review is cached.
func (t *TokenReviewAttestor) precheck(token string, now time.Time) (time.Time, error) {
	refuse := func(reason, format string, args ...any) (time.Time, error) {
		t.cfg.Metrics.Refused(reason)
		return time.Time{}, fmt.Errorf("%w: k8s: ServiceAccount token: %s", attestor.ErrUnauthenticated, fmt.Sprintf(format, args...))
	}
	tok, err := jwt.ParseSigned(token, jwks.Algorithms)
	if err != nil || len(tok.Headers) != 1 {
		return refuse("malformed", "not a signed JWT with an accepted algorithm (%v)", jwks.Algorithms)
	}
	var claims jwt.Claims
	if err := tok.UnsafeClaimsWithoutVerification(&claims); err != nil {
		return refuse("malformed", "malformed claims")
	}
	switch {
	case claims.Issuer != t.issuer:
		return refuse("issuer", "issuer %q is not %q", claims.Issuer, t.issuer)
	case !slices.ContainsFunc(t.cfg.Audiences, claims.Audience.Contains):
		return refuse("audience", "audience %v does not include %s", []string(claims.Audience), strings.Join(t.cfg.Audiences, " or "))
	case claims.Expiry == nil:
		return refuse("expired", "no expiry (exp)")
	case now.After(claims.Expiry.Time().Add(jwks.DefaultLeeway)):
		return refuse("expired", "expired at %s", claims.Expiry.Time().UTC().Format(time.RFC3339))
	}
	return claims.Expiry.Time(), nil
}

// reviewTimeout bounds one TokenReview.
const reviewTimeout = 10 * time.Second

// review sends the review and returns the result and how long to cache it,
// never past exp, the token's expiry.
func (t *TokenReviewAttestor) review(ctx context.Context, token string, now, exp time.Time) (reviewResult, time.Duration) {
	start := t.cfg.Clock.Now()
	st, err := t.reviewer.Review(ctx, token, t.cfg.Audiences)
	took := t.cfg.Clock.Now().Sub(start)
	if err != nil {
		t.cfg.Metrics.Review("error", took)
		t.cfg.Logger.Warn("TokenReview failed", "err", err)
		return reviewResult{err: fmt.Errorf("%w: TokenReview failed: %w", attestor.ErrUnavailable, err)}, 0
	}
	refuse := func(reason, format string, args ...any) (reviewResult, time.Duration) {
		t.cfg.Metrics.Refused(reason)
		return reviewResult{err: fmt.Errorf("%w: ServiceAccount token: %s", attestor.ErrUnauthenticated, fmt.Sprintf(format, args...))}, t.cc.NegativeTTL
	}
	if !st.Authenticated {
		t.cfg.Metrics.Review("unauthenticated", took)
		msg := st.Error
		if msg == "" {
			msg = "not authenticated"
		}
		return refuse("unauthenticated", "%s", msg)
	}
	t.cfg.Metrics.Review("ok", took)
	if !slices.ContainsFunc(st.Audiences, func(a string) bool { return slices.Contains(t.cfg.Audiences, a) }) {
		return refuse("audience", "token audiences %v do not include %s", st.Audiences, strings.Join(t.cfg.Audiences, " or "))
	}
	ns, sa, ok := parseUsername(st.User.Username)
	if !ok {
		return refuse("not-serviceaccount", "%q is not a ServiceAccount", st.User.Username)
	}
	details := map[string]string{}
	for k, name := range map[string]string{
		"authentication.kubernetes.io/pod-name": DetailPodName,
		"authentication.kubernetes.io/pod-uid":  DetailPodUID,
	} {
		if v := st.User.Extra[k]; len(v) > 0 {
			details[name] = v[0]
		}
	}
	if st.User.UID != "" {
		details[DetailServiceAccountUID] = st.User.UID
	}
	id, err := t.cfg.identity(KindTokenReview, ns, sa, details)
	if err != nil {
		return reviewResult{err: err}, t.cc.NegativeTTL
	}
	// Never trust a review past the token's own expiry. The expiry was
	// read without verification: it can only shorten the cache lifetime.
	return reviewResult{id: id}, min(t.cc.TTL, exp.Sub(now))
}
