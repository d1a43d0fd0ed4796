package ca_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"math/big"
	"net"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/meshca/meshca/attestor"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/ca/store"
	"github.com/meshca/meshca/internal/clock/clocktest"
	"github.com/meshca/meshca/internal/storetest"
)

// TestValidateLeafRefusesBadCertificates builds certificates that break one
// rule each, signed by a real intermediate, and expects the validator to
// name the rule.
func TestValidateLeafRefusesBadCertificates(t *testing.T) {
	// The CA's own keys are not exported, so the bad leaves are signed by a
	// test CA of the same shape.
	issKey := p256(t)
	iss := testCA(t, "issuer", issKey, nil, nil)
	leafKey := p256(t)
	now := t0
	base := func() *x509.Certificate {
		return &x509.Certificate{
			SerialNumber:          big.NewInt(12345),
			NotBefore:             now.Add(-time.Minute),
			NotAfter:              now.Add(time.Hour),
			KeyUsage:              x509.KeyUsageDigitalSignature,
			ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
			BasicConstraintsValid: true,
			SubjectKeyId:          []byte{1, 2, 3},
			URIs:                  uris(fooID),
		}
	}
	otherIssuer := func() *x509.Certificate {
		// Same name and key as iss, another subject key ID: its leaves
		// carry an authority key ID that does not match iss.
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: iss.Subject, NotBefore: iss.NotBefore, NotAfter: iss.NotAfter,
			KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true, IsCA: true, SubjectKeyId: []byte{9, 9, 9}}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, issKey.Public(), issKey)
		if err != nil {
			t.Fatal(err)
		}
		c, _ := x509.ParseCertificate(der)
		return c
	}()
	tests := []struct {
		name   string
		mod    func(c *x509.Certificate)
		signer *x509.Certificate // default iss
		spki   []byte            // default the leaf key's
		mangle func([]byte) []byte
		msg    string
	}{
		{name: "valid", mod: func(*x509.Certificate) {}},
		{name: "CA bit", mod: func(c *x509.Certificate) { c.IsCA = true }, msg: "CA must be false"},
		{name: "no basic constraints", mod: func(c *x509.Certificate) { c.BasicConstraintsValid = false }, msg: "missing basicConstraints"},
		{name: "cert sign usage", mod: func(c *x509.Certificate) { c.KeyUsage |= x509.KeyUsageCertSign }, msg: "certificate or CRL signing"},
		{name: "CRL sign usage", mod: func(c *x509.Certificate) { c.KeyUsage |= x509.KeyUsageCRLSign }, msg: "certificate or CRL signing"},
		{name: "no digital signature", mod: func(c *x509.Certificate) { c.KeyUsage = x509.KeyUsageKeyEncipherment }, msg: "lacks digitalSignature"},
		{name: "no key usage", mod: func(c *x509.Certificate) { c.KeyUsage = 0 }, msg: "missing keyUsage"},
		{name: "two URIs", mod: func(c *x509.Certificate) { c.URIs = uris(fooID, otherID) }, msg: "more than one name"},
		{name: "no SAN at all", mod: func(c *x509.Certificate) { c.URIs = nil }, msg: "missing subjectAltName"},
		{name: "DNS SAN", mod: func(c *x509.Certificate) { c.DNSNames = []string{"x.example"} }, msg: "first name is not a URI"},
		{name: "IP SAN", mod: func(c *x509.Certificate) { c.IPAddresses = []net.IP{net.IPv4(1, 2, 3, 4)} }, msg: "first name is not a URI"},
		{name: "wrong ID", mod: func(c *x509.Certificate) { c.URIs = uris(otherID) }, msg: "want spiffe://example.org/ns/foo/sa/bar"},
		{name: "not a SPIFFE ID", mod: func(c *x509.Certificate) { c.URIs = []*url.URL{{Scheme: "https", Host: "x"}} }, msg: `URI "https://x"`},
		{name: "outlives issuer", mod: func(c *x509.Certificate) { c.NotAfter = iss.NotAfter.Add(time.Second) }, msg: "outlives its issuer"},
		{name: "starts before issuer", mod: func(c *x509.Certificate) { c.NotBefore = iss.NotBefore.Add(-time.Second) }, msg: "starts before its issuer"},
		{name: "not yet valid", mod: func(c *x509.Certificate) { c.NotBefore = now.Add(time.Minute) }, msg: "not valid now"},
		{name: "expired", mod: func(c *x509.Certificate) { c.NotAfter = now }, msg: "not valid now"},
		{name: "code signing EKU", mod: func(c *x509.Certificate) { c.ExtKeyUsage = append(c.ExtKeyUsage, x509.ExtKeyUsageCodeSigning) }, msg: "unexpected usage"},
		{name: "no EKU", mod: func(c *x509.Certificate) { c.ExtKeyUsage = nil }, msg: "missing extKeyUsage"},
		{name: "no subject key ID", mod: func(c *x509.Certificate) { c.SubjectKeyId = nil }, msg: "missing subjectKeyIdentifier"},
		{name: "unknown extension", mod: func(c *x509.Certificate) {
			c.ExtraExtensions = []pkix.Extension{{Id: asn1.ObjectIdentifier{1, 2, 3, 4}, Value: []byte{5, 0}}}
		}, msg: "unexpected extension"},
		{name: "authority key ID of another issuer", mod: func(*x509.Certificate) {}, signer: otherIssuer, msg: "does not match the issuer's subject key ID"},
		{name: "other public key", mod: func(*x509.Certificate) {}, spki: otherSPKI(t), msg: "not the CSR's"},
		{name: "subject set", mod: func(c *x509.Certificate) { c.Subject = pkix.Name{CommonName: "copied-from-csr"} }, msg: "subject is not empty"},
		{name: "trailing data", mod: func(*x509.Certificate) {}, mangle: func(b []byte) []byte { return append(b, 0) }, msg: "malformed certificate"},
		{name: "truncated", mod: func(*x509.Certificate) {}, mangle: func(b []byte) []byte { return b[:len(b)/2] }, msg: "malformed certificate"},
	}
	leafSPKI, _ := x509.MarshalPKIXPublicKey(leafKey.Public())
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tmpl := base()
			tc.mod(tmpl)
			signer := iss
			if tc.signer != nil {
				signer = tc.signer
			}
			der, err := x509.CreateCertificate(rand.Reader, tmpl, signer, leafKey.Public(), issKey)
			if err != nil {
				t.Fatal(err)
			}
			if tc.mangle != nil {
				der = tc.mangle(der)
			}
			spki := leafSPKI
			if tc.spki != nil {
				spki = tc.spki
			}
			err = ca.ValidateLeaf(der, iss, fooID, spki, now)
			if tc.msg == "" {
				if err != nil {
					t.Fatalf("valid leaf refused: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("ValidateLeaf = %v, want error saying %q", err, tc.msg)
			}
		})
	}
}

func otherSPKI(t *testing.T) []byte {
	b, err := x509.MarshalPKIXPublicKey(p256(t).Public())
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestValidateLeafAcceptsWhatSignIssues checks the validator against the
// CA's own output for every key type a CSR may carry.
func TestValidateLeafAcceptsWhatSignIssues(t *testing.T) {
	clk := clocktest.New(t0)
	a := newAuthority(t, storetest.NewMem(), clk, nil)
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	for name, key := range map[string]crypto.Signer{"P-256": p256(t), "P-384": p384, "RSA-2048": rsaKey} {
		iss, err := a.Sign(context.Background(), ca.SignRequest{CSR: csrPEM(t, key, fooCSR()), Identity: identity(fooID)})
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		spki, _ := x509.MarshalPKIXPublicKey(key.Public())
		if err := ca.ValidateLeaf(iss.DER, a.SigningCertificate(), fooID, spki, clk.Now()); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestCheckRevoked(t *testing.T) {
	ctx := context.Background()
	clk := clocktest.New(t0)
	st := storetest.NewMem()
	a := newAuthority(t, st, clk, nil)
	sign := func() *x509.Certificate {
		iss, err := a.Sign(ctx, ca.SignRequest{CSR: csrPEM(t, p256(t), fooCSR()), Identity: identity(fooID)})
		if err != nil {
			t.Fatal(err)
		}
		return leafOf(t, iss)
	}
	bySerial, byID := sign(), sign()
	if err := a.CheckRevoked(ctx, []*x509.Certificate{bySerial}, fooID); err != nil {
		t.Fatalf("fresh certificate reported revoked: %v", err)
	}
	if _, err := a.Revoke(ctx, store.Revocation{Serial: bySerial.SerialNumber.Text(16), Reason: "key compromise"}); err != nil {
		t.Fatal(err)
	}
	if err := a.CheckRevoked(ctx, []*x509.Certificate{bySerial}, fooID); !errors.Is(err, attestor.ErrRevoked) {
		t.Fatalf("revoked serial: %v", err)
	}
	if err := a.CheckRevoked(ctx, []*x509.Certificate{byID}, fooID); err != nil {
		t.Fatalf("other serial of the same ID reported revoked: %v", err)
	}

	// Revoking the ID revokes every certificate issued until then, but not
	// ones issued after.
	clk.Advance(10 * time.Minute)
	if _, err := a.Revoke(ctx, store.Revocation{SPIFFEID: fooID.String(), Reason: "decommissioned"}); err != nil {
		t.Fatal(err)
	}
	if err := a.CheckRevoked(ctx, []*x509.Certificate{byID}, fooID); !errors.Is(err, attestor.ErrRevoked) {
		t.Fatalf("certificate of revoked ID: %v", err)
	}
	// Issued 30s after the revocation: its NotBefore is backdated to
	// before it, but it was issued after, so it stands.
	clk.Advance(30 * time.Second)
	if err := a.CheckRevoked(ctx, []*x509.Certificate{sign()}, fooID); err != nil {
		t.Fatalf("certificate issued after the ID revocation: %v", err)
	}

	// Serials are matched whatever their spelling.
	other := sign()
	spelled := "0x00" + strings.ToUpper(other.SerialNumber.Text(16))
	if _, err := a.Revoke(ctx, store.Revocation{Serial: spelled}); err != nil {
		t.Fatal(err)
	}
	if err := a.CheckRevoked(ctx, []*x509.Certificate{other}, fooID); !errors.Is(err, attestor.ErrRevoked) {
		t.Fatalf("serial revoked as %q not matched: %v", spelled, err)
	}
	for _, bad := range []store.Revocation{{Serial: "xyz"}, {Serial: "0"}, {SPIFFEID: "not-an-id"}} {
		if _, err := a.Revoke(ctx, bad); err == nil {
			t.Errorf("Revoke(%+v) accepted", bad)
		}
	}
}
