package k8s_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"errors"
	"maps"
	"strings"
	"sync"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshca/meshca/attestor"
	"github.com/meshca/meshca/attestor/jwks"
	"github.com/meshca/meshca/attestor/k8s"
	"github.com/meshca/meshca/internal/clock/clocktest"
)

// swappableKeys is a cluster JWKS the test can change, counting fetches.
type swappableKeys struct {
	mu      sync.Mutex
	doc     []byte
	fetches int
	during  func() // when set, runs inside each fetch (time passing)
}

func (s *swappableKeys) set(t *testing.T, keys ...jose.JSONWebKey) {
	t.Helper()
	doc, err := json.Marshal(jose.JSONWebKeySet{Keys: keys})
	if err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.doc = doc
}

func (s *swappableKeys) fetch(context.Context) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fetches++
	if s.during != nil {
		s.during()
	}
	return s.doc, nil
}

func (s *swappableKeys) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.fetches
}

// TestVerifiedTokenCache: a token the jwks mode verified is answered again
// from its cache, and the cache never answers what a new verification would
// not: not past the token's expiry, not once its key has left the key set,
// not for a token that was refused, not for another token.
func TestVerifiedTokenCache(t *testing.T) {
	clusterKey := jose.JSONWebKey{Key: signingKey().Public(), KeyID: kid, Algorithm: "ES256", Use: "sig"}
	other, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	otherKey := jose.JSONWebKey{Key: other.Public(), KeyID: "sa-key-2", Algorithm: "ES256", Use: "sig"}

	type env struct {
		clk  *clocktest.Fake
		keys *swappableKeys
		a    *k8s.JWKSAttestor
		rec  *recorder
	}
	attest := func(t *testing.T, e env, token string) (attestor.Identity, error) {
		t.Helper()
		return e.a.Attest(context.Background(), attestor.Credential{BearerToken: token})
	}
	// refused checks that token is refused as unauthenticated, for a
	// reason that says why.
	refused := func(t *testing.T, e env, token, why string) {
		t.Helper()
		if _, err := attest(t, e, token); !errors.Is(err, attestor.ErrUnauthenticated) || !strings.Contains(err.Error(), why) {
			t.Errorf("Attest() = %v, want ErrUnauthenticated, %s", err, why)
		}
	}
	mustAttest := func(t *testing.T, e env, token string) attestor.Identity {
		t.Helper()
		id, err := attest(t, e, token)
		if err != nil {
			t.Fatalf("Attest() = %v", err)
		}
		return id
	}
	tests := []struct {
		name      string
		cacheSize int
		run       func(t *testing.T, e env)
		wantHits  int
	}{
		{
			name: "same token again from the cache",
			run: func(t *testing.T, e env) {
				tok := mint(t, epoch, saToken{})
				first := mustAttest(t, e, tok)
				e.clk.Advance(30 * time.Minute)
				again := mustAttest(t, e, tok)
				if again.ID != first.ID || again.Kind != first.Kind || again.Subject != first.Subject || !maps.Equal(again.Details, first.Details) {
					t.Errorf("from the cache: %+v, verified: %+v", again, first)
				}
			},
			wantHits: 1,
		},
		{
			name: "another token is verified on its own",
			run: func(t *testing.T, e env) {
				mustAttest(t, e, mint(t, epoch, saToken{}))
				id := mustAttest(t, e, mint(t, epoch, saToken{namespace: "baz", sa: "qux", podName: "pod-2"}))
				if got := id.ID.Path(); got != "/ns/baz/sa/qux" || id.Details[k8s.DetailPodName] != "pod-2" {
					t.Errorf("second token attested as %s, pod %q", got, id.Details[k8s.DetailPodName])
				}
			},
		},
		{
			name: "expired while cached",
			run: func(t *testing.T, e env) {
				tok := mint(t, epoch, saToken{ttl: 10 * time.Minute})
				mustAttest(t, e, tok)
				e.clk.Advance(10*time.Minute + jwks.DefaultLeeway + time.Second)
				refused(t, e, tok, "expired")
			},
		},
		{
			name: "expired while its recheck refreshed the key set",
			run: func(t *testing.T, e env) {
				tok := mint(t, epoch, saToken{ttl: 10 * time.Minute})
				mustAttest(t, e, tok)
				// Due for a refresh a second before the token's last
				// instant; the refresh takes two seconds.
				e.clk.Advance(10*time.Minute + jwks.DefaultLeeway - time.Second)
				e.keys.mu.Lock()
				e.keys.during = func() { e.clk.Advance(2 * time.Second) }
				e.keys.mu.Unlock()
				refused(t, e, tok, "expired")
			},
		},
		{
			name: "its key left the key set",
			run: func(t *testing.T, e env) {
				tok := mint(t, epoch, saToken{})
				mustAttest(t, e, tok)
				e.keys.set(t, otherKey) // the cluster rotated its key
				e.clk.Advance(jwks.DefaultRefreshInterval)
				refused(t, e, tok, "unknown key")
				if n := e.keys.count(); n != 2 {
					t.Errorf("key set fetched %d times, want 2 (the refresh a cached token triggers too)", n)
				}
			},
		},
		{
			name: "another key under the same key ID",
			run: func(t *testing.T, e env) {
				tok := mint(t, epoch, saToken{})
				mustAttest(t, e, tok)
				replaced := otherKey
				replaced.KeyID = kid
				e.keys.set(t, replaced)
				e.clk.Advance(jwks.DefaultRefreshInterval)
				refused(t, e, tok, "signature")
			},
		},
		{
			name: "key set fetched again, unchanged",
			run: func(t *testing.T, e env) {
				tok := mint(t, epoch, saToken{})
				mustAttest(t, e, tok)
				e.clk.Advance(jwks.DefaultRefreshInterval)
				mustAttest(t, e, tok)
				if n := e.keys.count(); n != 2 {
					t.Errorf("key set fetched %d times, want 2", n)
				}
			},
			wantHits: 1,
		},
		{
			name: "key added beside it",
			run: func(t *testing.T, e env) {
				tok := mint(t, epoch, saToken{})
				mustAttest(t, e, tok)
				e.keys.set(t, clusterKey, otherKey)
				e.clk.Advance(jwks.DefaultRefreshInterval)
				mustAttest(t, e, tok) // verified again against the new set, then cached
				mustAttest(t, e, tok)
			},
			wantHits: 1,
		},
		{
			name: "refused tokens are not remembered",
			run: func(t *testing.T, e env) {
				tok := forge(t)
				for range 2 {
					if _, err := attest(t, e, tok); !errors.Is(err, attestor.ErrUnauthenticated) {
						t.Fatalf("forged token: Attest() = %v, want ErrUnauthenticated", err)
					}
				}
				if n := e.rec.refusals("invalid"); n != 2 {
					t.Errorf("refusals counted %d, want 2", n)
				}
			},
		},
		{
			name:      "bounded by CacheSize",
			cacheSize: 1,
			run: func(t *testing.T, e env) {
				a, b := mint(t, epoch, saToken{}), mint(t, epoch, saToken{serial: 1})
				for range 3 {
					mustAttest(t, e, a)
					mustAttest(t, e, b)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clk := clocktest.New(epoch)
			keys := &swappableKeys{}
			keys.set(t, clusterKey)
			rec := newRecorder()
			a, err := k8s.NewJWKS(k8s.JWKSConfig{
				Config:    k8s.Config{TrustDomain: td, Clock: clk, Metrics: rec},
				Keys:      jwks.NewKeySet(jwks.KeySetConfig{Fetch: keys.fetch, Clock: clk}),
				CacheSize: tt.cacheSize,
			})
			if err != nil {
				t.Fatal(err)
			}
			tt.run(t, env{clk: clk, keys: keys, a: a, rec: rec})
			if got := rec.count("verified-hits"); got != tt.wantHits {
				t.Errorf("verified-token cache hits = %d, want %d", got, tt.wantHits)
			}
		})
	}
}

// TestInformerCachedTokenStillBound: a token the informer mode answers from
// the verified-token cache is still checked against the informer caches on
// every request.
func TestInformerCachedTokenStillBound(t *testing.T) {
	ctx := context.Background()
	inf, client := fakeCluster(t, liveSA(), livePod())
	rec := newRecorder()
	a := newInformerAttestor(t, inf, k8s.Config{Metrics: rec})
	// Older than CatchUpAge: the refusal is decided at once.
	cred := attestor.Credential{BearerToken: mint(t, epoch.Add(-time.Minute), saToken{})}
	for range 2 {
		if _, err := a.Attest(ctx, cred); err != nil {
			t.Fatalf("Attest() = %v", err)
		}
	}
	if n := rec.count("verified-hits"); n != 1 {
		t.Fatalf("verified-token cache hits = %d, want 1", n)
	}
	if err := client.CoreV1().Pods("foo").Delete(ctx, "pod-1", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	clocktest.Eventually(t, "deleted pod's cached token refused", func() bool {
		_, err := a.Attest(ctx, cred)
		return errors.Is(err, attestor.ErrUnauthenticated)
	})
	if n := rec.count("verified-hits"); n < 2 {
		t.Errorf("verified-token cache hits = %d: the refusal did not come through the cache", n)
	}
}

// TestVerifiedCacheSizeNegative: a negative cache size is a configuration
// error, not a cache of none.
func TestVerifiedCacheSizeNegative(t *testing.T) {
	clk := clocktest.New(epoch)
	_, err := k8s.NewJWKS(k8s.JWKSConfig{Config: k8s.Config{TrustDomain: td, Clock: clk}, Keys: staticKeys(t, clk), CacheSize: -1})
	if err == nil || !strings.Contains(err.Error(), "verified-token cache size -1 is negative") {
		t.Errorf("NewJWKS(CacheSize -1) error = %v", err)
	}
}
