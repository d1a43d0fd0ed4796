package ca

import (
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"

	"github.com/meshca/meshca/ca/store"
	"github.com/meshca/meshca/internal/pki"
)

// KeyType names an algorithm and size for the CA keys meshca generates;
// the names are shared with the agent (internal/pki).
type KeyType = pki.KeyType

// Key types for Config.KeyType. ECDSA P-256 is the default everywhere: it is
// what Envoy, Istio and SPIRE default to, and signing and verifying with it
// is an order of magnitude cheaper than RSA 2048.
const (
	KeyECDSAP256 = pki.KeyECDSAP256
	KeyECDSAP384 = pki.KeyECDSAP384
	KeyRSA2048   = pki.KeyRSA2048
	KeyRSA3072   = pki.KeyRSA3072
	KeyRSA4096   = pki.KeyRSA4096
)

// ParseKeyType returns the KeyType named s, matched without regard to case
// ("" means the default, KeyECDSAP256).
func ParseKeyType(s string) (KeyType, error) {
	t, err := pki.ParseKeyType(s)
	if err != nil {
		return "", fmt.Errorf("ca: %w", err)
	}
	return t, nil
}

// generateKey makes a new CA private key of type t.
func generateKey(t KeyType) (crypto.Signer, error) {
	key, err := pki.GenerateKey(t)
	if err != nil {
		return nil, fmt.Errorf("ca: %w", err)
	}
	return key, nil
}

// KEKSize is the size of a key-encryption key: AES-256.
const KEKSize = 32

// ParseKEK reads a key-encryption key given as 32 raw bytes, 64 hex digits,
// or base64 (standard or URL alphabet) of 32 bytes. Surrounding white space
// is ignored for the text forms.
func ParseKEK(b []byte) ([]byte, error) {
	if len(b) == KEKSize {
		return append([]byte(nil), b...), nil
	}
	s := strings.TrimSpace(string(b))
	if len(s) == 2*KEKSize {
		if k, err := hex.DecodeString(s); err == nil {
			return k, nil
		}
	}
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.URLEncoding, base64.RawStdEncoding, base64.RawURLEncoding} {
		if k, err := enc.DecodeString(s); err == nil && len(k) == KEKSize {
			return k, nil
		}
	}
	return nil, errors.New("ca: key-encryption key must be 32 bytes: raw, 64 hex digits, or base64")
}

const (
	sealNone   = "none"
	sealAESGCM = "aes-256-gcm"
)

// sealer encrypts CA private keys at rest with the key-encryption key (KEK),
// or stores them in clear when there is none.
type sealer struct {
	aead  cipher.AEAD // nil without a KEK
	keyID string
}

func newSealer(kek []byte) (*sealer, error) {
	if len(kek) == 0 {
		return &sealer{}, nil
	}
	if len(kek) != KEKSize {
		return nil, fmt.Errorf("ca: key-encryption key is %d bytes, want %d", len(kek), KEKSize)
	}
	block, err := aes.NewCipher(kek)
	if err != nil {
		return nil, fmt.Errorf("ca: key-encryption key: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("ca: key-encryption key: %w", err)
	}
	// The key ID lets us tell "wrong KEK" from "corrupt data"; a hash prefix
	// of a random 256-bit key reveals nothing useful about it.
	sum := sha256.Sum256(append([]byte("meshca-kek-id:"), kek...))
	return &sealer{aead: aead, keyID: hex.EncodeToString(sum[:8])}, nil
}

// sealAAD binds a sealed private key to its public key, so sealed blobs
// cannot be swapped between certificates.
func sealAAD(pub crypto.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(der)
	return append([]byte("meshca-ca-key/v1:"), sum[:]...), nil
}

func (s *sealer) seal(key crypto.Signer) (store.SealedKey, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return store.SealedKey{}, fmt.Errorf("ca: marshal private key: %w", err)
	}
	if s.aead == nil {
		return store.SealedKey{Alg: sealNone, Data: der}, nil
	}
	aad, err := sealAAD(key.Public())
	if err != nil {
		return store.SealedKey{}, fmt.Errorf("ca: seal private key: %w", err)
	}
	nonce := make([]byte, s.aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return store.SealedKey{}, err
	}
	return store.SealedKey{Alg: sealAESGCM, KeyID: s.keyID, Nonce: nonce, Data: s.aead.Seal(nil, nonce, der, aad)}, nil
}

// open decrypts a sealed key and checks that it belongs to pub.
func (s *sealer) open(sk store.SealedKey, pub crypto.PublicKey) (crypto.Signer, error) {
	var der []byte
	switch sk.Alg {
	case sealNone:
		if s.aead != nil {
			// With a KEK every key meshca stored is sealed: a clear one
			// was put there by someone else, who knows it.
			return nil, ErrClearKey
		}
		der = sk.Data
	case sealAESGCM:
		if s.aead == nil {
			return nil, errors.New("ca: the data file holds encrypted CA keys: configure the key-encryption key (--kek-file or MESHCA_KEK)")
		}
		if sk.KeyID != s.keyID {
			return nil, errors.New("ca: CA keys were encrypted with a different key-encryption key")
		}
		aad, err := sealAAD(pub)
		if err != nil {
			return nil, fmt.Errorf("ca: open private key: %w", err)
		}
		pt, err := s.aead.Open(nil, sk.Nonce, sk.Data, aad)
		if err != nil {
			return nil, errors.New("ca: CA key does not decrypt: wrong key-encryption key or corrupt data file")
		}
		der = pt
	default:
		return nil, fmt.Errorf("ca: unknown key sealing %q", sk.Alg)
	}
	k, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		return nil, fmt.Errorf("ca: parse CA private key: %w", err)
	}
	signer, ok := k.(crypto.Signer)
	if !ok {
		return nil, errors.New("ca: CA private key is not a signer")
	}
	if !pki.SamePublicKey(signer.Public(), pub) {
		return nil, errors.New("ca: CA private key does not match its certificate")
	}
	return signer, nil
}
