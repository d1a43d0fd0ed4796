package k8s_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	authnv1 "k8s.io/api/authentication/v1"

	"github.com/meshca/meshca/attestor"
	"github.com/meshca/meshca/attestor/k8s"
	"github.com/meshca/meshca/internal/clock/clocktest"
)

// tableReviewer authenticates the tokens in good as foo/bar and refuses
// every other one, as the API server would a forged token. It counts the
// reviews and the most in flight at once; while gate is open (not nil and
// not closed) each review waits for it.
type tableReviewer struct {
	good map[string]bool
	gate chan struct{}

	mu               sync.Mutex
	calls            int
	inFlight, maxInF int
}

func (r *tableReviewer) Review(ctx context.Context, token string, _ []string) (authnv1.TokenReviewStatus, error) {
	r.mu.Lock()
	r.calls++
	r.inFlight++
	r.maxInF = max(r.maxInF, r.inFlight)
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		r.inFlight--
		r.mu.Unlock()
	}()
	if r.gate != nil {
		select {
		case <-r.gate:
		case <-ctx.Done():
			return authnv1.TokenReviewStatus{}, ctx.Err()
		}
	}
	if r.good[token] {
		return authenticated("foo", "bar"), nil
	}
	return authnv1.TokenReviewStatus{Error: "invalid bearer token"}, nil
}

func (r *tableReviewer) stats() (calls, inFlight, maxInFlight int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.calls, r.inFlight, r.maxInF
}

// TestTokenReviewJunkNeverReviewed (finding 5): tokens that cannot be a
// ServiceAccount token of this cluster for this CA are refused offline:
// the API server is never asked.
func TestTokenReviewJunkNeverReviewed(t *testing.T) {
	tests := []struct {
		name   string
		token  func(t *testing.T) string
		reason string
	}{
		{"three dots of junk", func(*testing.T) string { return "a.b.c" }, "malformed"},
		{"base64 junk", func(*testing.T) string { return "aaaa.bbbb.cccc" }, "malformed"},
		{"JSON that is not a JWS", func(*testing.T) string { return "e30.e30.e30" }, "malformed"},
		{"another issuer", func(t *testing.T) string { return mint(t, epoch, saToken{issuer: "https://evil.example"}) }, "issuer"},
		{"another audience", func(t *testing.T) string { return mint(t, epoch, saToken{audiences: []string{"vault"}}) }, "audience"},
		{"no audience", func(t *testing.T) string { return mint(t, epoch, saToken{audiences: []string{}}) }, "audience"},
		{"expired beyond the leeway", func(t *testing.T) string { return mint(t, epoch.Add(-2*time.Hour), saToken{ttl: time.Hour}) }, "expired"},
		{"no expiry", func(t *testing.T) string { return mint(t, epoch, saToken{ttl: -1}) }, "expired"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rev := &tableReviewer{}
			rec := newRecorder()
			a, err := k8s.NewTokenReview(k8s.TokenReviewConfig{Config: k8s.Config{TrustDomain: td, Clock: clocktest.New(epoch), Metrics: rec}, Reviewer: rev})
			if err != nil {
				t.Fatal(err)
			}
			tok := tc.token(t)
			_, err = a.Attest(context.Background(), attestor.Credential{BearerToken: tok})
			if !errors.Is(err, attestor.ErrUnauthenticated) || !strings.HasPrefix(err.Error(), "attestor: unauthenticated: k8s: ") {
				t.Errorf("Attest() = %v, want attestor: unauthenticated: k8s: ...", err)
			}
			if calls, _, _ := rev.stats(); calls != 0 {
				t.Errorf("%d TokenReviews sent for junk, want 0", calls)
			}
			if got := rec.refusals(tc.reason); got != 1 {
				t.Errorf("Refused(%q) counted %d, want 1", tc.reason, got)
			}
		})
	}
}

// TestTokenReviewRefusalsDoNotEvictSuccesses (finding 5): 10,000 distinct
// tokens that pass the offline checks but that the API server refuses (as
// forged ones would) leave a cached success in place, with the default
// cache sizes.
func TestTokenReviewRefusalsDoNotEvictSuccesses(t *testing.T) {
	good := mint(t, epoch, saToken{serial: -1})
	rev := &tableReviewer{good: map[string]bool{good: true}}
	a, err := k8s.NewTokenReview(k8s.TokenReviewConfig{Config: k8s.Config{TrustDomain: td, Clock: clocktest.New(epoch)}, Reviewer: rev})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := a.Attest(ctx, attestor.Credential{BearerToken: good}); err != nil {
		t.Fatal(err)
	}
	for i := range 10_000 {
		_, err := a.Attest(ctx, attestor.Credential{BearerToken: mint(t, epoch, saToken{serial: i})})
		if !errors.Is(err, attestor.ErrUnauthenticated) {
			t.Fatalf("forged token %d: %v", i, err)
		}
	}
	before, _, _ := rev.stats()
	if before != 10_001 {
		t.Fatalf("%d reviews for 10,001 distinct tokens", before)
	}
	if _, err := a.Attest(ctx, attestor.Credential{BearerToken: good}); err != nil {
		t.Fatal(err)
	}
	if after, _, _ := rev.stats(); after != before {
		t.Error("the cached success was evicted by refusals: it was reviewed again")
	}
}

// TestTokenReviewBoundsReviewsInFlight (finding 5): however many distinct
// tokens arrive at once, at most the bound (default 16) are being reviewed;
// the others wait, and all are answered once the API server answers.
func TestTokenReviewBoundsReviewsInFlight(t *testing.T) {
	for _, tc := range []struct {
		name        string
		maxInFlight int
		want        int
	}{
		{"default", 0, k8s.DefaultMaxInFlight},
		{"configured", 4, 4},
		{"one", 1, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				rev := &tableReviewer{good: map[string]bool{}, gate: make(chan struct{})}
				rec := newRecorder()
				a, err := k8s.NewTokenReview(k8s.TokenReviewConfig{Config: k8s.Config{TrustDomain: td, Clock: clocktest.New(epoch), Metrics: rec}, Reviewer: rev, MaxInFlight: tc.maxInFlight})
				if err != nil {
					t.Fatal(err)
				}
				const n = 50
				tokens := make([]string, n)
				for i := range tokens {
					tokens[i] = mint(t, epoch, saToken{serial: i})
					rev.good[tokens[i]] = true
				}
				var wg sync.WaitGroup
				errs := make([]error, n)
				for i := range n {
					wg.Go(func() {
						_, errs[i] = a.Attest(context.Background(), attestor.Credential{BearerToken: tokens[i]})
					})
				}
				synctest.Wait() // every caller is in a review or waiting for a slot
				if _, inFlight, _ := rev.stats(); inFlight != tc.want {
					t.Errorf("%d reviews in flight, want %d", inFlight, tc.want)
				}
				close(rev.gate)
				wg.Wait()
				for i, err := range errs {
					if err != nil {
						t.Errorf("Attest() #%d = %v", i, err)
					}
				}
				if calls, _, maxInFlight := rev.stats(); calls != n || maxInFlight > tc.want {
					t.Errorf("%d reviews, at most %d at once; want %d, at most %d", calls, maxInFlight, n, tc.want)
				}
			})
		})
	}
}

// TestTokenReviewWaitingForASlotEndsWithTheRequest: a review waiting for a
// slot is given up, never sent, when the request that needs it ends.
func TestTokenReviewWaitingForASlotEndsWithTheRequest(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		first, second := mint(t, epoch, saToken{serial: 1}), mint(t, epoch, saToken{serial: 2})
		rev := &tableReviewer{good: map[string]bool{first: true, second: true}, gate: make(chan struct{})}
		rec := newRecorder()
		a, err := k8s.NewTokenReview(k8s.TokenReviewConfig{Config: k8s.Config{TrustDomain: td, Clock: clocktest.New(epoch), Metrics: rec}, Reviewer: rev, MaxInFlight: 1})
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		wg.Go(func() {
			if _, err := a.Attest(context.Background(), attestor.Credential{BearerToken: first}); err != nil {
				t.Errorf("first: %v", err)
			}
		})
		synctest.Wait() // the first review holds the only slot
		ctx, cancel := context.WithCancel(context.Background())
		var waitErr error
		wg.Go(func() { _, waitErr = a.Attest(ctx, attestor.Credential{BearerToken: second}) })
		synctest.Wait() // the second waits for the slot
		cancel()
		synctest.Wait()
		if !errors.Is(waitErr, context.Canceled) {
			t.Errorf("waiting Attest() = %v, want context.Canceled", waitErr)
		}
		close(rev.gate)
		wg.Wait()
		if calls, _, _ := rev.stats(); calls != 1 {
			t.Errorf("%d reviews sent, want 1: the abandoned one must not be sent", calls)
		}
		if got := rec.count("throttled"); got != 1 {
			t.Errorf("Throttled counted %d, want 1", got)
		}
		// The abandoned token was not cached as refused: it is reviewed now.
		if _, err := a.Attest(context.Background(), attestor.Credential{BearerToken: second}); err != nil {
			t.Errorf("second, retried: %v", err)
		}
	})
}

// TestTokenReviewNegativeCache: refusals are answered from their own cache
// (and counted as negative hits), bounded by NegativeSize.
func TestTokenReviewNegativeCache(t *testing.T) {
	rev := &tableReviewer{}
	rec := newRecorder()
	a, err := k8s.NewTokenReview(k8s.TokenReviewConfig{Config: k8s.Config{TrustDomain: td, Clock: clocktest.New(epoch), Metrics: rec}, Reviewer: rev, Cache: k8s.CacheConfig{NegativeSize: 2}})
	if err != nil {
		t.Fatal(err)
	}
	tokens := []string{mint(t, epoch, saToken{serial: 0}), mint(t, epoch, saToken{serial: 1}), mint(t, epoch, saToken{serial: 2})}
	attest := func(tok string) {
		t.Helper()
		if _, err := a.Attest(context.Background(), attestor.Credential{BearerToken: tok}); !errors.Is(err, attestor.ErrUnauthenticated) {
			t.Fatalf("Attest() = %v, want ErrUnauthenticated", err)
		}
	}
	attest(tokens[0])
	attest(tokens[0])
	if calls, _, _ := rev.stats(); calls != 1 || rec.count("negative-hits") != 1 || rec.cacheHits() != 0 {
		t.Fatalf("refused twice: %d reviews, %d negative hits, %d positive hits; want 1, 1, 0", calls, rec.count("negative-hits"), rec.cacheHits())
	}
	attest(tokens[1])
	attest(tokens[2]) // evicts tokens[0] from a negative cache of two
	attest(tokens[0])
	if calls, _, _ := rev.stats(); calls != 4 {
		t.Errorf("%d reviews, want 4: the oldest refusal should have been evicted", calls)
	}
}

// TestTokenReviewConfigErrors: bad sizes are refused when built.
func TestTokenReviewConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		tc   k8s.TokenReviewConfig
		want string
	}{
		{"negative cache", k8s.TokenReviewConfig{Cache: k8s.CacheConfig{NegativeSize: -1}}, "negative cache size -1"},
		{"negative bound", k8s.TokenReviewConfig{MaxInFlight: -1}, "MaxInFlight -1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.tc.Config.TrustDomain, tc.tc.Reviewer = td, &tableReviewer{}
			_, err := k8s.NewTokenReview(tc.tc)
			if err == nil || !strings.HasPrefix(err.Error(), "k8s: ") || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("NewTokenReview() = %v, want k8s: ...%s...", err, tc.want)
			}
		})
	}
}
