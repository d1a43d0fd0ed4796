package ca_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/clock/clocktest"
	"github.com/meshca/meshca/internal/storetest"
)

func TestSignIssuesValidSVID(t *testing.T) {
	st := storetest.NewMem()
	clk := clocktest.New(t0)
	a := newAuthority(t, st, clk, nil)
	key := p256(t)

	iss, err := a.Sign(context.Background(), ca.SignRequest{
		CSR: csrPEM(t, key, &x509.CertificateRequest{URIs: uris(fooID)}), Identity: identity(fooID), Peer: "127.0.0.1:1",
	})
	if err != nil {
		t.Fatalf("Sign: %v", err)
	}
	chain := parseChain(t, iss.ChainPEM)
	if len(chain) != 3 {
		t.Fatalf("chain has %d certificates, want leaf, intermediate, root", len(chain))
	}
	if !chain[2].Equal(a.Bundle().X509Authorities()[0]) {
		t.Error("last certificate of the chain is not the root")
	}
	if !chain[1].Equal(a.SigningCertificate()) {
		t.Error("second certificate is not the active intermediate")
	}
	id, _, err := x509svid.Verify(chain[:2], a.Bundle(), x509svid.WithTime(clk.Now()))
	if err != nil {
		t.Fatalf("x509svid.Verify: %v", err)
	}
	if id != fooID {
		t.Errorf("verified ID %s, want %s", id, fooID)
	}
	leaf := chain[0]
	if got := leaf.NotAfter.Sub(clk.Now()); got != ca.DefaultLeafTTL {
		t.Errorf("lifetime from now %s, want %s", got, ca.DefaultLeafTTL)
	}
	if got := clk.Now().Sub(leaf.NotBefore); got != ca.DefaultBackdate {
		t.Errorf("backdated by %s, want %s", got, ca.DefaultBackdate)
	}
	if leaf.IsCA || !leaf.BasicConstraintsValid {
		t.Error("leaf must have basicConstraints CA=false")
	}
	if leaf.KeyUsage != x509.KeyUsageDigitalSignature {
		t.Errorf("key usage %v, want digitalSignature only for an EC key", leaf.KeyUsage)
	}
	if len(leaf.ExtKeyUsage) != 2 {
		t.Errorf("ext key usage %v, want serverAuth and clientAuth", leaf.ExtKeyUsage)
	}
	if len(leaf.SubjectKeyId) == 0 || !bytes.Equal(leaf.AuthorityKeyId, chain[1].SubjectKeyId) {
		t.Error("SKI missing or AKI does not match the issuer's SKI")
	}
	if n := leaf.SerialNumber.BitLen(); n < 100 || n > 128 {
		t.Errorf("serial has %d bits, want a random 128-bit number", n)
	}
	rec, err := st.Issuance(context.Background(), leaf.SerialNumber.Text(16))
	if err != nil {
		t.Fatalf("issuance not recorded: %v", err)
	}
	if rec.SPIFFEID != fooID.String() || rec.CredentialKind != "test" || rec.Peer != "127.0.0.1:1" || rec.PublicKeySHA256 == "" || !rec.NotAfter.Equal(leaf.NotAfter) {
		t.Errorf("record %+v does not describe the certificate", rec)
	}
}

func TestSignRSAKeyGetsKeyEncipherment(t *testing.T) {
	a := newAuthority(t, storetest.NewMem(), clocktest.New(t0), nil)
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	iss, err := a.Sign(context.Background(), ca.SignRequest{CSR: csrPEM(t, key, &x509.CertificateRequest{URIs: uris(fooID)}), Identity: identity(fooID)})
	if err != nil {
		t.Fatalf("Sign: %v", err)
	}
	if want := x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment; leafOf(t, iss).KeyUsage != want {
		t.Errorf("key usage %v, want %v", leafOf(t, iss).KeyUsage, want)
	}
}

func TestSignHonoursRequestedTTL(t *testing.T) {
	clk := clocktest.New(t0)
	a := newAuthority(t, storetest.NewMem(), clk, nil)
	iss, err := a.Sign(context.Background(), ca.SignRequest{CSR: csrPEM(t, p256(t), &x509.CertificateRequest{URIs: uris(fooID)}), TTL: time.Hour, Identity: identity(fooID)})
	if err != nil {
		t.Fatal(err)
	}
	if got := leafOf(t, iss).NotAfter.Sub(clk.Now()); got != time.Hour {
		t.Errorf("lifetime %s, want 1h", got)
	}
}

func TestSignRefusesBadInput(t *testing.T) {
	key := p256(t)
	good := csrPEM(t, key, &x509.CertificateRequest{URIs: uris(fooID)})
	der, _ := pem.Decode(good)
	badSig := append([]byte(nil), der.Bytes...)
	badSig[len(badSig)-5] ^= 0xff // inside the signature value
	caExt := func() pkix.Extension {
		v, _ := asn1.Marshal(struct{ IsCA bool }{true})
		return pkix.Extension{Id: asn1.ObjectIdentifier{2, 5, 29, 19}, Critical: true, Value: v}
	}()
	rsa1024, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	p224, _ := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	_, edKey, _ := ed25519.GenerateKey(rand.Reader)

	pemOf := func(typ string, b []byte) []byte { return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: b}) }
	tests := []struct {
		name    string
		csr     []byte
		ttl     time.Duration
		wantErr error
		wantMsg string
	}{
		{"not PEM", []byte("hello, CA"), 0, ca.ErrInvalidCSR, "not PEM"},
		{"empty", nil, 0, ca.ErrInvalidCSR, "not PEM"},
		{"DER instead of PEM", der.Bytes, 0, ca.ErrInvalidCSR, "not PEM"},
		{"wrong PEM type", pemOf("CERTIFICATE", der.Bytes), 0, ca.ErrInvalidCSR, `"CERTIFICATE"`},
		{"trailing data", append(append([]byte(nil), good...), []byte("junk")...), 0, ca.ErrInvalidCSR, "trailing data"},
		{"leading data", append([]byte("junk\n"), good...), 0, ca.ErrInvalidCSR, "data before the PEM block"},
		{"PEM headers", []byte(strings.Replace(string(good), "REQUEST-----\n", "REQUEST-----\nProc-Type: 4,ENCRYPTED\n\n", 1)), 0, ca.ErrInvalidCSR, "PEM headers"},
		{"garbage DER", pemOf("CERTIFICATE REQUEST", []byte{0x30, 0x03, 0x02, 0x01, 0x01}), 0, ca.ErrInvalidCSR, "invalid CSR"},
		{"bad signature", pemOf("CERTIFICATE REQUEST", badSig), 0, ca.ErrInvalidCSR, "signature"},
		{"another identity", csrPEM(t, key, &x509.CertificateRequest{URIs: uris(otherID)}), 0, ca.ErrIdentityMismatch, "asks for spiffe://example.org/ns/foo/sa/other but the credential proves spiffe://example.org/ns/foo/sa/bar"},
		{"no URI SAN", csrPEM(t, key, &x509.CertificateRequest{}), 0, ca.ErrInvalidCSR, "no URI SAN"},
		{"two URI SANs", csrPEM(t, key, &x509.CertificateRequest{URIs: uris(fooID, otherID)}), 0, ca.ErrInvalidCSR, "2 URI SANs"},
		{"two identical URI SANs", csrPEM(t, key, &x509.CertificateRequest{URIs: uris(fooID, fooID)}), 0, ca.ErrInvalidCSR, "2 URI SANs"},
		{"DNS SAN", csrPEM(t, key, &x509.CertificateRequest{URIs: uris(fooID), DNSNames: []string{"evil.example.com"}}), 0, ca.ErrInvalidCSR, "DNS SANs"},
		{"IP SAN", csrPEM(t, key, &x509.CertificateRequest{URIs: uris(fooID), IPAddresses: []net.IP{net.IPv4(10, 0, 0, 1)}}), 0, ca.ErrInvalidCSR, "IP SANs"},
		{"email SAN", csrPEM(t, key, &x509.CertificateRequest{URIs: uris(fooID), EmailAddresses: []string{"a@b.c"}}), 0, ca.ErrInvalidCSR, "email SANs"},
		{"CA bit", csrPEM(t, key, &x509.CertificateRequest{URIs: uris(fooID), ExtraExtensions: []pkix.Extension{caExt}}), 0, ca.ErrInvalidCSR, "CA certificate"},
		{"RSA 1024", csrPEM(t, rsa1024, &x509.CertificateRequest{URIs: uris(fooID)}), 0, ca.ErrInvalidCSR, "RSA 1024-bit key not allowed"},
		{"P-224", csrPEM(t, p224, &x509.CertificateRequest{URIs: uris(fooID)}), 0, ca.ErrInvalidCSR, "curve P-224 not allowed"},
		{"Ed25519", csrPEM(t, edKey, &x509.CertificateRequest{URIs: uris(fooID)}), 0, ca.ErrInvalidCSR, "not allowed"},
		{"oversized", bytes.Repeat([]byte("A"), 10<<20), 0, ca.ErrInvalidCSR, "over the 32768 byte limit"},
		{"negative TTL", good, -time.Second, ca.ErrInvalidTTL, "negative"},
		{"absurd TTL", good, 100 * 365 * 24 * time.Hour, ca.ErrInvalidTTL, "over the maximum 72h0m0s"},
		{"TTL just over max", good, ca.DefaultMaxLeafTTL + time.Second, ca.ErrInvalidTTL, "over the maximum"},
		{"TTL under a minute", good, 300 * time.Millisecond, ca.ErrInvalidTTL, "under the minimum 1m0s"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st := storetest.NewMem()
			a := newAuthority(t, st, clocktest.New(t0), nil)
			iss, err := a.Sign(context.Background(), ca.SignRequest{CSR: tc.csr, TTL: tc.ttl, Identity: identity(fooID)})
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("Sign error = %v, want %v", err, tc.wantErr)
			}
			if !strings.Contains(err.Error(), tc.wantMsg) {
				t.Errorf("error %q does not say %q", err, tc.wantMsg)
			}
			if iss != nil || numRecords(t, st) != 0 {
				t.Errorf("refused request left a certificate (%v) or %d records", iss != nil, numRecords(t, st))
			}
		})
	}
}

func TestSignRefusesIdentityOutsideTrustDomain(t *testing.T) {
	a := newAuthority(t, storetest.NewMem(), clocktest.New(t0), nil)
	foreign := spiffeid.RequireFromString("spiffe://other.org/ns/foo/sa/bar")
	_, err := a.Sign(context.Background(), ca.SignRequest{CSR: csrPEM(t, p256(t), &x509.CertificateRequest{URIs: uris(foreign)}), Identity: identity(foreign)})
	if !errors.Is(err, ca.ErrIdentityMismatch) {
		t.Fatalf("err = %v, want identity mismatch", err)
	}
}

func TestSignFailsWhenRecordCannotBeWritten(t *testing.T) {
	st := failingRecords{Store: storetest.NewMem(), err: errors.New("disk full")}
	a := newAuthority(t, st, clocktest.New(t0), nil)
	iss, err := a.Sign(context.Background(), ca.SignRequest{CSR: csrPEM(t, p256(t), &x509.CertificateRequest{URIs: uris(fooID)}), Identity: identity(fooID)})
	if !errors.Is(err, ca.ErrUnavailable) || iss != nil {
		t.Fatalf("Sign = %v, %v; want no certificate and ErrUnavailable", iss, err)
	}
}

// TestConfigRefused: New names what is wrong with an inconsistent Config.
func TestConfigRefused(t *testing.T) {
	parent, next, rootKeys := struct{ ca.Parent }{}, ca.ParentLoader(func(context.Context, time.Time) (ca.Parent, error) { return nil, nil }), struct{ ca.RootKeys }{} // only their presence is checked
	for _, tc := range []struct {
		name string
		mod  func(*ca.Config)
		want string
	}{
		{"intermediate under twice the leaf", func(c *ca.Config) { c.IntermediateTTL = 36 * time.Hour }, "at least twice the default TTL"},
		{"negative JWT publish delay", func(c *ca.Config) { c.JWTPublishDelay = -time.Second }, "lifetimes must be positive"},
		{"JWT-SVID TTL over its maximum", func(c *ca.Config) { c.JWTSVIDTTL, c.JWTSVIDMaxTTL = 2*time.Hour, time.Hour }, "must be between"},
		{"JWT-SVID TTL under the minimum", func(c *ca.Config) { c.JWTSVIDTTL = time.Second }, "must be between"},
		{"JWT key under twice the longest token", func(c *ca.Config) { c.JWTKeyTTL, c.JWTSVIDMaxTTL = 90*time.Minute, time.Hour }, "at least twice the maximum JWT-SVID TTL"},
		{"next parent without a parent", func(c *ca.Config) { c.NextParent = next }, "staged next parent needs a parent"},
		{"replica with a root in the store", func(c *ca.Config) { c.Replica = "r1" }, "replicas sharing a store need a root"},
		{"root keys and a parent", func(c *ca.Config) { c.RootKeys, c.Parent = rootKeys, parent }, "cannot be combined with a parent"},
		{"cross-signing with a parent", func(c *ca.Config) { c.RootRotationCrossSign, c.Parent = true, parent }, "cross-signing needs the old root's key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := ca.Config{TrustDomain: td, Store: storetest.NewMem(), Clock: clocktest.New(t0)}
			tc.mod(&cfg)
			if _, err := ca.New(context.Background(), cfg); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

// TestSigningCost: the CA knows what a signature costs once it has signed:
// zero before its first leaf, then the least time a signature took, which
// a later, slower one does not raise.
func TestSigningCost(t *testing.T) {
	a := newAuthority(t, storetest.NewMem(), clocktest.New(t0), nil)
	if c := a.SigningCost(); c != 0 {
		t.Fatalf("SigningCost before any leaf = %s, want 0", c)
	}
	var costs []time.Duration
	for range 5 {
		if _, err := a.Sign(context.Background(), ca.SignRequest{CSR: csrPEM(t, p256(t), fooCSR()), Identity: identity(fooID)}); err != nil {
			t.Fatal(err)
		}
		costs = append(costs, a.SigningCost())
	}
	for i, c := range costs {
		if c <= 0 || c > time.Second || (i > 0 && c > costs[i-1]) {
			t.Fatalf("SigningCost after each of 5 leaves = %v: want positive, under a second, never rising", costs)
		}
	}
}
