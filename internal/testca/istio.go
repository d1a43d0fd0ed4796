package testca

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// IstioCACerts is Istio's plug-in CA ("cacerts") with the extensions
// Istio's own tools/certs (Makefile.selfsigned.mk, common.mk) gives it: a
// root "O=Istio, CN=Root CA" with basicConstraints critical CA:TRUE (no
// path length) and a ca-cert "O=Istio, CN=Intermediate CA, L=cluster1"
// signed by it with basicConstraints critical CA:TRUE, pathlen:0, the DNS
// SAN istiod.istio-system.svc, both with keyUsage critical
// digitalSignature, nonRepudiation, keyEncipherment, keyCertSign and a
// subject key ID. Istio's tooling makes RSA-4096 keys; these are P-256
// unless IstioOptions.RSABits asks for RSA, to keep tests fast.
type IstioCACerts struct {
	Root, CACert   *x509.Certificate
	RootKey, CAKey crypto.Signer
}

// IstioOptions change what NewIstioCACerts makes.
type IstioOptions struct {
	// Now is the time the certificates are valid around: from an hour
	// before it, for ten years, as Istio's 3650 days. Default time.Now().
	Now time.Time
	// RSABits, when set, makes RSA keys of that size instead of P-256.
	RSABits int
	// CACert, when set, edits ca-cert's template before it is signed (a
	// path length of 1, no key usage, an expired certificate...).
	CACert func(tmpl *x509.Certificate)
}

// NewIstioCACerts makes a root and a ca-cert as Istio's tooling does.
func NewIstioCACerts(t testing.TB, o IstioOptions) *IstioCACerts {
	t.Helper()
	if o.Now.IsZero() {
		o.Now = time.Now()
	}
	newKey := func() crypto.Signer {
		if o.RSABits != 0 {
			k, err := rsa.GenerateKey(rand.Reader, o.RSABits)
			if err != nil {
				t.Fatal(err)
			}
			return k
		}
		return NewKey(t)
	}
	c := &IstioCACerts{RootKey: newKey(), CAKey: newKey()}
	usage := x509.KeyUsageDigitalSignature | x509.KeyUsageContentCommitment | x509.KeyUsageKeyEncipherment | x509.KeyUsageCertSign
	c.Root = Sign(t, &x509.Certificate{
		Subject:               pkix.Name{Organization: []string{"Istio"}, CommonName: "Root CA"},
		NotBefore:             o.Now.Add(-time.Hour),
		NotAfter:              o.Now.Add(3650 * 24 * time.Hour),
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            -1,
		KeyUsage:              usage,
	}, nil, c.RootKey.Public(), c.RootKey)
	tmpl := &x509.Certificate{
		Subject:               pkix.Name{Organization: []string{"Istio"}, CommonName: "Intermediate CA", Locality: []string{"cluster1"}},
		NotBefore:             o.Now.Add(-time.Hour),
		NotAfter:              o.Now.Add(3650 * 24 * time.Hour),
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            0,
		MaxPathLenZero:        true,
		KeyUsage:              usage,
		DNSNames:              []string{"istiod.istio-system.svc"},
	}
	if o.CACert != nil {
		o.CACert(tmpl)
	}
	c.CACert = Sign(t, tmpl, c.Root, c.CAKey.Public(), c.RootKey)
	return c
}

// Write writes the layout into dir as Istio's `make <cluster>-cacerts`
// leaves it: ca-cert.pem, ca-key.pem (PKCS #8, 0600), root-cert.pem, and
// cert-chain.pem holding ca-cert then the root.
func (c *IstioCACerts) Write(t testing.TB, dir string) {
	t.Helper()
	keyDER, err := x509.MarshalPKCS8PrivateKey(c.CAKey)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []struct {
		name string
		typ  string
		mode os.FileMode
		ders [][]byte
	}{
		{"ca-cert.pem", "CERTIFICATE", 0o644, [][]byte{c.CACert.Raw}},
		{"ca-key.pem", "PRIVATE KEY", 0o600, [][]byte{keyDER}},
		{"root-cert.pem", "CERTIFICATE", 0o644, [][]byte{c.Root.Raw}},
		{"cert-chain.pem", "CERTIFICATE", 0o644, [][]byte{c.CACert.Raw, c.Root.Raw}},
	} {
		var b []byte
		for _, d := range f.ders {
			b = append(b, pem.EncodeToMemory(&pem.Block{Type: f.typ, Bytes: d})...)
		}
		if err := os.WriteFile(filepath.Join(dir, f.name), b, f.mode); err != nil {
			t.Fatal(err)
		}
	}
}
