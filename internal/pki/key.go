package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"fmt"
	"strings"
)

// KeyType names an algorithm and size for keys meshca generates.
type KeyType string

// Key types meshca can generate.
const (
	// KeyECDSAP256 is the default everywhere: it is what Envoy, Istio and
	// SPIRE default to, and signing and verifying with it is an order of
	// magnitude cheaper than RSA 2048.
	KeyECDSAP256 KeyType = "ecdsa-p256"
	KeyECDSAP384 KeyType = "ecdsa-p384"
	// RSA keys are for peers that cannot do ECDSA.
	KeyRSA2048 KeyType = "rsa-2048"
	KeyRSA3072 KeyType = "rsa-3072"
	KeyRSA4096 KeyType = "rsa-4096"
)

// keyTypes lists the supported key types, default first.
var keyTypes = []KeyType{KeyECDSAP256, KeyECDSAP384, KeyRSA2048, KeyRSA3072, KeyRSA4096}

// ParseKeyType returns the key type named s, matched without regard to
// case; "" means the default, KeyECDSAP256.
func ParseKeyType(s string) (KeyType, error) {
	if s == "" {
		return KeyECDSAP256, nil
	}
	for _, k := range keyTypes {
		if strings.EqualFold(s, string(k)) {
			return k, nil
		}
	}
	return "", unknownKeyType(s)
}

// GenerateKey makes a new private key of type t, which must be one of the
// constants ("" means the default); it does not fold case, see ParseKeyType.
func GenerateKey(t KeyType) (crypto.Signer, error) {
	var (
		key crypto.Signer
		err error
	)
	switch t {
	case KeyECDSAP256, "":
		key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case KeyECDSAP384:
		key, err = ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	case KeyRSA2048:
		key, err = rsa.GenerateKey(rand.Reader, 2048)
	case KeyRSA3072:
		key, err = rsa.GenerateKey(rand.Reader, 3072)
	case KeyRSA4096:
		key, err = rsa.GenerateKey(rand.Reader, 4096)
	default:
		return nil, unknownKeyType(string(t))
	}
	if err != nil {
		return nil, fmt.Errorf("generate %s key: %w", t, err)
	}
	return key, nil
}

func unknownKeyType(s string) error {
	names := make([]string, len(keyTypes))
	for i, k := range keyTypes {
		names[i] = string(k)
	}
	return fmt.Errorf("unknown key type %q (want one of %s)", s, strings.Join(names, ", "))
}

// SamePublicKey reports whether a and b are the same public key. Every key
// type in crypto/... has an Equal method; one without it never matches.
func SamePublicKey(a, b crypto.PublicKey) bool {
	ea, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && ea.Equal(b)
}
