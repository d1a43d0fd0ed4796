package podcert_test

import (
	"bytes"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"testing"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/ca/podcert"
)

func stubCSR(t testing.TB, typ string) []byte {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key(t, typ, false))
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// TestPublicKey: the key of pkixPublicKey or of stubPKCS10Request, what
// the CA certifies, in canonical DER; the rest refused by kind.
func TestPublicKey(t *testing.T) {
	p256 := pkix(t, key(t, keyP256, false))
	// An X25519 key: an algorithm crypto/x509 knows, the CA does not certify.
	x25519 := []byte{0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x6e, 0x03, 0x21, 0x00}
	x25519 = append(x25519, bytes.Repeat([]byte{9}, 32)...)
	// An algorithm crypto/x509 does not know (1.2.3.4).
	unknown := []byte{0x30, 0x0e, 0x30, 0x05, 0x06, 0x03, 0x2a, 0x03, 0x04, 0x03, 0x05, 0x00, 1, 2, 3, 4}
	for _, tc := range []struct {
		name        string
		pkix, stub  []byte
		want        []byte // the DER, or nil for an error
		wantErrKind error
	}{
		{name: "pkix P-256", pkix: p256, want: p256},
		{name: "pkix P-384", pkix: pkix(t, key(t, keyP384, false)), want: pkix(t, key(t, keyP384, false))},
		{name: "pkix RSA 3072", pkix: pkix(t, key(t, keyRSA3072, false)), want: pkix(t, key(t, keyRSA3072, false))},
		{name: "stub CSR P-256", stub: stubCSR(t, keyP256), want: p256},
		{name: "pkix Ed25519", pkix: pkix(t, key(t, keyEd25519, false)), wantErrKind: podcert.ErrUnsupportedKey},
		{name: "pkix P-521", pkix: pkix(t, key(t, keyP521, false)), wantErrKind: podcert.ErrUnsupportedKey},
		{name: "stub CSR Ed25519", stub: stubCSR(t, keyEd25519), wantErrKind: podcert.ErrUnsupportedKey},
		{name: "pkix X25519", pkix: x25519, wantErrKind: podcert.ErrUnsupportedKey},
		{name: "pkix unknown algorithm", pkix: unknown, wantErrKind: podcert.ErrUnsupportedKey},
		{name: "pkix garbage", pkix: []byte("not a key"), wantErrKind: podcert.ErrMalformedKey},
		{name: "pkix trailing data", pkix: append(bytes.Clone(p256), 0), wantErrKind: podcert.ErrMalformedKey},
		{name: "stub CSR garbage", stub: []byte{0x30, 0x00}, wantErrKind: podcert.ErrMalformedKey},
		{name: "both", pkix: p256, stub: stubCSR(t, keyP256), wantErrKind: podcert.ErrMalformedKey},
		{name: "too large", pkix: make([]byte, 20<<10), wantErrKind: podcert.ErrMalformedKey},
		{name: "neither", wantErrKind: podcert.ErrNoPublicKey},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := podcert.PublicKey(tc.pkix, tc.stub)
			if tc.want != nil {
				if err != nil || !bytes.Equal(got, tc.want) {
					t.Fatalf("PublicKey = %x, %v; want %x", got, err, tc.want)
				}
				return
			}
			if !errors.Is(err, tc.wantErrKind) {
				t.Fatalf("PublicKey error %v, want %v", err, tc.wantErrKind)
			}
		})
	}
}

// FuzzPublicKey feeds PublicKey arbitrary pkixPublicKey and
// stubPKCS10Request bytes: it never panics; whatever it accepts is a key
// the CA certifies, in the DER crypto/x509 writes for it, and accepted
// again unchanged; whatever it refuses is refused by one of its kinds.
func FuzzPublicKey(f *testing.F) {
	f.Add(pkix(f, key(f, keyP256, false)), []byte(nil))
	f.Add(pkix(f, key(f, keyEd25519, false)), []byte(nil))
	f.Add([]byte(nil), stubCSR(f, keyP384))
	f.Add([]byte{0x30, 0x00}, []byte{0x30, 0x00})
	f.Fuzz(func(t *testing.T, pkixDER, stub []byte) {
		der, err := podcert.PublicKey(pkixDER, stub)
		if err != nil {
			if !errors.Is(err, podcert.ErrMalformedKey) && !errors.Is(err, podcert.ErrUnsupportedKey) && !errors.Is(err, podcert.ErrNoPublicKey) {
				t.Fatalf("error of no kind: %v", err)
			}
			return
		}
		pub, err := x509.ParsePKIXPublicKey(der)
		if err != nil {
			t.Fatalf("accepted key does not parse: %v", err)
		}
		if err := ca.CheckPublicKey(pub); err != nil {
			t.Fatalf("accepted a key the CA refuses: %v", err)
		}
		again, err := podcert.PublicKey(der, nil)
		if err != nil || !bytes.Equal(again, der) {
			t.Fatalf("the canonical DER is not accepted unchanged: %v", err)
		}
	})
}
