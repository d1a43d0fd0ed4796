package k8s_test

import (
	"context"
	"sync/atomic"
	"testing"

	authnv1 "k8s.io/api/authentication/v1"

	"github.com/meshca/meshca/attestor"
	"github.com/meshca/meshca/attestor/k8s"
	"github.com/meshca/meshca/internal/clock/clocktest"
)

// instantReviewer answers at once without locking, so the benchmarks
// measure the attestor.
type instantReviewer struct {
	status authnv1.TokenReviewStatus
	calls  atomic.Int64
}

func (r *instantReviewer) Review(context.Context, string, []string) (authnv1.TokenReviewStatus, error) {
	r.calls.Add(1)
	return r.status, nil
}

// BenchmarkOfflineAttest attests ES256 pod-bound projected tokens, side by
// side: offline only (jwks mode), and offline then the bound ServiceAccount
// and pod found in synced informer caches (informer mode; a fake clientset
// feeds client-go's own caches). "verify" verifies every token (16 distinct
// tokens cycled through a verified-token cache of one, so none is
// remembered: a new pod's first CSR); "cached" presents one token again (a
// workload renewing with the token it has), which the verified-token cache
// answers.
func BenchmarkOfflineAttest(b *testing.B) {
	clk := clocktest.New(epoch)
	objects, _ := fakeCluster(b, liveSA(), livePod())
	creds := make([]attestor.Credential, 16)
	for i := range creds {
		creds[i] = attestor.Credential{BearerToken: mint(b, epoch, saToken{serial: i})}
	}
	for _, m := range []struct {
		name string
		size int // verified-token cache size
		n    int // distinct tokens
	}{{"verify", 1, len(creds)}, {"cached", 0, 1}} {
		cfg := k8s.JWKSConfig{Config: k8s.Config{TrustDomain: td, Clock: clk}, Keys: staticKeys(b, clk), CacheSize: m.size}
		jw, err := k8s.NewJWKS(cfg)
		if err != nil {
			b.Fatal(err)
		}
		inf, err := k8s.NewInformer(k8s.InformerConfig{JWKSConfig: cfg, Informers: objects})
		if err != nil {
			b.Fatal(err)
		}
		for _, mode := range []struct {
			name string
			a    attestor.Attestor
		}{{"jwks", jw}, {"informer", inf}} {
			b.Run(mode.name+"/"+m.name, func(b *testing.B) {
				ctx := context.Background()
				if _, err := mode.a.Attest(ctx, creds[0]); err != nil { // warm the key set
					b.Fatal(err)
				}
				b.ReportAllocs()
				i := 0
				for b.Loop() {
					if _, err := mode.a.Attest(ctx, creds[i%m.n]); err != nil {
						b.Fatal(err)
					}
					i++
				}
			})
		}
	}
}

// BenchmarkTokenReviewCached is the cache-hit path.
func BenchmarkTokenReviewCached(b *testing.B) {
	clk := clocktest.New(epoch)
	rev := &fakeReviewer{status: authenticated("foo", "bar")}
	a, err := k8s.NewTokenReview(k8s.TokenReviewConfig{Config: k8s.Config{TrustDomain: td, Clock: clk}, Reviewer: rev, Cache: k8s.CacheConfig{}})
	if err != nil {
		b.Fatal(err)
	}
	cred := attestor.Credential{BearerToken: mint(b, epoch, saToken{})}
	ctx := context.Background()
	if _, err := a.Attest(ctx, cred); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := a.Attest(ctx, cred); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	if n := rev.count(); n != 1 {
		b.Fatalf("reviews = %d, want 1", n)
	}
}

// BenchmarkTokenReviewUncached sends a review on every op: a cache of one
// entry cycled through 16 distinct tokens never hits.
func BenchmarkTokenReviewUncached(b *testing.B) {
	clk := clocktest.New(epoch)
	rev := &instantReviewer{status: authenticated("foo", "bar")}
	a, err := k8s.NewTokenReview(k8s.TokenReviewConfig{Config: k8s.Config{TrustDomain: td, Clock: clk}, Reviewer: rev, Cache: k8s.CacheConfig{Size: 1}})
	if err != nil {
		b.Fatal(err)
	}
	creds := make([]attestor.Credential, 16)
	for i := range creds {
		creds[i] = attestor.Credential{BearerToken: mint(b, epoch, saToken{serial: i})}
	}
	ctx := context.Background()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if _, err := a.Attest(ctx, creds[i%len(creds)]); err != nil {
			b.Fatal(err)
		}
		i++
	}
	b.StopTimer()
	if n := rev.calls.Load(); n != int64(i) {
		b.Fatalf("reviews = %d for %d ops, want one per op", n, i)
	}
}
