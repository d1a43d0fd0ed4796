package ca_test

import (
	"crypto/x509"
	"errors"
	"testing"

	"github.com/meshca/meshca/ca"
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
