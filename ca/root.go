package ca

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"time"

	"github.com/meshca/meshca/ca/store"
)

// newRoot makes a self-signed root valid from now (backdated) for RootTTL,
// with its sealed key or, with RootKeys, its key's reference; rotation
// says it is for a root rotation (RootKeys makes a new key).
func (a *Authority) newRoot(ctx context.Context, now time.Time, rotation bool) (*store.CAKey, error) {
	key, sealed, err := a.rootKey(ctx, rotation)
	if err != nil {
		return nil, err
	}
	tmpl, err := caTemplate(a.cfg.TrustDomain, "meshca root "+a.cfg.TrustDomain.Name(), key.Public(), now.Add(-a.cfg.Backdate), now.Add(a.cfg.RootTTL), 1)
	if err != nil {
		return nil, err
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), withContext(ctx, key))
	if err != nil {
		return nil, fmt.Errorf("ca: create root: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	a.cfg.Logger.Info("created self-signed root", "trust_domain", a.cfg.TrustDomain.Name(), "key", keyPlace(sealed),
		"serial", cert.SerialNumber.Text(16), "sha256", Fingerprint(cert), "not_after", cert.NotAfter)
	return &store.CAKey{CertDER: der, Key: sealed}, nil
}

// selfSignedParent opens the self-signed root k as the parent.
func (a *Authority) selfSignedParent(k *store.CAKey, now time.Time) (Parent, error) {
	cert, key, err := a.openRoot(k)
	if err != nil {
		return nil, fmt.Errorf("ca: root: %w", err)
	}
	return NewLocalParent(cert, key, nil, []*x509.Certificate{cert}, now)
}

func (a *Authority) openCAKey(k *store.CAKey) (*x509.Certificate, crypto.Signer, error) {
	cert, err := x509.ParseCertificate(k.CertDER)
	if err != nil {
		return nil, nil, fmt.Errorf("ca: parse stored certificate: %w", err)
	}
	key, err := a.sealer.open(k.Key, cert.PublicKey)
	if err != nil {
		return nil, nil, err
	}
	return cert, key, nil
}

// keyPlace says where a CA key is kept, for logs and status: "store", or
// the key manager and the key's reference.
func keyPlace(k store.SealedKey) string {
	if k.Alg == sealNone || k.Alg == sealAESGCM {
		return "store"
	}
	return k.Alg + ":" + k.KeyID
}

// Fingerprint is the SHA-256 of a certificate's DER in lowercase hex, as
// `meshca ca status` and the logs name CA certificates.
func Fingerprint(c *x509.Certificate) string { return derFingerprint(c.Raw) }

func derFingerprint(der []byte) string {
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:])
}
