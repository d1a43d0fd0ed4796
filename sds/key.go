package sds

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"fmt"
	"strings"
)

// Key types the Manager can generate for the workload. They are the names
// the CA uses for its own keys (ca.KeyType); the agent keeps its own copy so
// that it depends on the CA only through the CSR API client.
const (
	// KeyECDSAP256 is the default: what Envoy, Istio and SPIRE default to,
	// and an order of magnitude cheaper per handshake than RSA 2048.
	KeyECDSAP256 = "ecdsa-p256"
	KeyECDSAP384 = "ecdsa-p384"
	// RSA keys are for peers that cannot do ECDSA.
	KeyRSA2048 = "rsa-2048"
	KeyRSA3072 = "rsa-3072"
	KeyRSA4096 = "rsa-4096"
)

// KeyTypes lists the key types GenerateKey accepts, default first.
var KeyTypes = []string{KeyECDSAP256, KeyECDSAP384, KeyRSA2048, KeyRSA3072, KeyRSA4096}

// ParseKeyType returns the canonical name of the key type s, matched
// without regard to case; "" means the default, KeyECDSAP256.
func ParseKeyType(s string) (string, error) {
	if s == "" {
		return KeyECDSAP256, nil
	}
	for _, k := range KeyTypes {
		if strings.EqualFold(s, k) {
			return k, nil
		}
	}
	return "", fmt.Errorf("sds: unknown key type %q (want one of %s)", s, strings.Join(KeyTypes, ", "))
}

// GenerateKey makes a new private key of type t (a name ParseKeyType
// accepts).
func GenerateKey(t string) (crypto.Signer, error) {
	t, err := ParseKeyType(t)
	if err != nil {
		return nil, err
	}
	var key crypto.Signer
	switch t {
	case KeyECDSAP256:
		key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case KeyECDSAP384:
		key, err = ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	case KeyRSA2048:
		key, err = rsa.GenerateKey(rand.Reader, 2048)
	case KeyRSA3072:
		key, err = rsa.GenerateKey(rand.Reader, 3072)
	case KeyRSA4096:
		key, err = rsa.GenerateKey(rand.Reader, 4096)
	}
	if err != nil {
		return nil, fmt.Errorf("sds: generate %s key: %w", t, err)
	}
	return key, nil
}

// samePublicKey reports whether a and b are the same public key. Every key
// type in crypto/... has an Equal method; one without it never matches.
func samePublicKey(a, b crypto.PublicKey) bool {
	ea, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && ea.Equal(b)
}
