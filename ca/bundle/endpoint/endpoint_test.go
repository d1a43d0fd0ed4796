package endpoint_test

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/federation"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshca/meshca/ca/bundle"
	"github.com/meshca/meshca/ca/bundle/endpoint"
	"github.com/meshca/meshca/ca/bundle/internal/bundletest"
	"github.com/meshca/meshca/internal/clock/clocktest"
	"github.com/meshca/meshca/internal/testca"
)

var td = testca.WorkloadID.TrustDomain()

// issuer signs SVIDs with a testca CA, or fails while failing is set. An
// SVID is valid from a minute before the wall clock's time (the client
// verifies it with that) to an hour past the fake clock's, so that the
// server, on the fake clock, renews it halfway.
type issuer struct {
	ca  *testca.CA
	clk *clocktest.Fake

	mu      sync.Mutex
	calls   int
	failing bool
}

func (i *issuer) IssueSVID(_ context.Context, id spiffeid.ID, csrPEM []byte) ([]*x509.Certificate, error) {
	i.mu.Lock()
	defer i.mu.Unlock()
	i.calls++
	if i.failing {
		return nil, errors.New("CA unavailable")
	}
	block, _ := pem.Decode(csrPEM)
	if block == nil || block.Type != "CERTIFICATE REQUEST" {
		return nil, errors.New("not a PEM CSR")
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return nil, err
	}
	if len(csr.URIs) != 1 || csr.URIs[0].String() != id.String() {
		return nil, errors.New("CSR for another ID")
	}
	// testca.Sign would fail the test from the server's goroutine.
	der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber: big.NewInt(int64(i.calls)),
		NotBefore:    time.Now().Add(-time.Minute),
		NotAfter:     i.clk.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		URIs:         csr.URIs,
	}, i.ca.Inter, csr.PublicKey, i.ca.InterKey)
	if err != nil {
		return nil, err
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return []*x509.Certificate{leaf, i.ca.Inter}, nil
}

func (i *issuer) set(failing bool) (calls int) {
	i.mu.Lock()
	defer i.mu.Unlock()
	i.failing = failing
	return i.calls
}

func start(t *testing.T, cfg endpoint.Config) *endpoint.Server {
	t.Helper()
	cfg.Addr, cfg.TrustDomain = "127.0.0.1:0", td
	s, err := endpoint.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Shutdown(context.Background()) })
	return s
}

func url(s *endpoint.Server) string { return "https://" + s.Addr().String() + "/" }

// TestSPIFFEProfile: go-spiffe's federation client, authenticating the
// endpoint with SPIFFE auth, reads the bundle with its refresh hint and
// sequence; a change of the CA's roots raises the sequence; the SVID is
// renewed at half its lifetime, and a failed renewal keeps the current one.
func TestSPIFFEProfile(t *testing.T) {
	ca := testca.New(t)
	clk := clocktest.New(time.Now())
	iss := &issuer{ca: ca, clk: clk}
	src := bundletest.NewSource(bundletest.PEM(ca.Root))
	m := &bundletest.Metrics{}
	s := start(t, endpoint.Config{Source: src, Issuer: iss, Clock: clk, Metrics: m})

	endpointID := spiffeid.RequireFromPath(td, "/meshca/bundle-endpoint")
	trust := x509bundle.FromX509Authorities(td, []*x509.Certificate{ca.Root})
	fetch := func() *spiffebundle.Bundle {
		t.Helper()
		b, err := federation.FetchBundle(context.Background(), td, url(s), federation.WithSPIFFEAuth(trust, endpointID))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	b := fetch()
	if got := b.X509Authorities(); len(got) != 1 || !got[0].Equal(ca.Root) {
		t.Fatalf("authorities = %d certificates, want the root", len(got))
	}
	if hint, ok := b.RefreshHint(); !ok || hint != 5*time.Minute {
		t.Errorf("refresh hint = %v %v, want 5m", hint, ok)
	}
	seq, ok := b.SequenceNumber()
	if !ok || seq != uint64(clk.Now().Unix()) {
		t.Errorf("sequence = %d %v, want the Unix time %d", seq, ok, clk.Now().Unix())
	}
	if m.LastSequence() != seq {
		t.Errorf("metric sequence = %d, want %d", m.LastSequence(), seq)
	}

	// A new root beside the old (a rotation's first step).
	_, root2 := bundletest.Root(t, "next root")
	src.Set(bundletest.PEM(ca.Root, root2))
	b = fetch()
	if got := b.X509Authorities(); len(got) != 2 {
		t.Errorf("authorities = %d, want 2", len(got))
	}
	if seq2, _ := b.SequenceNumber(); seq2 != seq+1 {
		t.Errorf("sequence after a change = %d, want %d", seq2, seq+1)
	}
	if seq3, _ := fetch().SequenceNumber(); seq3 != seq+1 {
		t.Errorf("sequence without a change = %d, want %d", seq3, seq+1)
	}

	// Renewal: at 31 minutes of the SVID's 61 a new one is issued (valid
	// to 91 minutes); at 62 minutes a failing CA keeps the current one.
	calls := iss.set(false)
	clk.Advance(29 * time.Minute)
	fetch()
	if got := iss.set(false); got != calls {
		t.Errorf("issued %d times before half the lifetime, want %d", got, calls)
	}
	clk.Advance(2 * time.Minute)
	fetch()
	if got := iss.set(true); got != calls+1 {
		t.Errorf("issued %d times after half the lifetime, want %d", got, calls+1)
	}
	clk.Advance(31 * time.Minute)
	fetch() // the failing CA is asked; the current SVID, still valid, serves
	if got := iss.set(true); got != calls+2 {
		t.Errorf("issued %d times, want %d", got, calls+2)
	}
	fetch() // not asked again within a minute
	if got := iss.set(false); got != calls+2 {
		t.Errorf("a failed renewal was retried at once (%d calls)", got)
	}
}

// webCert writes a serving certificate for 127.0.0.1 signed by ca into
// certFile and keyFile (0600) and returns it.
func webCert(t *testing.T, ca *testca.CA, certFile, keyFile string) *x509.Certificate {
	t.Helper()
	key := testca.NewKey(t)
	leaf := testca.Sign(t, &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "bundle.example.org"},
		NotBefore:    time.Now().Add(-time.Minute),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
	}, ca.Root, &key.PublicKey, ca.RootKey)
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(certFile, bundletest.PEM(leaf), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return leaf
}

// startWeb starts an https_web endpoint serving webCert and returns it
// with a client trusting the web CA and making a new connection for each
// request.
func startWeb(t *testing.T, clk *clocktest.Fake) (s *endpoint.Server, web *testca.CA, certFile, keyFile string, roots *x509.CertPool) {
	t.Helper()
	web = testca.New(t)
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	webCert(t, web, certFile, keyFile)
	roots = x509.NewCertPool()
	roots.AddCert(web.Root)
	mesh := testca.New(t)
	s = start(t, endpoint.Config{Source: bundletest.NewSource(bundletest.PEM(mesh.Root)), Profile: bundle.ProfileWeb,
		CertFile: certFile, KeyFile: keyFile, Clock: clk, RefreshHint: time.Hour})
	return s, web, certFile, keyFile, roots
}

// TestWebProfile: go-spiffe's federation client with web PKI roots reads
// the bundle; new certificate files are served once the reload interval
// has passed; files that fail to load leave the current certificate.
func TestWebProfile(t *testing.T) {
	clk := clocktest.New(time.Now())
	s, web, certFile, keyFile, roots := startWeb(t, clk)
	served := func() *x509.Certificate {
		t.Helper()
		conn, err := tls.Dial("tcp", s.Addr().String(), &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12})
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		return conn.ConnectionState().PeerCertificates[0]
	}
	b, err := federation.FetchBundle(context.Background(), td, url(s), federation.WithWebPKIRoots(roots))
	if err != nil {
		t.Fatal(err)
	}
	if hint, _ := b.RefreshHint(); hint != time.Hour {
		t.Errorf("refresh hint = %v, want the configured 1h", hint)
	}
	first := served()

	next := webCert(t, web, certFile, keyFile)
	if !served().Equal(first) {
		t.Error("files read again before the reload interval")
	}
	clk.Advance(endpoint.DefaultReloadInterval)
	if got := served(); !got.Equal(next) {
		t.Error("new files not served after the reload interval")
	}
	if err := os.WriteFile(keyFile, []byte("half written"), 0o600); err != nil {
		t.Fatal(err)
	}
	clk.Advance(endpoint.DefaultReloadInterval)
	if got := served(); !got.Equal(next) {
		t.Error("a broken key file replaced the serving certificate")
	}
}

// TestBadRequests: only GET and HEAD of / are answered; other methods get
// 405, other paths 404, headers over 8 KiB 431.
func TestBadRequests(t *testing.T) {
	s, _, _, _, roots := startWeb(t, clocktest.New(time.Now()))
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}}}
	for _, tc := range []struct {
		name, method, path string
		header             string
		want               int
	}{
		{"get", http.MethodGet, "/", "", http.StatusOK},
		{"head", http.MethodHead, "/", "", http.StatusOK},
		{"post", http.MethodPost, "/", "", http.StatusMethodNotAllowed},
		{"put", http.MethodPut, "/", "", http.StatusMethodNotAllowed},
		{"delete", http.MethodDelete, "/", "", http.StatusMethodNotAllowed},
		{"other path", http.MethodGet, "/bundle", "", http.StatusNotFound},
		{"huge header", http.MethodGet, "/", strings.Repeat("x", 16<<10), http.StatusRequestHeaderFieldsTooLarge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, err := http.NewRequest(tc.method, "https://"+s.Addr().String()+tc.path, strings.NewReader("body"))
			if err != nil {
				t.Fatal(err)
			}
			if tc.header != "" {
				req.Header.Set("X-Junk", tc.header)
			}
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.want {
				t.Fatalf("status %d, want %d (%s)", resp.StatusCode, tc.want, body)
			}
			if tc.want == http.StatusOK && resp.Header.Get("Content-Type") != "application/json" {
				t.Errorf("Content-Type %q", resp.Header.Get("Content-Type"))
			}
			if tc.want == http.StatusMethodNotAllowed && !strings.Contains(resp.Header.Get("Allow"), "GET") {
				t.Errorf("Allow %q", resp.Header.Get("Allow"))
			}
		})
	}
}

// TestConfigErrors: a configuration that cannot serve is refused by New or
// Start with a message naming the problem.
func TestConfigErrors(t *testing.T) {
	ca := testca.New(t)
	src := bundletest.NewSource(bundletest.PEM(ca.Root))
	iss := &issuer{ca: ca, clk: clocktest.New(time.Now())}
	dir := t.TempDir()
	for _, tc := range []struct {
		name    string
		cfg     endpoint.Config
		atStart bool
		want    string
	}{
		{"no source", endpoint.Config{Issuer: iss}, false, "source are required"},
		{"unknown profile", endpoint.Config{Source: src, Profile: "http"}, false, `profile "http"`},
		{"spiffe without issuer", endpoint.Config{Source: src}, false, "needs an SVID issuer"},
		{"spiffe with files", endpoint.Config{Source: src, Issuer: iss, CertFile: "c", KeyFile: "k"}, false, "for the https_web profile"},
		{"spiffe ID of another trust domain", endpoint.Config{Source: src, Issuer: iss, ID: spiffeid.RequireFromString("spiffe://other.org/x")}, false, "not in trust domain"},
		{"web without key", endpoint.Config{Source: src, Profile: bundle.ProfileWeb, CertFile: "c"}, false, "needs a certificate file and a key file"},
		{"web with an ID", endpoint.Config{Source: src, Profile: bundle.ProfileWeb, CertFile: "c", KeyFile: "k", ID: testca.WorkloadID}, false, "for the https_spiffe profile"},
		{"web files missing", endpoint.Config{Source: src, Profile: bundle.ProfileWeb, CertFile: filepath.Join(dir, "c"), KeyFile: filepath.Join(dir, "k")}, true, "no such file"},
		{"spiffe issuer failing", endpoint.Config{Source: src, Issuer: &issuer{ca: ca, clk: iss.clk, failing: true}}, true, "CA unavailable"},
		{"bundle not PEM", endpoint.Config{Source: bundletest.NewSource([]byte("junk")), Issuer: iss}, true, "no PEM certificates"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.cfg.Addr, tc.cfg.TrustDomain = "127.0.0.1:0", td
			s, err := endpoint.New(tc.cfg)
			if err == nil {
				if !tc.atStart {
					t.Fatal("New accepted it")
				}
				err = s.Start()
				if err == nil {
					s.Shutdown(context.Background())
				}
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want %q", err, tc.want)
			}
		})
	}
}

// TestKeyFileMode: a key file others may read is refused.
func TestKeyFileMode(t *testing.T) {
	web := testca.New(t)
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	webCert(t, web, certFile, keyFile)
	if err := os.Chmod(keyFile, 0o644); err != nil {
		t.Fatal(err)
	}
	s, err := endpoint.New(endpoint.Config{Addr: "127.0.0.1:0", TrustDomain: td, Source: bundletest.NewSource(bundletest.PEM(web.Root)),
		Profile: bundle.ProfileWeb, CertFile: certFile, KeyFile: keyFile})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err == nil || !strings.Contains(err.Error(), "readable by others") {
		t.Fatalf("Start: %v, want the key file refused", err)
	}
}
