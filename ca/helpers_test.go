package ca_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"net/url"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshca/meshca/attestor"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/ca/store"
	"github.com/meshca/meshca/internal/clock/clocktest"
)

var (
	td      = spiffeid.RequireTrustDomainFromString("example.org")
	fooID   = spiffeid.RequireFromPath(td, "/ns/foo/sa/bar")
	otherID = spiffeid.RequireFromPath(td, "/ns/foo/sa/other")
	t0      = time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)
)

// numRecords returns how many issuance records st holds.
func numRecords(t testing.TB, st store.Store) int {
	t.Helper()
	recs, err := st.Issuances(context.Background(), store.IssuanceFilter{})
	if err != nil {
		t.Fatalf("Issuances: %v", err)
	}
	return len(recs)
}

// failingRecords is a store that cannot write issuance records.
type failingRecords struct {
	store.Store
	err error
}

func (f failingRecords) RecordIssuance(context.Context, store.Issuance) error { return f.err }

func identity(id spiffeid.ID) attestor.Identity {
	return attestor.Identity{ID: id, Kind: "test", Subject: "unit-test"}
}

func newAuthority(t testing.TB, st store.Store, clk *clocktest.Fake, mod func(*ca.Config)) *ca.Authority {
	t.Helper()
	cfg := ca.Config{TrustDomain: td, Store: st, Clock: clk}
	if mod != nil {
		mod(&cfg)
	}
	a, err := ca.New(context.Background(), cfg)
	if err != nil {
		t.Fatalf("ca.New: %v", err)
	}
	return a
}

func p256(t testing.TB) crypto.Signer {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// csrPEM builds a PEM CSR from tmpl signed by key.
func csrPEM(t testing.TB, key crypto.Signer, tmpl *x509.CertificateRequest) []byte {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatalf("CreateCertificateRequest: %v", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
}

func uris(ids ...spiffeid.ID) []*url.URL {
	var out []*url.URL
	for _, id := range ids {
		out = append(out, id.URL())
	}
	return out
}

func parseChain(t testing.TB, chain []string) []*x509.Certificate {
	t.Helper()
	var certs []*x509.Certificate
	for i, s := range chain {
		b, rest := pem.Decode([]byte(s))
		if b == nil || len(rest) != 0 {
			t.Fatalf("chain[%d] is not exactly one PEM block", i)
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			t.Fatalf("chain[%d]: %v", i, err)
		}
		certs = append(certs, c)
	}
	return certs
}

func fooCSR() *x509.CertificateRequest { return &x509.CertificateRequest{URIs: uris(fooID)} }

func leafOf(t testing.TB, iss *ca.Issued) *x509.Certificate {
	t.Helper()
	c, err := iss.Certificate()
	if err != nil {
		t.Fatalf("issued DER does not parse: %v", err)
	}
	return c
}
