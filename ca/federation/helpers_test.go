package federation

import (
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshca/meshca/internal/testca"
)

// tdCA is a trust domain's root, which names the trust domain in its URI
// SAN as meshca's and SPIRE's roots do.
type tdCA struct {
	td   spiffeid.TrustDomain
	root *x509.Certificate
	key  *ecdsa.PrivateKey
}

func newTDCA(t testing.TB, name string) *tdCA {
	t.Helper()
	td := spiffeid.RequireTrustDomainFromString(name)
	key := testca.NewKey(t)
	now := time.Now()
	root := testca.Sign(t, &x509.Certificate{
		Subject:   pkix.Name{CommonName: name + " root"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
		URIs: []*url.URL{td.ID().URL()},
	}, nil, &key.PublicKey, key)
	return &tdCA{td: td, root: root, key: key}
}

// serverCert is a serving certificate for id (an X509-SVID) and
// 127.0.0.1, signed by the root.
func (c *tdCA) serverCert(t *testing.T, id spiffeid.ID) tls.Certificate {
	t.Helper()
	key := testca.NewKey(t)
	now := time.Now()
	leaf := testca.Sign(t, &x509.Certificate{
		NotBefore: now.Add(-time.Minute), NotAfter: now.Add(time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		URIs:        []*url.URL{id.URL()},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
	}, c.root, &key.PublicKey, c.key)
	return tls.Certificate{Certificate: [][]byte{leaf.Raw}, PrivateKey: key, Leaf: leaf}
}

// doc is a SPIFFE bundle document of td holding roots.
func doc(t testing.TB, td spiffeid.TrustDomain, hint time.Duration, seq uint64, roots ...*x509.Certificate) []byte {
	t.Helper()
	b := spiffebundle.FromX509Authorities(td, roots)
	b.SetRefreshHint(hint)
	b.SetSequenceNumber(seq)
	out, err := b.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// writeFile writes data to name in dir and returns its path.
func writeFile(t *testing.T, dir, name string, data []byte) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func certPEM(c *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
}

// endpoint is a bundle endpoint on 127.0.0.1 whose answer the test sets.
type endpoint struct {
	srv  *httptest.Server
	hits atomic.Int64

	mu     sync.Mutex
	status int
	body   []byte
}

// movedPath is where a redirect of the endpoint points: it answers the
// body with 200, so that a client following the redirect would succeed.
const movedPath = "/moved"

// newEndpoint serves over TLS with cert, or httptest's own certificate
// when cert is nil.
func newEndpoint(t *testing.T, cert *tls.Certificate) *endpoint {
	t.Helper()
	e := &endpoint{status: http.StatusOK}
	e.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		e.hits.Add(1)
		e.mu.Lock()
		status, body := e.status, e.body
		e.mu.Unlock()
		switch {
		case r.URL.Path == movedPath:
			status = http.StatusOK
		case status >= 300 && status < 400:
			w.Header().Set("Location", movedPath)
		}
		w.WriteHeader(status)
		_, _ = w.Write(body)
	}))
	if cert != nil {
		e.srv.TLS = &tls.Config{Certificates: []tls.Certificate{*cert}}
	}
	e.srv.StartTLS()
	t.Cleanup(e.srv.Close)
	return e
}

func (e *endpoint) set(status int, body []byte) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.status, e.body = status, body
}

// caFile writes the endpoint's httptest certificate as a PEM CA file.
func (e *endpoint) caFile(t *testing.T, dir string) string {
	t.Helper()
	return writeFile(t, dir, "endpoint-ca.pem", certPEM(e.srv.Certificate()))
}
