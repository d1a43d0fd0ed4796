package k8s_test

import (
	"context"
	"errors"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	authnv1 "k8s.io/api/authentication/v1"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshca/meshca/attestor"
	"github.com/meshca/meshca/attestor/k8s"
	"github.com/meshca/meshca/internal/clock/clocktest"
)

// fakeReviewer answers TokenReviews from a configurable status and counts
// them.
type fakeReviewer struct {
	mu        sync.Mutex
	status    authnv1.TokenReviewStatus
	err       error
	gate      chan struct{} // when not nil, Review waits for it to close
	calls     int
	tokens    []string
	audiences []string
}

func (f *fakeReviewer) Review(ctx context.Context, token string, audiences []string) (authnv1.TokenReviewStatus, error) {
	f.mu.Lock()
	f.calls++
	f.tokens = append(f.tokens, token)
	f.audiences = slices.Clone(audiences)
	gate := f.gate
	f.mu.Unlock()
	if gate != nil {
		<-gate
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return *f.status.DeepCopy(), f.err
}

func (f *fakeReviewer) set(st authnv1.TokenReviewStatus, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.status, f.err = st, err
}

func (f *fakeReviewer) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls
}

// authenticated is the API server's answer for a projected token of ns/sa.
func authenticated(ns, sa string) authnv1.TokenReviewStatus {
	return authnv1.TokenReviewStatus{
		Authenticated: true,
		User: authnv1.UserInfo{
			Username: "system:serviceaccount:" + ns + ":" + sa,
			UID:      "sa-uid-1",
			Groups:   []string{"system:serviceaccounts", "system:serviceaccounts:" + ns, "system:authenticated"},
			Extra: map[string]authnv1.ExtraValue{
				"authentication.kubernetes.io/pod-name":        {"pod-1"},
				"authentication.kubernetes.io/pod-uid":         {"pod-uid-1"},
				"authentication.kubernetes.io/credential-id":   {"JTI=abc"},
				"authentication.kubernetes.io/node-name":       {"node-1"},
				"authentication.kubernetes.io/something-other": {"x"},
			},
		},
		Audiences: []string{"meshca"},
	}
}

type trFixture struct {
	clk *clocktest.Fake
	rev *fakeReviewer
	rec *recorder
	a   *k8s.TokenReviewAttestor
}

func newTR(tb testing.TB, cfg k8s.Config, cc k8s.CacheConfig) *trFixture {
	tb.Helper()
	f := &trFixture{clk: clocktest.New(epoch), rev: &fakeReviewer{status: authenticated("foo", "bar")}, rec: newRecorder()}
	cfg.TrustDomain, cfg.Clock, cfg.Metrics = td, f.clk, f.rec
	a, err := k8s.NewTokenReview(k8s.TokenReviewConfig{Config: cfg, Reviewer: f.rev, Cache: cc})
	if err != nil {
		tb.Fatalf("NewTokenReview() = %v", err)
	}
	f.a = a
	return f
}

func (f *trFixture) attest(token string) (attestor.Identity, error) {
	return f.a.Attest(context.Background(), attestor.Credential{BearerToken: token})
}

func TestTokenReviewAttest(t *testing.T) {
	fooBar := spiffeid.RequireFromPath(td, "/ns/foo/sa/bar")
	noExtra := authenticated("foo", "bar")
	noExtra.User.Extra, noExtra.User.UID = nil, ""
	withStatus := func(mod func(*authnv1.TokenReviewStatus)) authnv1.TokenReviewStatus {
		st := authenticated("foo", "bar")
		mod(&st)
		return st
	}
	tests := []struct {
		name        string
		cfg         k8s.Config
		status      authnv1.TokenReviewStatus
		reviewErr   error
		token       string // default: a fresh projected token
		wantErr     error
		wantMsg     string
		wantID      spiffeid.ID
		wantDetails map[string]string
		wantReviews int // default 1
	}{
		{
			name:        "authenticated ServiceAccount",
			status:      authenticated("foo", "bar"),
			wantID:      fooBar,
			wantDetails: map[string]string{"pod-name": "pod-1", "pod-uid": "pod-uid-1", "sa-uid": "sa-uid-1"},
		},
		{
			name:        "legacy token without pod extras",
			status:      noExtra,
			wantID:      fooBar,
			wantDetails: map[string]string{},
		},
		{
			name:    "not authenticated carries the API server's reason",
			status:  authnv1.TokenReviewStatus{Authenticated: false, Error: "[invalid bearer token, service account token has been invalidated]"},
			wantErr: attestor.ErrUnauthenticated,
			wantMsg: "service account token has been invalidated",
		},
		{
			name:    "not authenticated without reason",
			status:  authnv1.TokenReviewStatus{},
			wantErr: attestor.ErrUnauthenticated,
			wantMsg: "not authenticated",
		},
		{
			name:      "reviewer error",
			reviewErr: errors.New("Post https://10.0.0.1/apis/authentication.k8s.io/v1/tokenreviews: dial tcp: connection refused"),
			wantErr:   attestor.ErrUnavailable,
			wantMsg:   "TokenReview failed",
		},
		{
			name:    "audiences in status not matching",
			status:  withStatus(func(st *authnv1.TokenReviewStatus) { st.Audiences = []string{"https://kubernetes.default.svc"} }),
			wantErr: attestor.ErrUnauthenticated,
			wantMsg: "do not include meshca",
		},
		{
			name:    "no audiences in status",
			status:  withStatus(func(st *authnv1.TokenReviewStatus) { st.Audiences = nil }),
			wantErr: attestor.ErrUnauthenticated,
			wantMsg: "do not include meshca",
		},
		{
			name:        "istio-ca audience when configured",
			cfg:         k8s.Config{Audiences: []string{"meshca", "istio-ca"}},
			status:      withStatus(func(st *authnv1.TokenReviewStatus) { st.Audiences = []string{"istio-ca"} }),
			wantID:      fooBar,
			wantDetails: map[string]string{"pod-name": "pod-1", "pod-uid": "pod-uid-1", "sa-uid": "sa-uid-1"},
		},
		{
			name:    "user, not a ServiceAccount",
			status:  withStatus(func(st *authnv1.TokenReviewStatus) { st.User.Username = "alice" }),
			wantErr: attestor.ErrUnauthenticated,
			wantMsg: `"alice" is not a ServiceAccount`,
		},
		{
			name:    "ServiceAccount username missing its name",
			status:  withStatus(func(st *authnv1.TokenReviewStatus) { st.User.Username = "system:serviceaccount:foo" }),
			wantErr: attestor.ErrUnauthenticated,
			wantMsg: "is not a ServiceAccount",
		},
		{
			name:    "denied namespace",
			status:  authenticated("kube-system", "coredns"),
			wantErr: attestor.ErrPermissionDenied,
			wantMsg: "ServiceAccount kube-system/coredns may not get certificates",
		},
		{
			name:        "empty Deny admits kube-system",
			cfg:         k8s.Config{Deny: []string{}},
			status:      authenticated("kube-system", "coredns"),
			wantID:      spiffeid.RequireFromPath(td, "/ns/kube-system/sa/coredns"),
			wantDetails: map[string]string{"pod-name": "pod-1", "pod-uid": "pod-uid-1", "sa-uid": "sa-uid-1"},
		},
		{
			name:    "outside Allow",
			cfg:     k8s.Config{Allow: []string{"team-*"}},
			status:  authenticated("foo", "bar"),
			wantErr: attestor.ErrPermissionDenied,
		},
		{
			name:        "inside Allow",
			cfg:         k8s.Config{Allow: []string{"team-*", "foo/bar"}},
			status:      authenticated("foo", "bar"),
			wantID:      fooBar,
			wantDetails: map[string]string{"pod-name": "pod-1", "pod-uid": "pod-uid-1", "sa-uid": "sa-uid-1"},
		},
		{
			name:        "non-JWT bearer is not ours",
			token:       "s3cr3t-join-token",
			wantErr:     attestor.ErrNoCredential,
			wantReviews: -1,
		},
		{
			name:        "empty bearer is not ours",
			token:       "",
			wantErr:     attestor.ErrNoCredential,
			wantReviews: -1,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newTR(t, tc.cfg, k8s.CacheConfig{})
			f.rev.set(tc.status, tc.reviewErr)
			token := tc.token
			if token == "" && tc.wantErr != attestor.ErrNoCredential {
				token = mint(t, epoch, saToken{})
			}
			id, err := f.attest(token)
			wantReviews := tc.wantReviews
			switch wantReviews {
			case 0:
				wantReviews = 1
			case -1:
				wantReviews = 0
			}
			if got := f.rev.count(); got != wantReviews {
				t.Errorf("reviews = %d, want %d", got, wantReviews)
			}
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("Attest() error = %v, want %v", err, tc.wantErr)
				}
				if tc.wantMsg != "" && !strings.Contains(err.Error(), tc.wantMsg) {
					t.Errorf("Attest() error = %q, want it to contain %q", err, tc.wantMsg)
				}
				if token != "" && strings.Contains(err.Error(), token) {
					t.Errorf("Attest() error leaks the token: %v", err)
				}
				if !id.ID.IsZero() {
					t.Errorf("Attest() returned identity %v with an error", id.ID)
				}
				return
			}
			if err != nil {
				t.Fatalf("Attest() = %v, want success", err)
			}
			if id.ID != tc.wantID || id.Kind != "k8s-tokenreview" {
				t.Errorf("Attest() = %v (%s), want %v (k8s-tokenreview)", id.ID, id.Kind, tc.wantID)
			}
			if want := "system:serviceaccount:" + strings.TrimPrefix(strings.ReplaceAll(tc.wantID.Path(), "/sa/", ":"), "/ns/"); id.Subject != want {
				t.Errorf("Attest() Subject = %q, want %q", id.Subject, want)
			}
			if !maps.Equal(id.Details, tc.wantDetails) {
				t.Errorf("Attest() Details = %v, want %v", id.Details, tc.wantDetails)
			}
		})
	}
}

func TestTokenReviewSendsTokenAndAudiences(t *testing.T) {
	f := newTR(t, k8s.Config{Audiences: []string{"meshca", "istio-ca"}}, k8s.CacheConfig{})
	tok := mint(t, epoch, saToken{})
	if _, err := f.attest(tok); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(f.rev.tokens, []string{tok}) || !slices.Equal(f.rev.audiences, []string{"meshca", "istio-ca"}) {
		t.Errorf("reviewed tokens %d, audiences %v; want the one token and [meshca istio-ca]", len(f.rev.tokens), f.rev.audiences)
	}
}

func TestTokenReviewCachesSequential(t *testing.T) {
	f := newTR(t, k8s.Config{}, k8s.CacheConfig{})
	tok := mint(t, epoch, saToken{})
	first, err := f.attest(tok)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 999 {
		id, err := f.attest(tok)
		if err != nil || id.ID != first.ID || !maps.Equal(id.Details, first.Details) {
			t.Fatalf("Attest() #%d = %v, %v; want %v", i+2, id, err, first)
		}
	}
	if got := f.rev.count(); got != 1 {
		t.Errorf("1,000 Attest calls sent %d reviews, want 1", got)
	}
	if got := f.rec.cacheHits(); got != 999 {
		t.Errorf("CacheHit counted %d, want 999", got)
	}
}

// TestTokenReviewSingleflight: concurrent calls with one fresh token share
// one review. synctest.Wait proves every caller is parked before the review
// is let through.
func TestTokenReviewSingleflight(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newTR(t, k8s.Config{}, k8s.CacheConfig{})
		f.rev.gate = make(chan struct{})
		tok := mint(t, epoch, saToken{})
		const n = 100
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		var wg sync.WaitGroup
		results := make([]attestor.Identity, n)
		errs := make([]error, n)
		for i := range n {
			wg.Go(func() {
				results[i], errs[i] = f.a.Attest(ctx, attestor.Credential{BearerToken: tok})
			})
		}
		synctest.Wait() // one goroutine is in Review, n-1 wait for it
		if got := f.rev.count(); got != 1 {
			t.Errorf("reviews in flight = %d, want 1", got)
		}
		close(f.rev.gate)
		wg.Wait()
		for i := range n {
			if errs[i] != nil || results[i].ID.String() != "spiffe://example.org/ns/foo/sa/bar" {
				t.Fatalf("Attest() #%d = %v, %v", i, results[i].ID, errs[i])
			}
		}
		if got := f.rev.count(); got != 1 {
			t.Errorf("%d concurrent Attest calls sent %d reviews, want 1", n, got)
		}
		// Afterwards the result is cached.
		if _, err := f.a.Attest(ctx, attestor.Credential{BearerToken: tok}); err != nil || f.rev.count() != 1 {
			t.Errorf("Attest() after the flight = %v with %d reviews, want a cache hit", err, f.rev.count())
		}
	})
}

// TestTokenReviewSingleflightRefusal: a refusal is shared the same way.
func TestTokenReviewSingleflightRefusal(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newTR(t, k8s.Config{}, k8s.CacheConfig{})
		f.rev.set(authnv1.TokenReviewStatus{Error: "token revoked"}, nil)
		f.rev.gate = make(chan struct{})
		tok := mint(t, epoch, saToken{})
		var wg sync.WaitGroup
		errs := make([]error, 10)
		for i := range errs {
			wg.Go(func() { _, errs[i] = f.attest(tok) })
		}
		synctest.Wait()
		close(f.rev.gate)
		wg.Wait()
		for i, err := range errs {
			if !errors.Is(err, attestor.ErrUnauthenticated) || !strings.Contains(err.Error(), "token revoked") {
				t.Errorf("Attest() #%d = %v, want ErrUnauthenticated: token revoked", i, err)
			}
		}
		if got := f.rev.count(); got != 1 {
			t.Errorf("reviews = %d, want 1", got)
		}
	})
}

// TestTokenReviewWaiterContext: a caller waiting on another's review gives
// up when its own context ends.
func TestTokenReviewWaiterContext(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newTR(t, k8s.Config{}, k8s.CacheConfig{})
		f.rev.gate = make(chan struct{})
		tok := mint(t, epoch, saToken{})
		var wg sync.WaitGroup
		var leaderErr error
		wg.Go(func() { _, leaderErr = f.attest(tok) })
		synctest.Wait() // the leader is in Review
		ctx, cancel := context.WithCancel(context.Background())
		var waiterErr error
		wg.Go(func() { _, waiterErr = f.a.Attest(ctx, attestor.Credential{BearerToken: tok}) })
		synctest.Wait() // the waiter is parked
		cancel()
		synctest.Wait()
		if !errors.Is(waiterErr, context.Canceled) {
			t.Errorf("waiter Attest() = %v, want context.Canceled", waiterErr)
		}
		close(f.rev.gate)
		wg.Wait()
		if leaderErr != nil || f.rev.count() != 1 {
			t.Errorf("leader Attest() = %v with %d reviews, want success with 1", leaderErr, f.rev.count())
		}
	})
}

// TestTokenReviewFirstCallerGivesUp: the caller whose call sent the review
// giving up neither cancels the review nor fails those waiting on it, and
// the result is cached.
func TestTokenReviewFirstCallerGivesUp(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newTR(t, k8s.Config{}, k8s.CacheConfig{})
		f.rev.gate = make(chan struct{})
		tok := mint(t, epoch, saToken{})
		ctx, cancel := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		var firstErr, waiterErr error
		wg.Go(func() { _, firstErr = f.a.Attest(ctx, attestor.Credential{BearerToken: tok}) })
		synctest.Wait() // the review is in flight
		wg.Go(func() { _, waiterErr = f.attest(tok) })
		synctest.Wait() // the waiter is parked
		cancel()
		synctest.Wait()
		close(f.rev.gate)
		wg.Wait()
		if !errors.Is(firstErr, context.Canceled) {
			t.Errorf("first Attest() = %v, want context.Canceled", firstErr)
		}
		if waiterErr != nil {
			t.Errorf("waiting Attest() = %v, want success", waiterErr)
		}
		if _, err := f.attest(tok); err != nil || f.rev.count() != 1 {
			t.Errorf("Attest() afterwards = %v with %d reviews, want a cache hit", err, f.rev.count())
		}
	})
}

func TestTokenReviewCacheLifetime(t *testing.T) {
	tests := []struct {
		name     string
		cc       k8s.CacheConfig
		status   authnv1.TokenReviewStatus
		err      error
		tokenTTL time.Duration // -1: no exp
		// steps: advance the clock (cumulatively) by each, then Attest;
		// wantReviews is the review count after each step.
		advances    []time.Duration
		wantReviews []int
		wantErr     error
	}{
		{
			name:        "capped by token exp",
			tokenTTL:    10 * time.Second,
			advances:    []time.Duration{0, 9 * time.Second, 2 * time.Second},
			wantReviews: []int{1, 1, 2},
		},
		{
			name:        "capped by TTL",
			tokenTTL:    time.Hour,
			advances:    []time.Duration{0, 59 * time.Second, 2 * time.Second, 30 * time.Second},
			wantReviews: []int{1, 1, 2, 2},
		},
		{
			name:        "expires exactly at TTL",
			tokenTTL:    time.Hour,
			advances:    []time.Duration{0, time.Minute - time.Nanosecond, time.Nanosecond},
			wantReviews: []int{1, 1, 2},
		},
		{
			name:        "custom TTL",
			cc:          k8s.CacheConfig{TTL: 10 * time.Minute},
			tokenTTL:    time.Hour,
			advances:    []time.Duration{0, 9 * time.Minute, 61 * time.Second},
			wantReviews: []int{1, 1, 2},
		},
		// A token without exp is refused before any review
		// (TestTokenReviewJunkNeverReviewed), so never cached either.
		{
			name:        "refusal cached for NegativeTTL",
			status:      authnv1.TokenReviewStatus{Error: "token has been invalidated"},
			tokenTTL:    time.Hour,
			advances:    []time.Duration{0, 0, 4 * time.Second, time.Second, time.Second},
			wantReviews: []int{1, 1, 1, 2, 2},
			wantErr:     attestor.ErrUnauthenticated,
		},
		{
			name:        "custom NegativeTTL",
			cc:          k8s.CacheConfig{NegativeTTL: 30 * time.Second},
			status:      authnv1.TokenReviewStatus{Error: "token has been invalidated"},
			tokenTTL:    time.Hour,
			advances:    []time.Duration{0, 29 * time.Second, time.Second},
			wantReviews: []int{1, 1, 2},
			wantErr:     attestor.ErrUnauthenticated,
		},
		{
			name:        "denied namespace cached for NegativeTTL",
			status:      authenticated("kube-system", "coredns"),
			tokenTTL:    time.Hour,
			advances:    []time.Duration{0, 4 * time.Second, time.Second},
			wantReviews: []int{1, 1, 2},
			wantErr:     attestor.ErrPermissionDenied,
		},
		{
			name:        "reviewer error not cached",
			err:         errors.New("apiserver: 429 Too Many Requests"),
			tokenTTL:    time.Hour,
			advances:    []time.Duration{0, 0, 0},
			wantReviews: []int{1, 2, 3},
			wantErr:     attestor.ErrUnavailable,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newTR(t, k8s.Config{}, tc.cc)
			if tc.status.Authenticated || tc.status.Error != "" || tc.err != nil {
				f.rev.set(tc.status, tc.err)
			}
			tok := mint(t, epoch, saToken{ttl: tc.tokenTTL})
			for i, adv := range tc.advances {
				f.clk.Advance(adv)
				_, err := f.attest(tok)
				switch {
				case tc.wantErr == nil && err != nil:
					t.Errorf("step %d (+%v): Attest() = %v, want success", i, f.clk.Now().Sub(epoch), err)
				case tc.wantErr != nil && !errors.Is(err, tc.wantErr):
					t.Errorf("step %d (+%v): Attest() = %v, want %v", i, f.clk.Now().Sub(epoch), err, tc.wantErr)
				}
				if got := f.rev.count(); got != tc.wantReviews[i] {
					t.Errorf("step %d (+%v): reviews = %d, want %d", i, f.clk.Now().Sub(epoch), got, tc.wantReviews[i])
				}
			}
		})
	}
}

// TestTokenReviewSlowReviewLifetime: a result's lifetime runs from when the
// review was sent, so a slow review does not stretch it past the token's
// expiry.
func TestTokenReviewSlowReviewLifetime(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newTR(t, k8s.Config{}, k8s.CacheConfig{})
		f.rev.gate = make(chan struct{})
		tok := mint(t, epoch, saToken{ttl: 10 * time.Second})
		var wg sync.WaitGroup
		wg.Go(func() {
			if _, err := f.attest(tok); err != nil {
				t.Errorf("Attest() = %v", err)
			}
		})
		synctest.Wait() // the review is in flight
		f.clk.Advance(5 * time.Second)
		close(f.rev.gate)
		wg.Wait()
		for _, step := range []struct {
			advance     time.Duration
			wantReviews int
		}{
			{advance: 4*time.Second + 999*time.Millisecond, wantReviews: 1}, // just before exp
			{advance: time.Millisecond, wantReviews: 2},                     // at exp
		} {
			f.clk.Advance(step.advance)
			if _, err := f.attest(tok); err != nil {
				t.Fatalf("Attest() at +%v = %v", f.clk.Now().Sub(epoch), err)
			}
			if got := f.rev.count(); got != step.wantReviews {
				t.Errorf("reviews at +%v = %d, want %d", f.clk.Now().Sub(epoch), got, step.wantReviews)
			}
		}
	})
}

// TestTokenReviewNegativeCacheSize: refused when built, not on the first
// request.
func TestTokenReviewNegativeCacheSize(t *testing.T) {
	_, err := k8s.NewTokenReview(k8s.TokenReviewConfig{Config: k8s.Config{TrustDomain: td}, Reviewer: &fakeReviewer{}, Cache: k8s.CacheConfig{Size: -1}})
	if err == nil || !strings.HasPrefix(err.Error(), "k8s: ") || !strings.Contains(err.Error(), "cache size -1") {
		t.Fatalf("NewTokenReview(Size -1) = %v, want k8s: ...cache size -1...", err)
	}
}

// TestTokenReviewErrorThenSuccess: an outage is not remembered once the API
// server answers again.
func TestTokenReviewErrorThenSuccess(t *testing.T) {
	f := newTR(t, k8s.Config{}, k8s.CacheConfig{})
	tok := mint(t, epoch, saToken{})
	f.rev.set(authnv1.TokenReviewStatus{}, errors.New("timeout"))
	if _, err := f.attest(tok); !errors.Is(err, attestor.ErrUnavailable) {
		t.Fatalf("Attest() during outage = %v, want ErrUnavailable", err)
	}
	f.rev.set(authenticated("foo", "bar"), nil)
	if _, err := f.attest(tok); err != nil {
		t.Fatalf("Attest() after outage = %v", err)
	}
	if got := f.rev.count(); got != 2 {
		t.Errorf("reviews = %d, want 2", got)
	}
}

func TestTokenReviewLRU(t *testing.T) {
	tests := []struct {
		name string
		// order of tokens (by index) to attest in a cache of three; then
		// which tokens must still be cached (no new review) and which not.
		order      []int
		wantCached []int
		wantGone   []int
	}{
		{name: "four tokens in a cache of three", order: []int{0, 1, 2, 3}, wantCached: []int{1, 2, 3}, wantGone: []int{0}},
		{name: "use refreshes recency", order: []int{0, 1, 2, 0, 3}, wantCached: []int{0, 2, 3}, wantGone: []int{1}},
		// Had the repeats taken slots, token 2 would have evicted 0 or 1.
		{name: "repeats take one slot", order: []int{0, 0, 1, 1, 0, 2}, wantCached: []int{0, 1, 2}},
	}
	tokens := make([]string, 4)
	for i := range tokens {
		tokens[i] = mint(t, epoch, saToken{serial: i})
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newTR(t, k8s.Config{}, k8s.CacheConfig{Size: 3})
			for _, i := range tc.order {
				if _, err := f.attest(tokens[i]); err != nil {
					t.Fatal(err)
				}
			}
			// Probe the survivors first: probing an evicted token
			// re-inserts it and would evict another.
			for _, i := range tc.wantCached {
				before := f.rev.count()
				if _, err := f.attest(tokens[i]); err != nil {
					t.Fatal(err)
				}
				if f.rev.count() != before {
					t.Errorf("token %d was not cached", i)
				}
			}
			for _, i := range tc.wantGone {
				before := f.rev.count()
				if _, err := f.attest(tokens[i]); err != nil {
					t.Fatal(err)
				}
				if f.rev.count() != before+1 {
					t.Errorf("token %d was still cached", i)
				}
			}
		})
	}
}

func TestTokenReviewLRUBoundUnderLoad(t *testing.T) {
	f := newTR(t, k8s.Config{}, k8s.CacheConfig{Size: 8})
	var wg sync.WaitGroup
	tokens := make([]string, 32)
	for i := range tokens {
		tokens[i] = mint(t, epoch, saToken{serial: i})
	}
	for i := range 4 {
		wg.Go(func() {
			for j := range 200 {
				if _, err := f.attest(tokens[(i*7+j)%len(tokens)]); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	// A token answered from the cache now was cached before the probe
	// began: probing inserts only tokens it does not come back to.
	before := f.rev.count()
	for _, tok := range tokens {
		if _, err := f.attest(tok); err != nil {
			t.Fatal(err)
		}
	}
	if hits := len(tokens) - (f.rev.count() - before); hits > 8 {
		t.Errorf("%d tokens answered from a cache of 8", hits)
	}
}

func TestTokenReviewDistinctTokensDistinctReviews(t *testing.T) {
	f := newTR(t, k8s.Config{}, k8s.CacheConfig{})
	tokens := make([]string, 5)
	for i := range tokens {
		tokens[i] = mint(t, epoch, saToken{serial: i})
	}
	for _, tok := range tokens {
		if _, err := f.attest(tok); err != nil {
			t.Fatal(err)
		}
	}
	if got, want := f.rev.count(), 5; got != want {
		t.Errorf("reviews = %d, want %d", got, want)
	}
	// All five are cached.
	for _, tok := range tokens {
		if _, err := f.attest(tok); err != nil {
			t.Fatal(err)
		}
	}
	if got, want := f.rev.count(), 5; got != want {
		t.Errorf("reviews after attesting the five again = %d, want %d", got, want)
	}
}
