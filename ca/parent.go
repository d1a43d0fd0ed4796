package ca

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/meshca/meshca/internal/pki"
)

// Parent signs meshca's short-lived intermediates. The parent's key is touched
// only at rotation. LocalParent holds the key in memory (a self-signed root
// from the store, or Istio cacerts files); a Vault-backed parent implements
// the same interface.
type Parent interface {
	// SignIntermediate signs tmpl for pub and returns the certificate.
	SignIntermediate(ctx context.Context, tmpl *x509.Certificate, pub crypto.PublicKey) (*x509.Certificate, error)
	// Certificate is the certificate whose key signs intermediates.
	Certificate() *x509.Certificate
	// Chain is the certificates from Certificate up to, not including, the
	// trust anchor; empty when Certificate is itself the root.
	Chain() []*x509.Certificate
	// Anchor is the trust anchor (root) the chain ends at.
	Anchor() *x509.Certificate
	// Roots are all trust anchors to publish in the bundle.
	Roots() []*x509.Certificate
}

// LocalParent is a Parent whose key is a crypto.Signer in this process.
type LocalParent struct {
	cert   *x509.Certificate
	signer crypto.Signer
	chain  []*x509.Certificate
	anchor *x509.Certificate
	roots  []*x509.Certificate
}

// NewLocalParent checks that signer belongs to cert, that cert is a CA, and
// that cert chains through chain to one of roots at time now.
func NewLocalParent(cert *x509.Certificate, signer crypto.Signer, chain, roots []*x509.Certificate, now time.Time) (*LocalParent, error) {
	if !cert.IsCA || !cert.BasicConstraintsValid {
		return nil, errors.New("ca: signing certificate is not a CA")
	}
	if cert.KeyUsage != 0 && cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, errors.New("ca: signing certificate may not sign certificates (key usage lacks certSign)")
	}
	if cert.MaxPathLen == 0 && cert.MaxPathLenZero {
		return nil, errors.New("ca: signing certificate has pathlen 0: it cannot sign meshca's intermediates; issue it with pathlen 1 or more (or none)")
	}
	if !pki.SamePublicKey(signer.Public(), cert.PublicKey) {
		return nil, errors.New("ca: signing key does not match the signing certificate")
	}
	if len(roots) == 0 {
		return nil, errors.New("ca: no root certificate")
	}
	rootPool, interPool := x509.NewCertPool(), x509.NewCertPool()
	for _, r := range roots {
		rootPool.AddCert(r)
	}
	for _, c := range chain {
		interPool.AddCert(c)
	}
	chains, err := cert.Verify(x509.VerifyOptions{
		Roots: rootPool, Intermediates: interPool, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	})
	if err != nil {
		return nil, fmt.Errorf("ca: signing certificate does not chain to the root: %w", err)
	}
	verified := chains[0] // cert, intermediates..., anchor
	return &LocalParent{
		cert:   cert,
		signer: signer,
		chain:  verified[:len(verified)-1],
		anchor: verified[len(verified)-1],
		roots:  roots,
	}, nil
}

// SignIntermediate implements Parent.
func (p *LocalParent) SignIntermediate(_ context.Context, tmpl *x509.Certificate, pub crypto.PublicKey) (*x509.Certificate, error) {
	if tmpl.NotAfter.After(p.cert.NotAfter) {
		tmpl.NotAfter = p.cert.NotAfter // never outlive the parent
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.cert, pub, p.signer)
	if err != nil {
		return nil, fmt.Errorf("ca: sign intermediate: %w", err)
	}
	return x509.ParseCertificate(der)
}

// Certificate implements Parent.
func (p *LocalParent) Certificate() *x509.Certificate { return p.cert }

// Chain implements Parent. The parent itself is part of the chain unless it
// is the anchor.
func (p *LocalParent) Chain() []*x509.Certificate {
	if p.cert.Equal(p.anchor) {
		return nil
	}
	return p.chain
}

// Anchor implements Parent.
func (p *LocalParent) Anchor() *x509.Certificate { return p.anchor }

// Roots implements Parent.
func (p *LocalParent) Roots() []*x509.Certificate { return p.roots }

// Istio's plug-in CA certificate file names ("cacerts" Secret layout).
const (
	CACertFile    = "ca-cert.pem"
	CAKeyFile     = "ca-key.pem"
	RootCertFile  = "root-cert.pem"
	CertChainFile = "cert-chain.pem"
)

// LoadCACerts reads Istio's cacerts layout from dir: ca-cert.pem and
// ca-key.pem (the CA meshca signs its intermediates with), root-cert.pem (the
// trust anchors) and, optionally, cert-chain.pem (ca-cert.pem's chain; the
// root, if present in it, is dropped). ca-key.pem must not be readable by
// others. ca-cert.pem must leave room in its path length for meshca's own
// intermediate.
func LoadCACerts(dir string, now time.Time) (*LocalParent, error) {
	certs, err := readCerts(filepath.Join(dir, CACertFile))
	if err != nil {
		return nil, err
	}
	roots, err := readCerts(filepath.Join(dir, RootCertFile))
	if err != nil {
		return nil, err
	}
	var chain []*x509.Certificate
	if cc, err := readCerts(filepath.Join(dir, CertChainFile)); err == nil {
		chain = cc
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	keyPath := filepath.Join(dir, CAKeyFile)
	// Group-readable is allowed: a Kubernetes Secret volume with an fsGroup
	// is 0440 at best. World-readable is not.
	if fi, err := os.Stat(keyPath); err == nil && fi.Mode().Perm()&0o007 != 0 {
		return nil, fmt.Errorf("ca: %s is readable by others (mode %v): chmod 600 it", keyPath, fi.Mode().Perm())
	}
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, fmt.Errorf("ca: read CA key: %w", err)
	}
	signer, err := parsePrivateKeyPEM(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("ca: %s: %w", keyPath, err)
	}
	return NewLocalParent(certs[0], signer, append(certs[1:], chain...), roots, now)
}

func readCerts(path string) ([]*x509.Certificate, error) {
	certs, err := pki.ReadCertificates(path)
	if err != nil {
		return nil, fmt.Errorf("ca: read certificates: %w", err)
	}
	return certs, nil
}

func parsePrivateKeyPEM(b []byte) (crypto.Signer, error) {
	block, _ := pem.Decode(b)
	if block == nil {
		return nil, errors.New("not a PEM private key")
	}
	var (
		k   any
		err error
	)
	switch block.Type {
	case "PRIVATE KEY":
		k, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		k, err = x509.ParseECPrivateKey(block.Bytes)
	case "RSA PRIVATE KEY":
		k, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	default:
		return nil, fmt.Errorf("unsupported PEM key type %q", block.Type)
	}
	if err != nil {
		return nil, err
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, errors.New("private key cannot sign")
	}
	return s, nil
}

// certPEM encodes one certificate.
func certPEM(c *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
}
