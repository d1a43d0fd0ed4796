package vault

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
	"strings"
	"time"

	"github.com/meshca/meshca/internal/files"
	"github.com/meshca/meshca/internal/pki"
)

// PKIParent is Vault's PKI engine as meshca's parent (a ca.Parent): meshca
// makes its intermediate's key and sends a CSR to the sign-intermediate
// endpoint; Vault's issuer signs it. The issuer's chain is read at start
// (<mount>/issuer/<ref>/json) and kept in a cache file, so that meshca
// restarted while Vault is unreachable still knows its parent.
type PKIParent struct {
	c    *Client
	path string
	// cert is Vault's issuer; chain the certificates above it up to, not
	// including, the anchor (the root).
	cert, anchor *x509.Certificate
	chain        []*x509.Certificate
}

// PKIParent reads the chain of the issuer behind path (a
// "<mount>/root/sign-intermediate" or "<mount>/issuer/<ref>/sign-intermediate"
// endpoint) and returns the parent that signs through it. cacheFile (may be
// empty) keeps the chain for a start while Vault is unreachable.
func (c *Client) PKIParent(ctx context.Context, path, cacheFile string, now time.Time) (*PKIParent, error) {
	issuer, err := issuerPath(path)
	if err != nil {
		return nil, err
	}
	var chain []*x509.Certificate
	s, err := c.call(ctx, "pki-issuer", issuer+"/json", nil, true)
	switch {
	case err == nil && (s == nil || s.Data == nil):
		return nil, fmt.Errorf("vault: %s: no such issuer: enable the PKI engine and generate or import its root", issuer)
	case err == nil:
		if chain, err = issuerChain(s.Data); err != nil {
			return nil, fmt.Errorf("vault: %s: %w", issuer, err)
		}
		if cacheFile != "" {
			if werr := files.WriteAtomic(cacheFile, pemChain(chain), 0o600); werr != nil {
				c.cfg.Logger.Warn("cannot cache the vault PKI chain", "file", cacheFile, "err", werr)
			}
		}
	case cacheFile == "":
		return nil, err
	default:
		cached, rerr := os.ReadFile(filepath.Clean(cacheFile))
		if rerr != nil {
			return nil, fmt.Errorf("%w (and no cached chain: %v)", err, rerr)
		}
		if chain, rerr = pki.ParseCertificates(cached); rerr != nil {
			return nil, fmt.Errorf("%w (and the cached chain %s is unreadable: %v)", err, cacheFile, rerr)
		}
		c.cfg.Logger.Warn("vault is unreachable: using the cached PKI chain; leaves are signed by the stored intermediate", "err", err, "file", cacheFile)
	}
	p := &PKIParent{c: c, path: path, cert: chain[0], anchor: chain[len(chain)-1]}
	if len(chain) > 2 {
		p.chain = chain[1 : len(chain)-1]
	}
	if err := p.check(now); err != nil {
		return nil, fmt.Errorf("vault: %s: %w", issuer, err)
	}
	return p, nil
}

// issuerPath is the issuer behind a signing path: the one it names
// ("<mount>/issuer/<ref>/..."), else its mount's default issuer. The mount
// (which may hold slashes) ends where Vault's PKI endpoints begin.
func issuerPath(path string) (string, error) {
	path = strings.Trim(path, "/")
	if i := strings.Index(path, "/issuer/"); i > 0 {
		ref, _, _ := strings.Cut(path[i+len("/issuer/"):], "/")
		if ref != "" {
			return path[:i] + "/issuer/" + ref, nil
		}
	}
	for _, ep := range []string{"/root/", "/sign-intermediate", "/sign/", "/sign-verbatim", "/issue/", "/intermediate/"} {
		if i := strings.Index(path, ep); i > 0 {
			return path[:i] + "/issuer/default", nil
		}
	}
	return "", fmt.Errorf("vault: --vault-pki-path %q is not a PKI signing endpoint: want <mount>/root/sign-intermediate or <mount>/issuer/<ref>/sign-intermediate", path)
}

// issuerChain reads an issuer's certificate and ca_chain, issuer first,
// ending at a self-signed root.
func issuerChain(data map[string]any) ([]*x509.Certificate, error) {
	var all []string
	if c, ok := data["certificate"].(string); ok {
		all = append(all, c)
	}
	if cc, ok := data["ca_chain"].([]any); ok {
		for _, c := range cc {
			if s, ok := c.(string); ok {
				all = append(all, s)
			}
		}
	}
	chain, err := dedupChain(all)
	if err != nil {
		return nil, err
	}
	if len(chain) == 0 {
		return nil, errors.New("the issuer has no certificate")
	}
	last := chain[len(chain)-1]
	if last.CheckSignatureFrom(last) != nil || !last.IsCA {
		return nil, fmt.Errorf("the issuer's chain ends at %q, which is not a root: import the whole chain up to the root into the issuer", last.Subject.CommonName)
	}
	return chain, nil
}

// dedupChain parses PEM certificates, dropping repeats, in order.
func dedupChain(pems []string) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for _, p := range pems {
		certs, err := pki.ParseCertificates([]byte(p))
		if err != nil {
			return nil, err
		}
		for _, c := range certs {
			dup := false
			for _, o := range out {
				dup = dup || o.Equal(c)
			}
			if !dup {
				out = append(out, c)
			}
		}
	}
	return out, nil
}

func pemChain(chain []*x509.Certificate) []byte {
	var b []byte
	for _, c := range chain {
		b = append(b, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return b
}

// check verifies that the issuer is a CA that chains to the anchor at now.
func (p *PKIParent) check(now time.Time) error {
	if !p.cert.IsCA || !p.cert.BasicConstraintsValid {
		return fmt.Errorf("issuer %q is not a CA certificate", p.cert.Subject.CommonName)
	}
	if _, err := p.verify(p.cert, now); err != nil {
		return fmt.Errorf("issuer %q does not chain to its root: %w", p.cert.Subject.CommonName, err)
	}
	return nil
}

func (p *PKIParent) verify(c *x509.Certificate, now time.Time) ([][]*x509.Certificate, error) {
	roots, inters := x509.NewCertPool(), x509.NewCertPool()
	roots.AddCert(p.anchor)
	for _, i := range append([]*x509.Certificate{p.cert}, p.chain...) {
		inters.AddCert(i)
	}
	return c.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inters, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
}

// SignIntermediate implements ca.Parent: a CSR for tmpl's subject and URI
// SANs, signed by key, to the sign-intermediate endpoint with
// use_csr_values, tmpl's lifetime (cut to the issuer's) and path length 0.
// The answer must be a CA certificate for key's public key under the
// issuer read at start.
func (p *PKIParent) SignIntermediate(ctx context.Context, tmpl *x509.Certificate, key crypto.Signer) (*x509.Certificate, error) {
	csrDER, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: tmpl.Subject, URIs: tmpl.URIs}, key)
	if err != nil {
		return nil, fmt.Errorf("vault: intermediate CSR: %w", err)
	}
	now := p.c.cfg.Clock.Now()
	notAfter := tmpl.NotAfter
	for _, c := range append([]*x509.Certificate{p.cert, p.anchor}, p.chain...) {
		if c.NotAfter.Before(notAfter) {
			notAfter = c.NotAfter
		}
	}
	ttl := notAfter.Sub(now).Truncate(time.Second)
	if ttl <= 0 {
		return nil, fmt.Errorf("vault: the PKI issuer %q expired at %s", p.cert.Subject.CommonName, p.cert.NotAfter.UTC().Format(time.RFC3339))
	}
	s, err := p.c.call(ctx, "pki-sign-intermediate", p.path, map[string]any{
		"csr":                  string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csrDER})),
		"common_name":          tmpl.Subject.CommonName,
		"use_csr_values":       true,
		"exclude_cn_from_sans": true,
		"ttl":                  fmt.Sprintf("%ds", int64(ttl/time.Second)),
		"max_path_length":      0,
		"format":               "pem",
	}, false)
	if err != nil {
		return nil, err
	}
	if s == nil || s.Data == nil {
		return nil, fmt.Errorf("vault: %s answered without a certificate", p.path)
	}
	pemCert, _ := s.Data["certificate"].(string)
	cert, err := pki.ParseCertificate(pemCert)
	if err != nil {
		return nil, fmt.Errorf("vault: %s answered an unreadable certificate: %w", p.path, err)
	}
	switch {
	case !pki.SamePublicKey(cert.PublicKey, key.Public()):
		return nil, fmt.Errorf("vault: %s answered a certificate for another key", p.path)
	case !cert.IsCA || !cert.BasicConstraintsValid || cert.KeyUsage&x509.KeyUsageCertSign == 0:
		return nil, fmt.Errorf("vault: %s answered a certificate that is not a CA (%q): the path signs leaves; use <mount>/root/sign-intermediate or <mount>/issuer/<ref>/sign-intermediate", p.path, cert.Subject.CommonName)
	}
	if _, err := p.verify(cert, now); err != nil {
		return nil, fmt.Errorf("vault: %s answered a certificate that does not chain to the issuer read at start (%q, root %q): %w; if Vault's issuer changed, replace the root with a root rotation (--vault-pki-next-path)",
			p.path, p.cert.Subject.CommonName, p.anchor.Subject.CommonName, err)
	}
	return cert, nil
}

// Certificate implements ca.Parent: Vault's issuer.
func (p *PKIParent) Certificate() *x509.Certificate { return p.cert }

// Chain implements ca.Parent: the issuer and the certificates above it,
// not the anchor; empty when the issuer is the root.
func (p *PKIParent) Chain() []*x509.Certificate {
	if p.cert.Equal(p.anchor) {
		return nil
	}
	return append([]*x509.Certificate{p.cert}, p.chain...)
}

// Anchor implements ca.Parent.
func (p *PKIParent) Anchor() *x509.Certificate { return p.anchor }

// Roots implements ca.Parent.
func (p *PKIParent) Roots() []*x509.Certificate { return []*x509.Certificate{p.anchor} }
