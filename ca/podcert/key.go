package podcert

import (
	"crypto/x509"
	"errors"
	"fmt"
	"strings"

	"github.com/meshca/meshca/ca"
)

// Errors of PublicKey.
var (
	// ErrNoPublicKey: the request carries neither a pkixPublicKey nor a
	// stubPKCS10Request this build can read.
	ErrNoPublicKey = errors.New("podcert: no public key in the request")
	// ErrMalformedKey: the key material does not parse.
	ErrMalformedKey = errors.New("podcert: malformed public key")
	// ErrUnsupportedKey: a key type the CA does not certify.
	ErrUnsupportedKey = errors.New("podcert: unsupported key type")
)

// maxKeyMaterial bounds what PublicKey parses: an RSA 8192 key in a CSR is
// about 1.1 KiB.
const maxKeyMaterial = 16 << 10

// PublicKey returns the DER SubjectPublicKeyInfo of the key a request is
// for, from pkix (spec.pkixPublicKey, Kubernetes 1.35) or stubCSR
// (spec.stubPKCS10Request, 1.36 and later: a DER PKCS#10 request whose
// signature the API server checked, of which only the key is read); a
// request carries one of them. Errors wrap ErrNoPublicKey, ErrMalformedKey,
// or ErrUnsupportedKey for a key the CA does not certify
// (ca.CheckPublicKey).
func PublicKey(pkix, stubCSR []byte) ([]byte, error) {
	var pub any
	switch {
	case len(pkix) > 0 && len(stubCSR) > 0:
		return nil, fmt.Errorf("%w: both pkixPublicKey and stubPKCS10Request are set", ErrMalformedKey)
	case len(pkix)+len(stubCSR) > maxKeyMaterial:
		return nil, fmt.Errorf("%w: %d bytes of key material", ErrMalformedKey, len(pkix)+len(stubCSR))
	case len(pkix) > 0:
		var err error
		if pub, err = x509.ParsePKIXPublicKey(pkix); err != nil {
			return nil, fmt.Errorf("%w: pkixPublicKey: %v", classify(err), err)
		}
	case len(stubCSR) > 0:
		csr, err := x509.ParseCertificateRequest(stubCSR)
		if err != nil {
			return nil, fmt.Errorf("%w: stubPKCS10Request: %v", classify(err), err)
		}
		pub = csr.PublicKey
		if pub == nil { // an algorithm x509 does not know
			return nil, fmt.Errorf("%w: stubPKCS10Request: public key algorithm %s", ErrUnsupportedKey, csr.PublicKeyAlgorithm)
		}
	default:
		return nil, ErrNoPublicKey
	}
	if err := ca.CheckPublicKey(pub); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUnsupportedKey, err)
	}
	return x509.MarshalPKIXPublicKey(pub)
}

// classify tells a key crypto/x509 does not know (an algorithm or a curve
// it has no implementation of: it says so only in its message) from bytes
// that are not a key.
func classify(err error) error {
	if msg := err.Error(); strings.Contains(msg, "unknown public key algorithm") || strings.Contains(msg, "unsupported elliptic curve") {
		return ErrUnsupportedKey
	}
	return ErrMalformedKey
}
