package k8s

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

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

// CacheConfig bounds the TokenReview cache. Zero fields get defaults.
type CacheConfig struct {
	// Size is the most tokens remembered. Default 10,000; negative is an
	// error.
	Size int
	// TTL is how long a positive review is trusted, never past the token's
	// own expiry. Default 1 minute: a ServiceAccount deleted meanwhile can
	// get certificates for at most that long.
	TTL time.Duration
	// NegativeTTL is how long a refused token stays refused without asking
	// again, to keep a flood of bad tokens off the API server. Default 5s.
	NegativeTTL time.Duration
}

// TokenReviewAttestor asks the API server about each token it has not seen
// recently.
type TokenReviewAttestor struct {
	cfg      Config
	cc       CacheConfig
	reviewer Reviewer
	// cache maps a token's SHA-256 to its *cachedReview. Its clock is
	// cfg.Clock, so a fake clock in tests drives expiry.
	cache *cache.LRUExpireCache
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
	// Cache bounds the review cache; zero fields get CacheConfig's
	// defaults.
	Cache CacheConfig
}

// NewTokenReview returns the TokenReview attestor.
func NewTokenReview(tc TokenReviewConfig) (*TokenReviewAttestor, error) {
	cfg, r, cc := tc.Config, tc.Reviewer, tc.Cache
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	if r == nil {
		return nil, errors.New("k8s: a TokenReview reviewer is required")
	}
	switch {
	case cc.Size == 0:
		cc.Size = 10_000
	case cc.Size < 0:
		return nil, fmt.Errorf("k8s: TokenReview cache size %d is negative", cc.Size)
	}
	if cc.TTL == 0 {
		cc.TTL = time.Minute
	}
	if cc.NegativeTTL == 0 {
		cc.NegativeTTL = 5 * time.Second
	}
	return &TokenReviewAttestor{
		cfg:      cfg,
		cc:       cc,
		reviewer: r,
		// meshca's clock.Clock has the Now method cache.Clock asks for.
		cache: cache.NewLRUExpireCacheWithClock(cc.Size, cfg.Clock),
	}, nil
}

// Attest implements attestor.Attestor. Concurrent calls with the same token
// share one review; each stops waiting for it when its own ctx ends.
func (t *TokenReviewAttestor) Attest(ctx context.Context, c attestor.Credential) (attestor.Identity, error) {
	if !looksLikeJWT(c.BearerToken) {
		return attestor.Identity{}, attestor.ErrNoCredential
	}
	sum := sha256.Sum256([]byte(c.BearerToken))
	key := string(sum[:])
	now := t.cfg.Clock.Now()
	if res, ok := t.cached(key, now); ok {
		t.cfg.Metrics.CacheHit()
		return res.id, res.err
	}
	ch := t.reviews.DoChan(key, func() (any, error) {
		// Look again: a review of this token may have finished and been
		// cached since the first look.
		if res, ok := t.cached(key, now); ok {
			return flight{res: res, hit: true}, nil
		}
		// Others may wait on this review: the caller that started it giving
		// up must not fail them, so it runs on its own deadline.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), reviewTimeout)
		defer cancel()
		res, ttl := t.review(rctx, c.BearerToken, now)
		if ttl > 0 {
			t.cache.Add(key, &cachedReview{res: res, expires: now.Add(ttl)}, ttl)
		}
		return flight{res: res}, nil
	})
	select {
	case r := <-ch:
		f := r.Val.(flight)
		if f.hit {
			t.cfg.Metrics.CacheHit()
		}
		return f.res.id, f.res.err
	case <-ctx.Done():
		return attestor.Identity{}, ctx.Err()
	}
}

// cached returns the cached result for key if it is still trusted at now.
func (t *TokenReviewAttestor) cached(key string, now time.Time) (reviewResult, bool) {
	v, ok := t.cache.Get(key)
	if !ok {
		return reviewResult{}, false
	}
	e := v.(*cachedReview)
	if !now.Before(e.expires) {
		return reviewResult{}, false
	}
	return e.res, true
}

// reviewTimeout bounds one TokenReview.
const reviewTimeout = 10 * time.Second

// review sends the review and returns the result and how long to cache it.
func (t *TokenReviewAttestor) review(ctx context.Context, token string, now time.Time) (reviewResult, time.Duration) {
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
		"authentication.kubernetes.io/pod-name": "pod-name",
		"authentication.kubernetes.io/pod-uid":  "pod-uid",
	} {
		if v := st.User.Extra[k]; len(v) > 0 {
			details[name] = v[0]
		}
	}
	if st.User.UID != "" {
		details["sa-uid"] = st.User.UID
	}
	id, err := t.cfg.identity(KindTokenReview, ns, sa, details)
	if err != nil {
		return reviewResult{err: err}, t.cc.NegativeTTL
	}
	// Never trust a review past the token's own expiry. The expiry is read
	// without verification: it can only shorten the cache lifetime.
	_, exp, _ := jwks.Peek(token)
	if exp.IsZero() {
		return reviewResult{id: id}, 0
	}
	return reviewResult{id: id}, min(t.cc.TTL, exp.Sub(now))
}
