package attestor_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshca/meshca/attestor"
	"github.com/meshca/meshca/internal/clock/clocktest"
)

var t0 = time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)

// fakeRevocations is a hand-written attestor.RevocationChecker that returns
// err and records what it was asked.
type fakeRevocations struct {
	err error

	mu    sync.Mutex
	calls []revocationCall
}

type revocationCall struct {
	serial *big.Int
	id     spiffeid.ID
	// chainLen is the length of the verified chain checked.
	chainLen int
}

func (f *fakeRevocations) CheckRevoked(_ context.Context, chain []*x509.Certificate, id spiffeid.ID) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, revocationCall{serial: chain[0].SerialNumber, id: id, chainLen: len(chain)})
	return f.err
}

func (f *fakeRevocations) asked() []revocationCall {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]revocationCall(nil), f.calls...)
}

// testCA is a CA certificate with its key.
type testCA struct {
	cert *x509.Certificate
	key  crypto.Signer
}

func newKey(t *testing.T) crypto.Signer {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func randSerial(t *testing.T) *big.Int {
	t.Helper()
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		t.Fatal(err)
	}
	return n.Add(n, big.NewInt(1))
}

func createCert(t *testing.T, tmpl, parent *x509.Certificate, pub crypto.PublicKey, signer crypto.Signer) *x509.Certificate {
	t.Helper()
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, signer)
	if err != nil {
		t.Fatalf("CreateCertificate(%s): %v", tmpl.Subject.CommonName, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

func caTemplate(t *testing.T, cn string) *x509.Certificate {
	return &x509.Certificate{
		SerialNumber:          randSerial(t),
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             t0.Add(-24 * time.Hour),
		NotAfter:              t0.Add(10 * 365 * 24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
}

func newRoot(t *testing.T, cn string) testCA {
	t.Helper()
	key := newKey(t)
	tmpl := caTemplate(t, cn)
	return testCA{cert: createCert(t, tmpl, tmpl, key.Public(), key), key: key}
}

func (ca testCA) newIntermediate(t *testing.T, cn string) testCA {
	t.Helper()
	key := newKey(t)
	return testCA{cert: createCert(t, caTemplate(t, cn), ca.cert, key.Public(), ca.key), key: key}
}

// svidTemplate is an X509-SVID valid from t0 for one hour.
func svidTemplate(t *testing.T, ids ...spiffeid.ID) *x509.Certificate {
	var uris []*url.URL
	for _, id := range ids {
		uris = append(uris, id.URL())
	}
	return &x509.Certificate{
		SerialNumber:          randSerial(t),
		NotBefore:             t0,
		NotAfter:              t0.Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		URIs:                  uris,
	}
}

func (ca testCA) issue(t *testing.T, tmpl *x509.Certificate) *x509.Certificate {
	t.Helper()
	return createCert(t, tmpl, ca.cert, newKey(t).Public(), ca.key)
}

func TestNewMTLSRequiresBundlesAndRevocations(t *testing.T) {
	bundle := x509bundle.FromX509Authorities(td, nil)
	tests := []struct {
		name    string
		cfg     attestor.MTLSConfig
		wantErr bool
	}{
		{name: "nothing", cfg: attestor.MTLSConfig{}, wantErr: true},
		{name: "no bundles", cfg: attestor.MTLSConfig{Revocations: &fakeRevocations{}}, wantErr: true},
		{name: "no revocations", cfg: attestor.MTLSConfig{Bundles: bundle}, wantErr: true},
		{name: "both, default clock", cfg: attestor.MTLSConfig{Bundles: bundle, Revocations: &fakeRevocations{}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m, err := attestor.NewMTLS(tc.cfg)
			if !tc.wantErr {
				if err != nil || m == nil {
					t.Fatalf("NewMTLS() = %v, %v; want an attestor", m, err)
				}
				return
			}
			if err == nil {
				t.Fatal("NewMTLS() succeeded, want an error")
			}
			if m != nil {
				t.Errorf("NewMTLS() returned an attestor along with error %v", err)
			}
			for _, want := range []string{"bundle", "revocation"} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not mention %q", err, want)
				}
			}
		})
	}
}

func TestMTLS(t *testing.T) {
	root := newRoot(t, "test root")
	inter := root.newIntermediate(t, "test intermediate")
	other := newRoot(t, "other root")
	bundle := x509bundle.FromX509Authorities(td, []*x509.Certificate{root.cert})

	leaf := root.issue(t, svidTemplate(t, fooID))
	viaInter := inter.issue(t, svidTemplate(t, fooID))
	foreign := other.issue(t, svidTemplate(t, fooID))
	noURI := root.issue(t, svidTemplate(t))
	otherTD := root.issue(t, svidTemplate(t, spiffeid.RequireFromPath(spiffeid.RequireTrustDomainFromString("other.org"), "/ns/foo/sa/bar")))
	caLeafTmpl := svidTemplate(t, fooID)
	caLeafTmpl.IsCA, caLeafTmpl.KeyUsage = true, x509.KeyUsageDigitalSignature|x509.KeyUsageCertSign
	caLeaf := root.issue(t, caLeafTmpl)

	during := t0.Add(30 * time.Minute)
	checkerErr := errors.New("revocation store unavailable")

	tests := []struct {
		name       string
		certs      []*x509.Certificate
		now        time.Time
		revocation error
		// wantErr is the sentinel the error must wrap; nil means success.
		wantErr error
		// notErr lists sentinels the error must not wrap.
		notErr      []error
		wantMsg     string
		wantChecked bool
	}{
		{
			name: "valid", certs: []*x509.Certificate{leaf}, now: during, wantChecked: true,
		},
		{
			name: "valid through an intermediate", certs: []*x509.Certificate{viaInter, inter.cert}, now: during, wantChecked: true,
		},
		{
			name: "valid at NotBefore", certs: []*x509.Certificate{leaf}, now: leaf.NotBefore, wantChecked: true,
		},
		{
			name: "valid at NotAfter", certs: []*x509.Certificate{leaf}, now: leaf.NotAfter, wantChecked: true,
		},
		{
			name: "no peer certificates", certs: nil, now: during,
			wantErr: attestor.ErrNoCredential,
		},
		{
			name: "empty peer certificates", certs: []*x509.Certificate{}, now: during,
			wantErr: attestor.ErrNoCredential,
		},
		{
			name: "expired", certs: []*x509.Certificate{leaf}, now: leaf.NotAfter.Add(time.Second),
			wantErr: attestor.ErrUnauthenticated, wantMsg: "expired at " + leaf.NotAfter.UTC().Format(time.RFC3339),
		},
		{
			name: "not yet valid", certs: []*x509.Certificate{leaf}, now: leaf.NotBefore.Add(-time.Second),
			wantErr: attestor.ErrUnauthenticated, wantMsg: "not valid before",
		},
		{
			name: "signed by another CA", certs: []*x509.Certificate{foreign}, now: during,
			wantErr: attestor.ErrUnauthenticated, wantMsg: "not a valid SVID",
		},
		{
			name: "intermediate missing from the chain", certs: []*x509.Certificate{viaInter}, now: during,
			wantErr: attestor.ErrUnauthenticated, wantMsg: "not a valid SVID",
		},
		{
			name: "leaf without URI SAN", certs: []*x509.Certificate{noURI}, now: during,
			wantErr: attestor.ErrUnauthenticated, wantMsg: "not a valid SVID",
		},
		{
			name: "leaf of an untrusted trust domain", certs: []*x509.Certificate{otherTD}, now: during,
			wantErr: attestor.ErrUnauthenticated, wantMsg: "not a valid SVID",
		},
		{
			name: "CA certificate as leaf", certs: []*x509.Certificate{caLeaf}, now: during,
			wantErr: attestor.ErrUnauthenticated, wantMsg: "not a valid SVID",
		},
		{
			name: "revoked", certs: []*x509.Certificate{leaf}, now: during,
			revocation: fmt.Errorf("%w: x", attestor.ErrRevoked),
			wantErr:    attestor.ErrPermissionDenied, notErr: []error{attestor.ErrUnauthenticated},
			wantMsg: "is revoked", wantChecked: true,
		},
		{
			name: "revocation check fails", certs: []*x509.Certificate{leaf}, now: during,
			revocation: checkerErr,
			wantErr:    checkerErr,
			notErr:     []error{attestor.ErrUnauthenticated, attestor.ErrPermissionDenied, attestor.ErrNoCredential},
			wantMsg:    fmt.Sprintf("%x", leaf.SerialNumber), wantChecked: true,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			revs := &fakeRevocations{err: tc.revocation}
			m, err := attestor.NewMTLS(attestor.MTLSConfig{Bundles: bundle, Revocations: revs, Clock: clocktest.New(tc.now)})
			if err != nil {
				t.Fatal(err)
			}
			got, err := m.Attest(context.Background(), attestor.Credential{PeerCertificates: tc.certs, Peer: "127.0.0.1:4242"})

			asked := revs.asked()
			if !tc.wantChecked && len(asked) != 0 {
				t.Errorf("revocation checker consulted %d times for a certificate that does not verify", len(asked))
			}
			if tc.wantChecked {
				if len(asked) != 1 {
					t.Fatalf("revocation checker consulted %d times, want 1", len(asked))
				}
				if asked[0].serial.Cmp(tc.certs[0].SerialNumber) != 0 || asked[0].id != fooID {
					t.Errorf("revocation checker asked about serial %x, %v; want %x, %v",
						asked[0].serial, asked[0].id, tc.certs[0].SerialNumber, fooID)
				}
				// The verified chain: what was presented, then the anchor.
				if asked[0].chainLen != len(tc.certs)+1 {
					t.Errorf("revocation checker got a chain of %d certificates, want the verified chain of %d", asked[0].chainLen, len(tc.certs)+1)
				}
			}

			if tc.wantErr == nil {
				if err != nil {
					t.Fatalf("Attest() error = %v", err)
				}
				wantSubject := "serial:" + tc.certs[0].SerialNumber.Text(16)
				if got.ID != fooID || got.Kind != "mtls" || got.Subject != wantSubject {
					t.Errorf("Attest() = {ID: %v, Kind: %q, Subject: %q}, want {ID: %v, Kind: %q, Subject: %q}",
						got.ID, got.Kind, got.Subject, fooID, "mtls", wantSubject)
				}
				return
			}
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("Attest() error = %v, want one wrapping %v", err, tc.wantErr)
			}
			for _, bad := range tc.notErr {
				if errors.Is(err, bad) {
					t.Errorf("Attest() error %v wraps %v", err, bad)
				}
			}
			if !strings.Contains(err.Error(), tc.wantMsg) {
				t.Errorf("Attest() error %q does not contain %q", err, tc.wantMsg)
			}
			if !got.ID.IsZero() {
				t.Errorf("Attest() returned identity %v along with error %v", got.ID, err)
			}
		})
	}
}

// A revoked SVID inside a Chain is not replaced by a valid bearer token
// presented alongside it.
func TestMTLSRevokedInChainIsNotBypassed(t *testing.T) {
	root := newRoot(t, "test root")
	leaf := root.issue(t, svidTemplate(t, fooID))
	m, err := attestor.NewMTLS(attestor.MTLSConfig{
		Bundles:     x509bundle.FromX509Authorities(td, []*x509.Certificate{root.cert}),
		Revocations: &fakeRevocations{err: fmt.Errorf("%w: key compromise", attestor.ErrRevoked)},
		Clock:       clocktest.New(t0.Add(time.Minute)),
	})
	if err != nil {
		t.Fatal(err)
	}
	const token = "dev"
	ch := attestor.Chain{m, attestor.NewStaticTokens(map[string]spiffeid.ID{token: fooID})}
	_, err = ch.Attest(context.Background(), attestor.Credential{PeerCertificates: []*x509.Certificate{leaf}, BearerToken: token})
	if !errors.Is(err, attestor.ErrPermissionDenied) {
		t.Fatalf("Chain.Attest() error = %v, want ErrPermissionDenied", err)
	}
}

// TestMTLSAdmit: a renewal that passes the certificate and revocation
// checks is put to Admit, with the verified identity; Admit's refusal is
// the renewal's, and an error of no known kind fails closed as unavailable.
// A revoked certificate is refused before Admit is asked.
func TestMTLSAdmit(t *testing.T) {
	root := newRoot(t, "test root")
	leaf := root.issue(t, svidTemplate(t, fooID))
	bundle := x509bundle.FromX509Authorities(td, []*x509.Certificate{root.cert})
	broken := errors.New("admission broke")
	tests := []struct {
		name       string
		revocation error
		admit      error
		wantErr    error
		wantMsg    string
		wantAsked  bool
	}{
		{name: "admitted", wantAsked: true},
		{name: "refused", admit: fmt.Errorf("%w: ServiceAccount foo/bar no longer exists", attestor.ErrPermissionDenied),
			wantErr: attestor.ErrPermissionDenied, wantMsg: "renewal of spiffe://example.org/ns/foo/sa/bar: attestor: permission denied: ServiceAccount foo/bar no longer exists", wantAsked: true},
		{name: "cannot tell", admit: fmt.Errorf("%w: apiserver down", attestor.ErrUnavailable),
			wantErr: attestor.ErrUnavailable, wantAsked: true},
		{name: "error of no known kind", admit: broken, wantErr: attestor.ErrUnavailable, wantMsg: "admission broke", wantAsked: true},
		{name: "revoked: not asked", revocation: fmt.Errorf("%w: x", attestor.ErrRevoked), wantErr: attestor.ErrPermissionDenied, wantMsg: "is revoked"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var asked []spiffeid.ID
			m, err := attestor.NewMTLS(attestor.MTLSConfig{
				Bundles: bundle, Revocations: &fakeRevocations{err: tc.revocation}, Clock: clocktest.New(t0.Add(time.Minute)),
				Admit: func(_ context.Context, id spiffeid.ID) error {
					asked = append(asked, id)
					return tc.admit
				},
			})
			if err != nil {
				t.Fatal(err)
			}
			got, err := m.Attest(context.Background(), attestor.Credential{PeerCertificates: []*x509.Certificate{leaf}})
			if tc.wantAsked != (len(asked) == 1) || (len(asked) == 1 && asked[0] != fooID) {
				t.Errorf("Admit asked about %v, want asked: %v (about %v)", asked, tc.wantAsked, fooID)
			}
			if tc.wantErr == nil {
				if err != nil || got.ID != fooID {
					t.Fatalf("Attest() = %v, %v; want %v", got.ID, err, fooID)
				}
				return
			}
			if !errors.Is(err, tc.wantErr) || !strings.Contains(err.Error(), tc.wantMsg) || !got.ID.IsZero() {
				t.Fatalf("Attest() = %v, %v; want an error wrapping %v containing %q", got.ID, err, tc.wantErr, tc.wantMsg)
			}
		})
	}
}
