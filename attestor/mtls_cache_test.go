package attestor_test

import (
	"context"
	"crypto/x509"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshca/meshca/attestor"
	"github.com/meshca/meshca/internal/clock/clocktest"
)

// swappableBundle is an x509bundle.Source whose bundle can be replaced, as
// a root rotation does.
type swappableBundle struct {
	b atomic.Pointer[x509bundle.Bundle]
}

func (s *swappableBundle) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	return s.b.Load().GetX509BundleForTrustDomain(td)
}

// TestMTLSVerifiedChainCache: a chain verified once is not verified again
// while the bundle stays the same, but revocation and admission are asked
// on every request, a replaced bundle forces a new verification, and an
// intermediate that expires before the leaf ends the entry.
func TestMTLSVerifiedChainCache(t *testing.T) {
	ctx := context.Background()
	td := spiffeid.RequireTrustDomainFromString("example.org")
	id := spiffeid.RequireFromSegments(td, "ns", "web", "sa", "frontend")
	root := newRoot(t, "root")
	interTmpl := caTemplate(t, "short intermediate")
	interTmpl.NotAfter = t0.Add(30 * time.Minute) // before the leaf's NotAfter
	interKey := newKey(t)
	inter := testCA{cert: createCert(t, interTmpl, root.cert, interKey.Public(), root.key), key: interKey}
	leaf := inter.issue(t, svidTemplate(t, id))
	chain := []*x509.Certificate{leaf, inter.cert}

	bundles := &swappableBundle{}
	bundles.b.Store(x509bundle.FromX509Authorities(td, []*x509.Certificate{root.cert}))
	revs := &fakeRevocations{}
	var admitted atomic.Int64
	clk := clocktest.New(t0.Add(time.Minute))
	m, err := attestor.NewMTLS(attestor.MTLSConfig{Bundles: bundles, Revocations: revs, Clock: clk,
		Admit: func(context.Context, spiffeid.ID) error { admitted.Add(1); return nil }})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		got, err := m.Attest(ctx, attestor.Credential{PeerCertificates: chain})
		if err != nil || got.ID != id {
			t.Fatalf("attest %d = %v, %v", i, got.ID, err)
		}
	}
	if n := len(revs.asked()); n != 3 || admitted.Load() != 3 {
		t.Fatalf("revocation asked %d times and admission %d times for 3 renewals: both must be asked every time", n, admitted.Load())
	}

	// Revoked after it was remembered: refused.
	revs.err = attestor.ErrRevoked
	if _, err := m.Attest(ctx, attestor.Credential{PeerCertificates: chain}); !errors.Is(err, attestor.ErrPermissionDenied) {
		t.Fatalf("revoked remembered chain = %v, want PermissionDenied", err)
	}
	revs.err = nil

	// The bundle is replaced by one without this root: verified again, refused.
	bundles.b.Store(x509bundle.FromX509Authorities(td, []*x509.Certificate{newRoot(t, "other root").cert}))
	if _, err := m.Attest(ctx, attestor.Credential{PeerCertificates: chain}); !errors.Is(err, attestor.ErrUnauthenticated) {
		t.Fatalf("remembered chain after the bundle lost its root = %v, want Unauthenticated", err)
	}
	// Back to the old root (a new bundle value): verifies and is remembered.
	bundles.b.Store(x509bundle.FromX509Authorities(td, []*x509.Certificate{root.cert}))
	if _, err := m.Attest(ctx, attestor.Credential{PeerCertificates: chain}); err != nil {
		t.Fatal(err)
	}
	// Past the intermediate's NotAfter (the leaf is still valid): refused.
	clk.Advance(30 * time.Minute)
	if _, err := m.Attest(ctx, attestor.Credential{PeerCertificates: chain}); !errors.Is(err, attestor.ErrUnauthenticated) {
		t.Fatalf("remembered chain past its intermediate's NotAfter = %v, want Unauthenticated", err)
	}
}

// BenchmarkMTLSAttest is one renewal's attestation over a reused
// connection: the chain verified on every request (cache off) or once.
func BenchmarkMTLSAttest(b *testing.B) {
	t := &testing.T{}
	td := spiffeid.RequireTrustDomainFromString("example.org")
	id := spiffeid.RequireFromSegments(td, "ns", "web", "sa", "frontend")
	root := newRoot(t, "root")
	inter := root.newIntermediate(t, "intermediate")
	chain := []*x509.Certificate{inter.issue(t, svidTemplate(t, id)), inter.cert}
	bundles := x509bundle.FromX509Authorities(td, []*x509.Certificate{root.cert})
	for _, bc := range []struct {
		name string
		size int
	}{{"verify every request", -1}, {"verified once", 0}} {
		b.Run(bc.name, func(b *testing.B) {
			m, err := attestor.NewMTLS(attestor.MTLSConfig{Bundles: bundles, Revocations: &nopRevocations{},
				Clock: clocktest.New(t0.Add(time.Minute)), VerifiedCacheSize: bc.size})
			if err != nil {
				b.Fatal(err)
			}
			cred := attestor.Credential{PeerCertificates: chain}
			b.ReportAllocs()
			for b.Loop() {
				if _, err := m.Attest(context.Background(), cred); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

type nopRevocations struct{}

func (nopRevocations) CheckRevoked(context.Context, []*x509.Certificate, spiffeid.ID) error {
	return nil
}
