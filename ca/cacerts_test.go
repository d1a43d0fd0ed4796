package ca_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"log/slog"
	"math/big"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/clock/clocktest"
	"github.com/meshca/meshca/internal/storetest"
	"github.com/meshca/meshca/internal/testca"
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

// istioCACerts writes Istio's plug-in CA layout: root → ca-cert, both
// without a path length, so that meshca's intermediate fits under ca-cert.
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
	parent, err := ca.LoadCACerts(dir, clk.Now(), ca.CACertsOptions{})
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
	parent2, err := ca.LoadCACerts(dir2, clk.Now(), ca.CACertsOptions{})
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
		{"garbage cert", func(t *testing.T, dir string) {
			os.WriteFile(filepath.Join(dir, ca.CACertFile), []byte("nope"), 0o644)
		}, "no PEM certificates"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir, _, _ := istioCACerts(t, 0o600)
			tc.mangle(t, dir)
			_, err := ca.LoadCACerts(dir, t0, ca.CACertsOptions{})
			if err == nil || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("LoadCACerts = %v, want error saying %q", err, tc.msg)
			}
		})
	}
}

// loadIstio writes c as Istio's tooling lays it out and loads it at now.
func loadIstio(t *testing.T, c *testca.IstioCACerts, now time.Time, o ca.CACertsOptions) (*ca.LocalParent, error) {
	t.Helper()
	dir := t.TempDir()
	c.Write(t, dir)
	return ca.LoadCACerts(dir, now, o)
}

// TestIstioPathLenZeroSignsDirectly: a cacerts directory as Istio's own
// tools/certs makes it (ca-cert.pem with pathlen:0, cert-chain.pem =
// ca-cert + root) is accepted, and its key signs the leaves itself, as
// istiod does: the chain is leaf, ca-cert, root (cert-chain.pem's order),
// it verifies with go-spiffe against root-cert.pem, nothing is rotated and
// no intermediate is stored. With P-256 keys and with RSA ones (Istio's
// tooling makes RSA-4096).
func TestIstioPathLenZeroSignsDirectly(t *testing.T) {
	for _, rsaBits := range []int{0, 2048} {
		t.Run(map[int]string{0: "p256", 2048: "rsa"}[rsaBits], func(t *testing.T) {
			ctx := context.Background()
			clk := clocktest.New(t0)
			c := testca.NewIstioCACerts(t, testca.IstioOptions{Now: t0, RSABits: rsaBits})
			parent, err := loadIstio(t, c, t0, ca.CACertsOptions{})
			if err != nil {
				t.Fatalf("LoadCACerts: %v", err)
			}
			if !parent.SignsLeaves() {
				t.Fatal("pathlen 0: SignsLeaves is false")
			}
			st := storetest.NewMem()
			a := newAuthority(t, st, clk, func(cfg *ca.Config) { cfg.Parent = parent })
			if !a.SigningCertificate().Equal(c.CACert) {
				t.Fatal("the signing certificate is not ca-cert.pem")
			}
			iss, err := a.Sign(ctx, ca.SignRequest{CSR: csrPEM(t, p256(t), fooCSR()), Identity: identity(fooID)})
			if err != nil {
				t.Fatal(err)
			}
			chain := parseChain(t, iss.ChainPEM)
			if len(chain) != 3 || !chain[1].Equal(c.CACert) || !chain[2].Equal(c.Root) {
				t.Fatalf("chain is not leaf, ca-cert, root (len %d)", len(chain))
			}
			if err := chain[0].CheckSignatureFrom(c.CACert); err != nil {
				t.Fatalf("leaf not signed by ca-cert.pem's key: %v", err)
			}
			if id, _, err := x509svid.Verify(chain[:2], a.Bundle(), x509svid.WithTime(clk.Now())); err != nil || id != fooID {
				t.Fatalf("x509svid.Verify against root-cert.pem: %s, %v", id, err)
			}
			if got := chain[0].NotAfter.Sub(clk.Now()); got != ca.DefaultLeafTTL {
				t.Errorf("leaf lifetime from now %s, want %s", got, ca.DefaultLeafTTL)
			}
			if err := a.Rotate(ctx); err != nil {
				t.Fatalf("Rotate in direct mode: %v", err)
			}
			// Only the JWT signing key rotates.
			if got, want := a.NextRotation(), clk.Now().Add(-ca.DefaultBackdate).Add((ca.DefaultIntermediateTTL+ca.DefaultBackdate)*4/10); !got.Equal(want) {
				t.Errorf("NextRotation = %s, want the JWT key's prepare time %s", got, want)
			}
			if s, err := st.LoadCAState(ctx); err != nil || s.Root != nil || s.Active != nil || s.JWTKeys == nil {
				t.Errorf("direct mode stored CA state (%v): no root or intermediate should be made, only the JWT key", err)
			}
			if err := a.Ready(ctx); err != nil {
				t.Errorf("Ready: %v", err)
			}
			if w := a.Warnings(); len(w) != 0 {
				t.Errorf("warnings for a ten-year CA: %q", w)
			}

			// The CA's own TLS certificate chains the same way.
			srv, err := a.IssueServing([]string{"meshca.istio-system.svc"}, nil, time.Hour)
			if err != nil {
				t.Fatal(err)
			}
			if len(srv.Certificate) != 2 || !bytes.Equal(srv.Certificate[1], c.CACert.Raw) {
				t.Fatalf("serving chain has %d certificates, want serving, ca-cert", len(srv.Certificate))
			}
			roots := x509.NewCertPool()
			roots.AddCert(c.Root)
			inter := x509.NewCertPool()
			inter.AddCert(c.CACert)
			if _, err := srv.Leaf.Verify(x509.VerifyOptions{DNSName: "meshca.istio-system.svc", Roots: roots, Intermediates: inter, CurrentTime: clk.Now()}); err != nil {
				t.Fatalf("serving certificate: %v", err)
			}
		})
	}
}

// noPathLen makes a ca-cert without a path length, so that meshca's
// intermediate fits under it.
func noPathLen(tmpl *x509.Certificate) { tmpl.MaxPathLen, tmpl.MaxPathLenZero = -1, false }

// TestCACertsSignDirectlyOption: a ca-cert.pem that allows an intermediate
// keeps meshca's own rotating one, unless SignDirectly asks for istiod's
// way.
func TestCACertsSignDirectlyOption(t *testing.T) {
	c := testca.NewIstioCACerts(t, testca.IstioOptions{Now: t0, CACert: noPathLen})
	for _, direct := range []bool{false, true} {
		parent, err := loadIstio(t, c, t0, ca.CACertsOptions{SignDirectly: direct})
		if err != nil {
			t.Fatal(err)
		}
		if parent.SignsLeaves() != direct {
			t.Fatalf("SignDirectly %v: SignsLeaves %v", direct, parent.SignsLeaves())
		}
		a := newAuthority(t, storetest.NewMem(), clocktest.New(t0), func(cfg *ca.Config) { cfg.Parent = parent })
		iss, err := a.Sign(context.Background(), ca.SignRequest{CSR: csrPEM(t, p256(t), fooCSR()), Identity: identity(fooID)})
		if err != nil {
			t.Fatal(err)
		}
		if got, want := len(iss.ChainPEM), map[bool]int{false: 4, true: 3}[direct]; got != want {
			t.Errorf("SignDirectly %v: chain of %d, want %d", direct, got, want)
		}
	}
}

// TestPathLenAboveCACertDecides: ca-cert.pem itself has no path length, but
// the root's pathlen:1 leaves no room for another CA under ca-cert, so the
// leaves are signed directly rather than by an intermediate that would not
// verify.
func TestPathLenAboveCACertDecides(t *testing.T) {
	rootKey, caKey := p256(t), p256(t)
	root := testca.Sign(t, &x509.Certificate{Subject: pkix.Name{CommonName: "root"}, NotBefore: t0.Add(-time.Hour), NotAfter: t0.Add(1000 * time.Hour),
		BasicConstraintsValid: true, IsCA: true, MaxPathLen: 1, KeyUsage: x509.KeyUsageCertSign}, nil, rootKey.Public(), rootKey)
	caCert := testca.Sign(t, &x509.Certificate{Subject: pkix.Name{CommonName: "ca"}, NotBefore: t0.Add(-time.Hour), NotAfter: t0.Add(1000 * time.Hour),
		BasicConstraintsValid: true, IsCA: true, MaxPathLen: -1, KeyUsage: x509.KeyUsageCertSign}, root, caKey.Public(), rootKey)
	p, err := ca.NewLocalParent(caCert, caKey, nil, []*x509.Certificate{root}, t0)
	if err != nil {
		t.Fatal(err)
	}
	if !p.SignsLeaves() {
		t.Fatal("an intermediate under ca-cert would break the root's pathlen 1, yet SignsLeaves is false")
	}
	a := newAuthority(t, storetest.NewMem(), clocktest.New(t0), func(cfg *ca.Config) { cfg.Parent = p })
	iss, err := a.Sign(context.Background(), ca.SignRequest{CSR: csrPEM(t, p256(t), fooCSR()), Identity: identity(fooID)})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := x509svid.Verify(parseChain(t, iss.ChainPEM)[:2], a.Bundle(), x509svid.WithTime(t0)); err != nil {
		t.Fatal(err)
	}
}

// TestDirectModeNearTheEnd: as ca-cert.pem (or the root above it) nears its
// end, leaves are cut short to it and the validator accepts them, Warnings
// (on /readyz and in the log) say so while the CA is still ready, and once it
// has expired the CA is not ready and says which file to replace.
func TestDirectModeNearTheEnd(t *testing.T) {
	tests := []struct {
		name   string
		caLife time.Duration // ca-cert's NotAfter after t0
		root   bool          // the root, not ca-cert, ends first
	}{
		{"ca-cert ends first", 10 * time.Hour, false},
		{"root ends first", 10 * time.Hour, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			clk := clocktest.New(t0)
			c := testca.NewIstioCACerts(t, testca.IstioOptions{Now: t0, CACert: func(tmpl *x509.Certificate) {
				tmpl.NotAfter = t0.Add(tc.caLife)
			}})
			ends := c.CACert.NotAfter
			if tc.root {
				// Re-sign ca-cert to outlive a root that ends first.
				c.Root = testca.Sign(t, &x509.Certificate{Subject: c.Root.Subject, NotBefore: t0.Add(-time.Hour), NotAfter: ends,
					BasicConstraintsValid: true, IsCA: true, MaxPathLen: -1, KeyUsage: x509.KeyUsageCertSign}, nil, c.RootKey.Public(), c.RootKey)
				c.CACert = testca.Sign(t, &x509.Certificate{Subject: c.CACert.Subject, NotBefore: t0.Add(-time.Hour), NotAfter: ends.Add(100 * time.Hour),
					BasicConstraintsValid: true, IsCA: true, MaxPathLen: 0, MaxPathLenZero: true, KeyUsage: x509.KeyUsageCertSign}, c.Root, c.CAKey.Public(), c.RootKey)
			}
			parent, err := loadIstio(t, c, t0, ca.CACertsOptions{})
			if err != nil {
				t.Fatal(err)
			}
			a := newAuthority(t, storetest.NewMem(), clk, func(cfg *ca.Config) { cfg.Parent = parent })
			iss, err := a.Sign(ctx, ca.SignRequest{CSR: csrPEM(t, p256(t), fooCSR()), Identity: identity(fooID)})
			if err != nil {
				t.Fatal(err)
			}
			if got := leafOf(t, iss).NotAfter; !got.Equal(ends) {
				t.Errorf("leaf NotAfter %s, want cut short to %s", got, ends)
			}
			if err := a.Ready(ctx); err != nil {
				t.Fatalf("Ready with 10 h left: %v", err)
			}
			if w := a.Warnings(); len(w) != 1 || !strings.Contains(w[0], "expires at") {
				t.Errorf("Warnings = %q, want one about the end of the chain", w)
			}
			clk.Set(ends)
			_, err = a.Sign(ctx, ca.SignRequest{CSR: csrPEM(t, p256(t), fooCSR()), Identity: identity(fooID)})
			if !errors.Is(err, ca.ErrUnavailable) {
				t.Errorf("Sign after the end: %v, want ErrUnavailable", err)
			}
			if err := a.Ready(ctx); err == nil || !strings.Contains(err.Error(), "replace the cacerts files") {
				t.Errorf("Ready after the end: %v", err)
			}
		})
	}
}

func TestExpiryWarningTime(t *testing.T) {
	tests := []struct {
		name string
		life time.Duration
		want time.Duration // before NotAfter
	}{
		{"ten years: 30 days", 3650 * 24 * time.Hour, 30 * 24 * time.Hour},
		{"90 days: 30 days", 90 * 24 * time.Hour, 30 * 24 * time.Hour},
		{"7 days: a third", 7 * 24 * time.Hour, 56 * time.Hour},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := ca.ExpiryWarningTime(t0, t0.Add(tc.life)); !got.Equal(t0.Add(tc.life - tc.want)) {
				t.Errorf("ExpiryWarningTime = %s before the end, want %s", t0.Add(tc.life).Sub(got), tc.want)
			}
		})
	}
}

// TestLoadCACertsRefusesBadInput: what cannot work is refused at start,
// with a message naming the file and what is wrong with it.
func TestLoadCACertsRefusesBadInput(t *testing.T) {
	tests := []struct {
		name   string
		edit   func(tmpl *x509.Certificate)
		mangle func(t *testing.T, c *testca.IstioCACerts)
		msg    string
	}{
		{name: "ca-cert is not a CA", edit: func(tmpl *x509.Certificate) {
			tmpl.IsCA, tmpl.MaxPathLenZero, tmpl.KeyUsage = false, false, x509.KeyUsageDigitalSignature
		}, msg: "ca-cert.pem: not a CA certificate"},
		{name: "ca-cert lacks keyCertSign", edit: func(tmpl *x509.Certificate) {
			tmpl.KeyUsage = x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment
		}, msg: "ca-cert.pem: may not sign certificates (keyUsage lacks keyCertSign)"},
		{name: "ca-cert expired", edit: func(tmpl *x509.Certificate) {
			tmpl.NotBefore, tmpl.NotAfter = t0.Add(-48*time.Hour), t0.Add(-time.Hour)
		}, msg: "ca-cert.pem: expired at 2026-11-01T11:00:00Z"},
		{name: "ca-cert not yet valid", edit: func(tmpl *x509.Certificate) {
			tmpl.NotBefore = t0.Add(time.Hour)
		}, msg: "ca-cert.pem: not valid before"},
		{name: "ca-key of another CA", mangle: func(t *testing.T, c *testca.IstioCACerts) {
			c.CAKey = p256(t)
		}, msg: "ca-key.pem does not match ca-cert.pem"},
		{name: "chain to another root", mangle: func(t *testing.T, c *testca.IstioCACerts) {
			c.Root = testca.NewIstioCACerts(t, testca.IstioOptions{Now: t0}).Root
		}, msg: "ca-cert.pem: does not chain to the root"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := testca.NewIstioCACerts(t, testca.IstioOptions{Now: t0, CACert: tc.edit})
			if tc.mangle != nil {
				tc.mangle(t, c)
			}
			_, err := loadIstio(t, c, t0, ca.CACertsOptions{})
			if err == nil || !strings.Contains(err.Error(), tc.msg) || !strings.HasPrefix(err.Error(), "ca: cacerts /") {
				t.Fatalf("LoadCACerts = %v, want an error naming the directory and saying %q", err, tc.msg)
			}
		})
	}
}

// TestDirectNeedsSubjectKeyID: a leaf's authority key ID comes from its
// issuer's subject key ID, so a CA certificate without one cannot sign
// leaves directly (Go always gives one to the CA certificates it makes, so
// the field is cleared here as another tool might have left it).
func TestDirectNeedsSubjectKeyID(t *testing.T) {
	c := testca.NewIstioCACerts(t, testca.IstioOptions{Now: t0})
	noSKI := *c.CACert
	noSKI.SubjectKeyId = nil
	_, err := ca.NewLocalParent(&noSKI, c.CAKey, nil, []*x509.Certificate{c.Root}, t0)
	if err == nil || !strings.Contains(err.Error(), "no subjectKeyIdentifier") {
		t.Fatalf("NewLocalParent = %v, want a refusal naming the subject key ID", err)
	}
}

// logRecorder is a slog.Handler that keeps the messages of warnings.
type logRecorder struct {
	mu   sync.Mutex
	msgs []string
}

func (r *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (r *logRecorder) WithAttrs([]slog.Attr) slog.Handler       { return r }
func (r *logRecorder) WithGroup(string) slog.Handler            { return r }
func (r *logRecorder) Handle(_ context.Context, rec slog.Record) error {
	if rec.Level >= slog.LevelWarn {
		r.mu.Lock()
		r.msgs = append(r.msgs, rec.Message)
		r.mu.Unlock()
	}
	return nil
}

func (r *logRecorder) warnings() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.msgs)
}

// TestRunInDirectMode: the maintenance loop has nothing to rotate in
// direct mode, waits for its hourly pruning, and logs the Warnings once a
// day.
func TestRunInDirectMode(t *testing.T) {
	clk := clocktest.New(t0)
	c := testca.NewIstioCACerts(t, testca.IstioOptions{Now: t0, CACert: func(tmpl *x509.Certificate) {
		tmpl.NotAfter = t0.Add(20 * time.Hour) // under a day: leaves are cut short
	}})
	parent, err := loadIstio(t, c, t0, ca.CACertsOptions{})
	if err != nil {
		t.Fatal(err)
	}
	rec := &logRecorder{}
	a := newAuthority(t, storetest.NewMem(), clk, func(cfg *ca.Config) {
		cfg.Parent, cfg.Logger = parent, slog.New(rec)
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); !cond(); runtime.Gosched() {
			if time.Now().After(deadline) {
				t.Fatalf("Run: %s", what)
			}
		}
	}
	waitFor("no warning logged at start", func() bool { return len(rec.warnings()) == 1 && clk.Waiters() == 1 })
	if w := rec.warnings()[0]; !strings.Contains(w, "signs leaves") || !strings.Contains(w, "Intermediate CA") {
		t.Errorf("warning %q does not name the CA certificate that signs leaves", w)
	}
	clk.Advance(time.Hour) // the hourly wake-up: no new warning within the day
	waitFor("did not wait again", func() bool { return clk.Waiters() == 1 })
	if n := len(rec.warnings()); n != 1 {
		t.Errorf("%d warnings within the hour, want 1", n)
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("Run returned %v", err)
	}
}

// TestDirectModeRefusesUselessCACert: a ca-cert.pem whose name constraints
// leave out the trust domain loads (its own chain is fine), but the CA
// refuses to start on it: every leaf it signed would fail verification.
func TestDirectModeRefusesUselessCACert(t *testing.T) {
	c := testca.NewIstioCACerts(t, testca.IstioOptions{Now: t0, CACert: func(tmpl *x509.Certificate) {
		tmpl.PermittedURIDomains = []string{"other.org"}
	}})
	parent, err := loadIstio(t, c, t0, ca.CACertsOptions{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = ca.New(context.Background(), ca.Config{TrustDomain: td, Store: storetest.NewMem(), Parent: parent, Clock: clocktest.New(t0)})
	if err == nil || !strings.Contains(err.Error(), `leaves signed by "Intermediate CA" would not verify`) {
		t.Fatalf("ca.New = %v, want a refusal at start", err)
	}
}

// shortParent signs intermediates shorter than asked, as a Vault mount
// with a low max_lease_ttl does.
type shortParent struct {
	*ca.LocalParent
	life time.Duration
}

func (p shortParent) SignIntermediate(ctx context.Context, tmpl *x509.Certificate, key crypto.Signer) (*x509.Certificate, error) {
	tmpl.NotAfter = tmpl.NotBefore.Add(p.life)
	return p.LocalParent.SignIntermediate(ctx, tmpl, key)
}

// TestParentTooShortForIntermediates: a parent that can certify an
// intermediate for less than twice the default leaf lifetime (ca-cert.pem
// near its end, Vault's max_lease_ttl) is refused at start with what to
// change, instead of an intermediate replaced at every look.
func TestParentTooShortForIntermediates(t *testing.T) {
	for _, tc := range []struct {
		name   string
		caLife time.Duration // ca-cert's NotAfter after t0
		cut    time.Duration // if set, the parent signs intermediates this long, whatever is asked (a Vault mount's max TTL)
		ok     bool
	}{
		{name: "under twice the default TTL", caLife: 30 * time.Hour},
		{name: "twice the default TTL and more", caLife: 1000 * time.Hour, ok: true},
		{name: "cut short by the parent", caLife: 1000 * time.Hour, cut: 30 * time.Hour},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rootKey, caKey := p256(t), p256(t)
			root := testca.Sign(t, &x509.Certificate{Subject: pkix.Name{CommonName: "root"}, NotBefore: t0.Add(-time.Hour), NotAfter: t0.Add(2000 * time.Hour),
				BasicConstraintsValid: true, IsCA: true, KeyUsage: x509.KeyUsageCertSign}, nil, rootKey.Public(), rootKey)
			caCert := testca.Sign(t, &x509.Certificate{Subject: pkix.Name{CommonName: "ca"}, NotBefore: t0.Add(-time.Hour), NotAfter: t0.Add(tc.caLife),
				BasicConstraintsValid: true, IsCA: true, KeyUsage: x509.KeyUsageCertSign}, root, caKey.Public(), rootKey)
			p, err := ca.NewLocalParent(caCert, caKey, nil, []*x509.Certificate{root}, t0)
			if err != nil {
				t.Fatal(err)
			}
			if p.SignsLeaves() {
				t.Fatal("parent signs leaves directly; the test needs intermediates")
			}
			var parent ca.Parent = p
			if tc.cut > 0 {
				parent = shortParent{p, tc.cut}
			}
			_, err = ca.New(context.Background(), ca.Config{TrustDomain: td, Store: storetest.NewMem(), Clock: clocktest.New(t0), Parent: parent})
			if tc.ok != (err == nil) {
				t.Fatalf("ca.New = %v, want ok %v", err, tc.ok)
			}
			if !tc.ok && !strings.Contains(err.Error(), "twice --default-ttl") {
				t.Fatalf("ca.New = %v, want it to say the intermediate must cover twice --default-ttl", err)
			}
		})
	}
}
