package k8s

import (
	"container/list"
	"context"
	"crypto/sha256"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
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
	// Size is the most tokens remembered. Default 10,000.
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
	reviewer Reviewer
	cache    *reviewCache

	mu       sync.Mutex
	inflight map[[sha256.Size]byte]*reviewCall
}

type reviewCall struct {
	done chan struct{}
	res  reviewResult
}

type reviewResult struct {
	id  attestor.Identity
	err error
}

// NewTokenReview returns the TokenReview attestor.
func NewTokenReview(cfg Config, r Reviewer, cc CacheConfig) (*TokenReviewAttestor, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	if cc.Size == 0 {
		cc.Size = 10_000
	}
	if cc.TTL == 0 {
		cc.TTL = time.Minute
	}
	if cc.NegativeTTL == 0 {
		cc.NegativeTTL = 5 * time.Second
	}
	return &TokenReviewAttestor{cfg: cfg, reviewer: r, cache: newReviewCache(cc), inflight: map[[sha256.Size]byte]*reviewCall{}}, nil
}

// Attest implements attestor.Attestor. Concurrent calls with the same token
// share one review.
func (t *TokenReviewAttestor) Attest(ctx context.Context, c attestor.Credential) (attestor.Identity, error) {
	if !looksLikeJWT(c.BearerToken) {
		return attestor.Identity{}, attestor.ErrNoCredential
	}
	key := sha256.Sum256([]byte(c.BearerToken))
	now := t.cfg.Clock.Now()
	if res, ok := t.cache.get(key, now); ok {
		t.cfg.Metrics.CacheHit()
		return res.id, res.err
	}
	t.mu.Lock()
	// Look again under mu: a review of this token may have finished and
	// been cached since the first look.
	if res, ok := t.cache.get(key, now); ok {
		t.mu.Unlock()
		t.cfg.Metrics.CacheHit()
		return res.id, res.err
	}
	if call, ok := t.inflight[key]; ok {
		t.mu.Unlock()
		select {
		case <-call.done:
			return call.res.id, call.res.err
		case <-ctx.Done():
			return attestor.Identity{}, ctx.Err()
		}
	}
	call := &reviewCall{done: make(chan struct{})}
	t.inflight[key] = call
	t.mu.Unlock()

	defer func() {
		close(call.done)
		t.mu.Lock()
		delete(t.inflight, key)
		t.mu.Unlock()
	}()
	// Others may wait on this review: the first caller giving up must not
	// fail them, so it runs on its own deadline.
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), reviewTimeout)
	defer cancel()
	res, ttl := t.review(rctx, c.BearerToken, now)
	if ttl > 0 {
		t.cache.put(key, res, now.Add(ttl))
	}
	call.res = res
	return res.id, res.err
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
		return reviewResult{err: fmt.Errorf("%w: ServiceAccount token: %s", attestor.ErrUnauthenticated, fmt.Sprintf(format, args...))}, t.cache.cfg.NegativeTTL
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
		return reviewResult{err: err}, t.cache.cfg.NegativeTTL
	}
	// Never trust a review past the token's own expiry. The expiry is read
	// without verification: it can only shorten the cache lifetime.
	_, exp, _ := jwks.Peek(token)
	if exp.IsZero() {
		return reviewResult{id: id}, 0
	}
	return reviewResult{id: id}, min(t.cache.cfg.TTL, exp.Sub(now))
}

// reviewCache is a bounded LRU of review results with per-entry expiry.
type reviewCache struct {
	cfg     CacheConfig
	mu      sync.Mutex
	entries map[[sha256.Size]byte]*list.Element
	lru     *list.List // front: most recently used
}

type cacheEntry struct {
	key     [sha256.Size]byte
	res     reviewResult
	expires time.Time
}

func newReviewCache(cfg CacheConfig) *reviewCache {
	return &reviewCache{cfg: cfg, entries: map[[sha256.Size]byte]*list.Element{}, lru: list.New()}
}

func (c *reviewCache) get(key [sha256.Size]byte, now time.Time) (reviewResult, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.entries[key]
	if !ok {
		return reviewResult{}, false
	}
	e := el.Value.(*cacheEntry)
	if !now.Before(e.expires) {
		c.lru.Remove(el)
		delete(c.entries, key)
		return reviewResult{}, false
	}
	c.lru.MoveToFront(el)
	return e.res, true
}

func (c *reviewCache) put(key [sha256.Size]byte, res reviewResult, expires time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.entries[key]; ok {
		el.Value = &cacheEntry{key: key, res: res, expires: expires}
		c.lru.MoveToFront(el)
		return
	}
	c.entries[key] = c.lru.PushFront(&cacheEntry{key: key, res: res, expires: expires})
	for c.lru.Len() > c.cfg.Size {
		old := c.lru.Back()
		c.lru.Remove(old)
		delete(c.entries, old.Value.(*cacheEntry).key)
	}
}

// Len reports the number of cached results (for tests and metrics).
func (t *TokenReviewAttestor) Len() int {
	t.cache.mu.Lock()
	defer t.cache.mu.Unlock()
	return t.cache.lru.Len()
}
