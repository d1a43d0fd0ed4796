// Supplied by meshca's tools/vault: Vault v1.14.0's transit BYOK export
// calls this method, but the SDK version it pins does not have it. Written
// for meshca (see tools/vault/README.md); added to the SDK package with
// go build -overlay.

package keysutil

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"hash"
	"strconv"

	"github.com/google/tink/go/kwp/subtle"
)

// WrapKey wraps targetKey for import into another Vault's transit engine
// under this policy's RSA key (version ver, 0 for the latest): a fresh
// AES-256 key encrypted with RSA-OAEP, followed by the PKCS#8 key wrapped
// with that AES key by KWP (RFC 5649), base64 encoded. This is the format
// transit's import path reads.
func (p *Policy) WrapKey(ver int, targetKey interface{}, targetKeyType KeyType, hasher hash.Hash) (string, error) {
	if p.Type != KeyType_RSA2048 && p.Type != KeyType_RSA3072 && p.Type != KeyType_RSA4096 {
		return "", fmt.Errorf("wrapping key must be an RSA key, not %v", p.Type)
	}
	if ver == 0 {
		ver = p.LatestVersion
	}
	entry, ok := p.Keys[strconv.Itoa(ver)]
	if !ok {
		return "", errors.New("no such key version")
	}
	pub := entry.RSAPublicKey
	if pub == nil && entry.RSAKey != nil {
		pub = &entry.RSAKey.PublicKey
	}
	if pub == nil {
		return "", errors.New("wrapping key has no public key")
	}
	der, err := x509.MarshalPKCS8PrivateKey(targetKey)
	if err != nil {
		return "", fmt.Errorf("marshalling %v key: %w", targetKeyType, err)
	}
	ephemeral := make([]byte, 32)
	if _, err := rand.Read(ephemeral); err != nil {
		return "", err
	}
	defer func() {
		for i := range ephemeral {
			ephemeral[i] = 0
		}
	}()
	wrappedEphemeral, err := rsa.EncryptOAEP(hasher, rand.Reader, pub, ephemeral, []byte{})
	if err != nil {
		return "", fmt.Errorf("wrapping the ephemeral key: %w", err)
	}
	kwp, err := subtle.NewKWP(ephemeral)
	if err != nil {
		return "", err
	}
	wrappedKey, err := kwp.Wrap(der)
	if err != nil {
		return "", fmt.Errorf("wrapping the key: %w", err)
	}
	return base64.StdEncoding.EncodeToString(append(wrappedEphemeral, wrappedKey...)), nil
}
