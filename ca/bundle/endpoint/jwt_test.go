package endpoint_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/federation"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshca/meshca/ca/bundle/endpoint"
	"github.com/meshca/meshca/ca/bundle/internal/bundletest"
	"github.com/meshca/meshca/internal/clock/clocktest"
	"github.com/meshca/meshca/internal/testca"
)

// jwtSource is a bundle Source with JWT keys (an endpoint.JWTSource).
type jwtSource struct {
	*bundletest.Source
	mu  sync.Mutex
	jwt *jwtbundle.Bundle
}

func (s *jwtSource) JWTBundle() *jwtbundle.Bundle {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.jwt
}

func (s *jwtSource) addKey(t *testing.T, kid string) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	keys := s.jwt.JWTAuthorities()
	keys[kid] = k.Public()
	s.jwt = jwtbundle.FromJWTAuthorities(td, map[string]crypto.PublicKey(keys))
}

// TestJWTKeys: the bundle endpoint serves the JWT-SVID keys as "jwt-svid"
// entries beside the roots, and a new key is a new spiffe_sequence.
func TestJWTKeys(t *testing.T) {
	ca := testca.New(t)
	clk := clocktest.New(time.Now())
	src := &jwtSource{Source: bundletest.NewSource(bundletest.PEM(ca.Root)), jwt: jwtbundle.New(td)}
	src.addKey(t, "k1")
	s := start(t, endpoint.Config{Source: src, Issuer: &issuer{ca: ca, clk: clk}, Clock: clk})
	trust := x509bundle.FromX509Authorities(td, []*x509.Certificate{ca.Root})
	endpointID := spiffeid.RequireFromPath(td, "/meshca/bundle-endpoint")
	b, err := federation.FetchBundle(context.Background(), td, url(s), federation.WithSPIFFEAuth(trust, endpointID))
	if err != nil {
		t.Fatal(err)
	}
	if !b.HasJWTAuthority("k1") || len(b.X509Authorities()) != 1 {
		t.Fatalf("bundle: %d jwt keys, %d roots", len(b.JWTAuthorities()), len(b.X509Authorities()))
	}
	seq, _ := b.SequenceNumber()
	src.addKey(t, "k2")
	b, err = federation.FetchBundle(context.Background(), td, url(s), federation.WithSPIFFEAuth(trust, endpointID))
	if err != nil {
		t.Fatal(err)
	}
	if seq2, _ := b.SequenceNumber(); !b.HasJWTAuthority("k2") || seq2 != seq+1 {
		t.Errorf("after a new JWT key: has k2 %v, sequence %d (was %d)", b.HasJWTAuthority("k2"), seq2, seq)
	}
}
