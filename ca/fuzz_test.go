package ca_test

import (
	"context"
	"crypto/x509"
	"errors"
	"testing"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/clock/clocktest"
	"github.com/meshca/meshca/internal/storetest"
)

// FuzzParseCSR checks that any input either parses to a CSR whose
// signature verified, or fails with ErrInvalidCSR, and that CheckCSR never
// panics on what parses.
func FuzzParseCSR(f *testing.F) {
	key := p256(f)
	f.Add(csrPEM(f, key, fooCSR()))
	f.Add(csrPEM(f, key, &x509.CertificateRequest{URIs: uris(fooID, otherID), DNSNames: []string{"a"}}))
	f.Add([]byte("-----BEGIN CERTIFICATE REQUEST-----\nMAA=\n-----END CERTIFICATE REQUEST-----\n"))
	f.Add([]byte("not pem"))
	f.Fuzz(func(t *testing.T, in []byte) {
		csr, err := ca.ParseCSR(in)
		if err != nil {
			if !errors.Is(err, ca.ErrInvalidCSR) {
				t.Fatalf("error %v does not wrap ErrInvalidCSR", err)
			}
			return
		}
		if err := csr.CheckSignature(); err != nil {
			t.Fatalf("ParseCSR accepted a CSR with a bad signature: %v", err)
		}
		if err := ca.CheckCSR(csr, fooID); err != nil && !errors.Is(err, ca.ErrInvalidCSR) && !errors.Is(err, ca.ErrIdentityMismatch) {
			t.Fatalf("CheckCSR error %v of unknown kind", err)
		}
	})
}

// FuzzValidateLeaf checks that the DER reader of the validator never
// panics and never accepts what crypto/x509 cannot parse.
func FuzzValidateLeaf(f *testing.F) {
	clk := clocktest.New(t0)
	a := newAuthority(f, storetest.NewMem(), clk, nil)
	key := p256(f)
	iss, err := a.Sign(context.Background(), ca.SignRequest{CSR: csrPEM(f, key, fooCSR()), Identity: identity(fooID)})
	if err != nil {
		f.Fatal(err)
	}
	spki, _ := x509.MarshalPKIXPublicKey(key.Public())
	f.Add(iss.DER)
	f.Fuzz(func(t *testing.T, der []byte) {
		if ca.ValidateLeaf(der, a.SigningCertificate(), fooID, spki, clk.Now()) == nil {
			if _, err := x509.ParseCertificate(der); err != nil {
				t.Fatalf("validator accepted DER that crypto/x509 refuses: %v", err)
			}
		}
	})
}
