package ca

import (
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/meshca/meshca/internal/pki"
)

// Istio's plug-in CA certificate file names ("cacerts" Secret layout).
const (
	CACertFile    = "ca-cert.pem"
	CAKeyFile     = "ca-key.pem"
	RootCertFile  = "root-cert.pem"
	CertChainFile = "cert-chain.pem"
)

// CACertsOptions says how LoadCACerts uses a cacerts directory. The zero
// value is the default.
type CACertsOptions struct {
	// SignDirectly signs workload leaves with ca-cert.pem's key, as istiod
	// does, even when its path length leaves room for meshca's own
	// rotating intermediate (which is otherwise used). A ca-cert.pem with
	// pathlen 0, as Istio's tools/certs makes it, always signs directly.
	SignDirectly bool
}

// LoadCACerts reads Istio's cacerts layout from dir: ca-cert.pem and
// ca-key.pem (the CA certificate and its key), root-cert.pem (the trust
// anchors) and, optionally, cert-chain.pem (ca-cert.pem's chain; the root,
// if present in it, is dropped). ca-key.pem must not be readable by others.
//
// When ca-cert.pem's path length leaves room for one (no pathlen, or 1 or
// more), it signs meshca's short-lived intermediates, which sign the leaves.
// When it does not (pathlen 0, as Istio's own tools/certs makes it), or when
// o.SignDirectly, ca-cert.pem's key signs the leaves itself, as istiod does,
// and their chain is leaf, ca-cert.pem, its chain, root (see SignsLeaves).
func LoadCACerts(dir string, now time.Time, o CACertsOptions) (*LocalParent, error) {
	p, err := loadCACerts(dir, now)
	if err != nil {
		return nil, fmt.Errorf("ca: cacerts %s: %w", dir, err)
	}
	if o.SignDirectly && !p.direct {
		p.direct = true
		if err := p.checkDirect(); err != nil {
			return nil, fmt.Errorf("ca: cacerts %s: %s: %w", dir, CACertFile, err)
		}
	}
	return p, nil
}

func loadCACerts(dir string, now time.Time) (*LocalParent, error) {
	certs, err := pki.ReadCertificates(filepath.Join(dir, CACertFile))
	if err != nil {
		return nil, fmt.Errorf("read certificates: %w", err)
	}
	roots, err := pki.ReadCertificates(filepath.Join(dir, RootCertFile))
	if err != nil {
		return nil, fmt.Errorf("read certificates: %w", err)
	}
	var chain []*x509.Certificate
	if cc, err := pki.ReadCertificates(filepath.Join(dir, CertChainFile)); err == nil {
		chain = cc
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("read certificates: %w", err)
	}
	keyPath := filepath.Join(dir, CAKeyFile)
	// Group-readable is allowed: a Kubernetes Secret volume with an fsGroup
	// is 0440 at best. World-readable is not.
	if fi, err := os.Stat(keyPath); err == nil && fi.Mode().Perm()&0o007 != 0 {
		return nil, fmt.Errorf("%s is readable by others (mode %v): chmod 600 it", CAKeyFile, fi.Mode().Perm())
	}
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, fmt.Errorf("read CA key: %w", err)
	}
	signer, err := parsePrivateKeyPEM(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", CAKeyFile, err)
	}
	if !pki.SamePublicKey(signer.Public(), certs[0].PublicKey) {
		return nil, fmt.Errorf("%s does not match %s: it is the key of another certificate", CAKeyFile, CACertFile)
	}
	p, err := newLocalParent(certs[0], signer, append(certs[1:], chain...), roots, now)
	if err != nil {
		// The key is ca-key.pem, the chain cert-chain.pem, the roots
		// root-cert.pem: the message names the certificate they belong to.
		return nil, fmt.Errorf("%s: %w", CACertFile, err)
	}
	return p, nil
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
