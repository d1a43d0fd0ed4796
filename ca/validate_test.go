package ca_test

import (
	"context"
	"crypto/rand"
	"crypto/x509"
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
	tests := []struct {
		name   string
		mod    func(c *x509.Certificate)
		pubKey any
		msg    string
	}{
		{"valid", func(*x509.Certificate) {}, nil, ""},
		{"CA bit", func(c *x509.Certificate) { c.IsCA = true }, nil, "CA false"},
		{"no basic constraints", func(c *x509.Certificate) { c.BasicConstraintsValid = false }, nil, "CA false"},
		{"cert sign usage", func(c *x509.Certificate) { c.KeyUsage |= x509.KeyUsageCertSign }, nil, "certificate or CRL signing"},
		{"no digital signature", func(c *x509.Certificate) { c.KeyUsage = x509.KeyUsageKeyEncipherment }, nil, "lacks digitalSignature"},
		{"two URIs", func(c *x509.Certificate) { c.URIs = uris(fooID, otherID) }, nil, "2 URI SANs"},
		{"no URI", func(c *x509.Certificate) { c.URIs = nil }, nil, "0 URI SANs"},
		{"DNS SAN", func(c *x509.Certificate) { c.DNSNames = []string{"x.example"} }, nil, "SANs other than"},
		{"IP SAN", func(c *x509.Certificate) { c.IPAddresses = []net.IP{net.IPv4(1, 2, 3, 4)} }, nil, "SANs other than"},
		{"wrong ID", func(c *x509.Certificate) { c.URIs = uris(otherID) }, nil, "want spiffe://example.org/ns/foo/sa/bar"},
		{"not a SPIFFE ID", func(c *x509.Certificate) { c.URIs = []*url.URL{{Scheme: "https", Host: "x"}} }, nil, "not a SPIFFE ID"},
		{"outlives issuer", func(c *x509.Certificate) { c.NotAfter = iss.NotAfter.Add(time.Second) }, nil, "outlives its issuer"},
		{"starts before issuer", func(c *x509.Certificate) { c.NotBefore = iss.NotBefore.Add(-time.Second) }, nil, "starts before its issuer"},
		{"not yet valid", func(c *x509.Certificate) { c.NotBefore = now.Add(time.Minute) }, nil, "not valid now"},
		{"code signing EKU", func(c *x509.Certificate) { c.ExtKeyUsage = append(c.ExtKeyUsage, x509.ExtKeyUsageCodeSigning) }, nil, "extended key usage"},
		{"other public key", func(*x509.Certificate) {}, p256(t).Public(), "not the CSR's"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tmpl := base()
			tc.mod(tmpl)
			der, err := x509.CreateCertificate(rand.Reader, tmpl, iss, leafKey.Public(), issKey)
			if err != nil {
				t.Fatal(err)
			}
			leaf, _ := x509.ParseCertificate(der)
			pub := tc.pubKey
			if pub == nil {
				pub = leafKey.Public()
			}
			err = ca.ValidateLeaf(leaf, iss, fooID, pub, now)
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

func TestCheckRevoked(t *testing.T) {
	ctx := context.Background()
	clk := clocktest.New(t0)
	st := newMemStore()
	a := newAuthority(t, st, clk, nil)
	sign := func() *x509.Certificate {
		iss, err := a.Sign(ctx, ca.SignRequest{CSR: csrPEM(t, p256(t), fooCSR()), Identity: identity(fooID)})
		if err != nil {
			t.Fatal(err)
		}
		return iss.Certificate
	}
	bySerial, byID := sign(), sign()
	if err := a.CheckRevoked(ctx, bySerial, fooID); err != nil {
		t.Fatalf("fresh certificate reported revoked: %v", err)
	}
	if err := a.Revoke(ctx, store.Revocation{Serial: bySerial.SerialNumber.Text(16), Reason: "key compromise"}); err != nil {
		t.Fatal(err)
	}
	if err := a.CheckRevoked(ctx, bySerial, fooID); !errors.Is(err, attestor.ErrRevoked) {
		t.Fatalf("revoked serial: %v", err)
	}
	if err := a.CheckRevoked(ctx, byID, fooID); err != nil {
		t.Fatalf("other serial of the same ID reported revoked: %v", err)
	}

	// Revoking the ID revokes every certificate issued until then, but not
	// ones issued after.
	clk.Advance(10 * time.Minute)
	if err := a.Revoke(ctx, store.Revocation{SPIFFEID: fooID.String(), Reason: "decommissioned"}); err != nil {
		t.Fatal(err)
	}
	if err := a.CheckRevoked(ctx, byID, fooID); !errors.Is(err, attestor.ErrRevoked) {
		t.Fatalf("certificate of revoked ID: %v", err)
	}
	clk.Advance(10 * time.Minute)
	if err := a.CheckRevoked(ctx, sign(), fooID); err != nil {
		t.Fatalf("certificate issued after the ID revocation: %v", err)
	}
}
