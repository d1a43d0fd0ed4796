package ca

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"time"

	"github.com/meshca/meshca/internal/pki"
)

// Parent signs meshca's short-lived intermediates. The parent's key is touched
// only at rotation. LocalParent holds the key in memory (a self-signed root
// from the store, or Istio cacerts files); a Vault-backed parent implements
// the same interface.
type Parent interface {
	// SignIntermediate signs tmpl for key's public key and returns the
	// certificate. key is the new intermediate's own key: a parent that
	// needs proof of possession (a CSR, for Vault's PKI engine) signs one
	// with it; nothing else may use it.
	SignIntermediate(ctx context.Context, tmpl *x509.Certificate, key crypto.Signer) (*x509.Certificate, error)
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

// directParent is a parent whose own key signs workload leaves, with no
// meshca intermediate under it (direct mode). Only LocalParent can be one:
// a remote parent (Vault) must never be called once per workload.
type directParent interface {
	Parent
	// leafKey is the key that signs leaves, or nil when the parent signs
	// intermediates.
	leafKey() crypto.Signer
}

// LocalParent is a Parent whose key is a crypto.Signer in this process.
type LocalParent struct {
	cert   *x509.Certificate
	signer crypto.Signer
	chain  []*x509.Certificate
	anchor *x509.Certificate
	roots  []*x509.Certificate
	// notAfter is the earliest NotAfter of cert, its chain and the anchor:
	// nothing signed under cert can verify past it.
	notAfter time.Time
	// direct says that cert's key signs leaves itself (see SignsLeaves).
	direct bool
}

// NewLocalParent checks that signer belongs to cert, that cert is a CA that
// may sign certificates, and that cert chains through chain to one of roots
// at time now. When no CA certificate under cert could satisfy the path
// length constraints of the chain (cert has pathlen 0, as Istio's tooling
// makes ca-cert.pem, or a certificate above it is as tight), the parent
// signs leaves directly (see SignsLeaves).
func NewLocalParent(cert *x509.Certificate, signer crypto.Signer, chain, roots []*x509.Certificate, now time.Time) (*LocalParent, error) {
	p, err := newLocalParent(cert, signer, chain, roots, now)
	if err != nil {
		return nil, fmt.Errorf("ca: signing CA certificate %q: %w", cert.Subject.CommonName, err)
	}
	return p, nil
}

func newLocalParent(cert *x509.Certificate, signer crypto.Signer, chain, roots []*x509.Certificate, now time.Time) (*LocalParent, error) {
	switch {
	case !cert.IsCA || !cert.BasicConstraintsValid:
		return nil, errors.New("not a CA certificate (basicConstraints lacks CA:TRUE)")
	case cert.KeyUsage != 0 && cert.KeyUsage&x509.KeyUsageCertSign == 0:
		return nil, errors.New("may not sign certificates (keyUsage lacks keyCertSign)")
	case !pki.SamePublicKey(signer.Public(), cert.PublicKey):
		return nil, errors.New("the private key does not match the certificate")
	case !now.Before(cert.NotAfter):
		return nil, fmt.Errorf("expired at %s", cert.NotAfter.UTC().Format(time.RFC3339))
	case now.Before(cert.NotBefore):
		return nil, fmt.Errorf("not valid before %s", cert.NotBefore.UTC().Format(time.RFC3339))
	case len(roots) == 0:
		return nil, errors.New("no root certificate")
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
		return nil, fmt.Errorf("does not chain to the root: %w", err)
	}
	verified := chains[0] // cert, intermediates..., anchor
	p := &LocalParent{
		cert:   cert,
		signer: signer,
		chain:  verified[:len(verified)-1],
		anchor: verified[len(verified)-1],
		roots:  roots,
		direct: !allowsIntermediate(verified),
	}
	p.notAfter = parentNotAfter(p)
	if p.direct {
		if err := p.checkDirect(); err != nil {
			return nil, err
		}
	}
	return p, nil
}

// parentNotAfter is the earliest NotAfter of p's certificate, its chain and
// its anchor: nothing signed under p verifies past it.
func parentNotAfter(p Parent) time.Time {
	t := p.Anchor().NotAfter
	for _, c := range append([]*x509.Certificate{p.Certificate()}, p.Chain()...) {
		t = earliest(t, c.NotAfter)
	}
	return t
}

// allowsIntermediate reports whether a CA certificate signed by chain[0]
// would satisfy the path length constraint of every certificate of chain
// (chain[0] up to the anchor), as x509.Certificate.Verify checks them: the
// certificate at index i would have i+1 intermediates under it, the i
// certificates below it in chain and the new one.
func allowsIntermediate(chain []*x509.Certificate) bool {
	for i, c := range chain {
		if c.BasicConstraintsValid && c.MaxPathLen >= 0 && i+1 > c.MaxPathLen {
			return false
		}
	}
	return true
}

// checkDirect checks what leaves signed by p's own key need of it.
func (p *LocalParent) checkDirect() error {
	if len(p.cert.SubjectKeyId) == 0 {
		// Go takes a leaf's authorityKeyIdentifier from its issuer's
		// subjectKeyIdentifier, and ValidateLeaf requires one (RFC 5280
		// 4.2.1.1).
		return errors.New("signs leaves directly but has no subjectKeyIdentifier (RFC 5280 4.2.1.2 requires one in a CA certificate)")
	}
	return nil
}

// SignsLeaves reports whether the parent's own key signs workload leaves
// (direct mode), as istiod signs them with a plug-in ca-cert.pem, instead of
// meshca's rotating intermediate: because no intermediate fits under it
// (pathlen 0), or because LoadCACerts was asked to.
func (p *LocalParent) SignsLeaves() bool { return p.direct }

func (p *LocalParent) leafKey() crypto.Signer {
	if !p.direct {
		return nil
	}
	return p.signer
}

// SignIntermediate implements Parent. A parent that signs leaves directly
// signs no intermediates.
func (p *LocalParent) SignIntermediate(ctx context.Context, tmpl *x509.Certificate, key crypto.Signer) (*x509.Certificate, error) {
	if p.direct {
		return nil, errors.New("ca: the parent signs leaves directly, not intermediates")
	}
	if tmpl.NotAfter.After(p.notAfter) {
		tmpl.NotAfter = p.notAfter // never outlive the parent or its chain
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.cert, key.Public(), withContext(ctx, p.signer))
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

// ContextSigner is a crypto.Signer whose signatures are remote calls (Vault
// Transit): WithContext returns a signer whose calls end with ctx.
type ContextSigner interface {
	crypto.Signer
	WithContext(ctx context.Context) crypto.Signer
}

// withContext binds s's calls to ctx when it makes any.
func withContext(ctx context.Context, s crypto.Signer) crypto.Signer {
	if cs, ok := s.(ContextSigner); ok {
		return cs.WithContext(ctx)
	}
	return s
}

// certPEM encodes one certificate.
func certPEM(c *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
}
