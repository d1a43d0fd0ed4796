package ca_test

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/clock/clocktest"
	"github.com/meshca/meshca/internal/storetest"
)

// testCA makes a CA certificate for key, signed by parent (self-signed when
// parent is nil).
func testCA(t testing.TB, cn string, key crypto.Signer, parent *x509.Certificate, parentKey crypto.Signer) *x509.Certificate {
	t.Helper()
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: cn, Organization: []string{"Istio"}},
		NotBefore:             t0.Add(-24 * time.Hour),
		NotAfter:              t0.Add(365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, key.Public(), parentKey)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func writePEM(t *testing.T, path, typ string, mode os.FileMode, ders ...[]byte) {
	t.Helper()
	var out []byte
	for _, d := range ders {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: d})...)
	}
	if err := os.WriteFile(path, out, mode); err != nil {
		t.Fatal(err)
	}
}

// istioCACerts writes Istio's plug-in CA layout: root → ca-cert.
func istioCACerts(t *testing.T, keyMode os.FileMode) (dir string, root, caCert *x509.Certificate) {
	dir = t.TempDir()
	rootKey, caKey := p256(t), p256(t)
	root = testCA(t, "Root CA", rootKey, nil, nil)
	caCert = testCA(t, "Intermediate CA", caKey, root, rootKey)
	keyDER, _ := x509.MarshalPKCS8PrivateKey(caKey)
	writePEM(t, filepath.Join(dir, ca.CACertFile), "CERTIFICATE", 0o644, caCert.Raw)
	writePEM(t, filepath.Join(dir, ca.CAKeyFile), "PRIVATE KEY", keyMode, keyDER)
	writePEM(t, filepath.Join(dir, ca.RootCertFile), "CERTIFICATE", 0o644, root.Raw)
	writePEM(t, filepath.Join(dir, ca.CertChainFile), "CERTIFICATE", 0o644, caCert.Raw, root.Raw)
	return dir, root, caCert
}

func TestIstioCACertsLayout(t *testing.T) {
	dir, root, caCert := istioCACerts(t, 0o600)
	clk := clocktest.New(t0)
	parent, err := ca.LoadCACerts(dir, clk.Now())
	if err != nil {
		t.Fatalf("LoadCACerts: %v", err)
	}
	st := storetest.NewMem()
	a := newAuthority(t, st, clk, func(c *ca.Config) { c.Parent = parent })
	iss, err := a.Sign(context.Background(), ca.SignRequest{CSR: csrPEM(t, p256(t), fooCSR()), Identity: identity(fooID)})
	if err != nil {
		t.Fatal(err)
	}
	chain := parseChain(t, iss.ChainPEM)
	if len(chain) != 4 || !chain[2].Equal(caCert) || !chain[3].Equal(root) {
		t.Fatalf("chain is not leaf, meshca intermediate, ca-cert, root (len %d)", len(chain))
	}
	if _, _, err := x509svid.Verify(chain[:3], a.Bundle(), x509svid.WithTime(clk.Now())); err != nil {
		t.Fatalf("verify against root-cert.pem: %v", err)
	}
	s, _ := st.LoadCAState(context.Background())
	if s.Root != nil {
		t.Error("a self-signed root was created although cacerts were given")
	}

	// Replacing cacerts with another CA discards intermediates of the old one.
	dir2, root2, _ := istioCACerts(t, 0o600)
	parent2, err := ca.LoadCACerts(dir2, clk.Now())
	if err != nil {
		t.Fatal(err)
	}
	b := newAuthority(t, st, clk, func(c *ca.Config) { c.Parent = parent2 })
	if err := b.SigningCertificate().CheckSignatureFrom(parent2.Certificate()); err != nil {
		t.Errorf("intermediate not re-issued under the new cacerts: %v", err)
	}
	if !b.Bundle().X509Authorities()[0].Equal(root2) {
		t.Error("bundle is not the new root")
	}
}

func TestIstioCACertsRefusesBadFiles(t *testing.T) {
	tests := []struct {
		name   string
		mangle func(t *testing.T, dir string)
		msg    string
	}{
		{"key readable by others", func(t *testing.T, dir string) { os.Chmod(filepath.Join(dir, ca.CAKeyFile), 0o644) }, "readable by others"},
		{"missing key", func(t *testing.T, dir string) { os.Remove(filepath.Join(dir, ca.CAKeyFile)) }, "read CA key"},
		{"missing root", func(t *testing.T, dir string) { os.Remove(filepath.Join(dir, ca.RootCertFile)) }, "read certificates"},
		{"key of another CA", func(t *testing.T, dir string) {
			d, _ := x509.MarshalPKCS8PrivateKey(p256(t))
			writePEM(t, filepath.Join(dir, ca.CAKeyFile), "PRIVATE KEY", 0o600, d)
		}, "does not match"},
		{"root that did not sign ca-cert", func(t *testing.T, dir string) {
			other := testCA(t, "Other Root", p256(t), nil, nil)
			writePEM(t, filepath.Join(dir, ca.RootCertFile), "CERTIFICATE", 0o644, other.Raw)
			os.Remove(filepath.Join(dir, ca.CertChainFile))
		}, "does not chain to the root"},
		{"ca-cert with pathlen 0", func(t *testing.T, dir string) {
			rootKey, caKey := p256(t), p256(t)
			root := testCA(t, "Root CA", rootKey, nil, nil)
			tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "Intermediate"},
				NotBefore: t0.Add(-time.Hour), NotAfter: t0.Add(24 * time.Hour), KeyUsage: x509.KeyUsageCertSign,
				BasicConstraintsValid: true, IsCA: true, MaxPathLen: 0, MaxPathLenZero: true}
			der, _ := x509.CreateCertificate(rand.Reader, tmpl, root, caKey.Public(), rootKey)
			keyDER, _ := x509.MarshalPKCS8PrivateKey(caKey)
			writePEM(t, filepath.Join(dir, ca.CACertFile), "CERTIFICATE", 0o644, der)
			writePEM(t, filepath.Join(dir, ca.CAKeyFile), "PRIVATE KEY", 0o600, keyDER)
			writePEM(t, filepath.Join(dir, ca.RootCertFile), "CERTIFICATE", 0o644, root.Raw)
			os.Remove(filepath.Join(dir, ca.CertChainFile))
		}, "pathlen 0"},
		{"garbage cert", func(t *testing.T, dir string) {
			os.WriteFile(filepath.Join(dir, ca.CACertFile), []byte("nope"), 0o644)
		}, "no PEM certificates"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir, _, _ := istioCACerts(t, 0o600)
			tc.mangle(t, dir)
			_, err := ca.LoadCACerts(dir, t0)
			if err == nil || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("LoadCACerts = %v, want error saying %q", err, tc.msg)
			}
		})
	}
}
