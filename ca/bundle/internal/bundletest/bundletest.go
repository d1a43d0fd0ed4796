// Package bundletest has the fakes the tests of package bundle's
// publishers share: a Source whose roots a test changes, real self-signed
// roots, a recording Metrics and a log buffer. Import it only from _test.go
// files.
package bundletest

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"log/slog"
	"math/big"
	"strings"
	"sync"
	"testing"
	"time"
)

// Source is a bundle.Source whose bundle Set changes.
type Source struct {
	mu  sync.Mutex
	pem []byte
}

// NewSource returns a Source holding pem.
func NewSource(pem []byte) *Source { return &Source{pem: pem} }

// RootsPEM implements bundle.Source.
func (s *Source) RootsPEM() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return bytes.Clone(s.pem)
}

// Set replaces the bundle.
func (s *Source) Set(pem []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pem = bytes.Clone(pem)
}

// Root returns a new self-signed CA certificate named cn, as PEM and
// parsed, valid from an hour ago for a day.
func Root(t testing.TB, cn string) ([]byte, *x509.Certificate) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), cert
}

// Logs collects what a logger writes, safely from several goroutines.
type Logs struct {
	mu sync.Mutex
	b  bytes.Buffer
}

// Logger returns a debug-level text logger writing to a new Logs.
func Logger() (*slog.Logger, *Logs) {
	l := &Logs{}
	return slog.New(slog.NewTextHandler(l, &slog.HandlerOptions{Level: slog.LevelDebug})), l
}

// Write implements io.Writer.
func (l *Logs) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// String returns everything written so far.
func (l *Logs) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// Metrics records what a publisher reports (bundle.Metrics).
type Metrics struct {
	mu        sync.Mutex
	published map[string]time.Time
	failed    map[string]int
	foreign   map[string]int
	sequence  uint64
}

// Published implements bundle.Metrics.
func (m *Metrics) Published(target string, t time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.published == nil {
		m.published = map[string]time.Time{}
	}
	m.published[target] = t
}

// Failed implements bundle.Metrics.
func (m *Metrics) Failed(target string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.failed == nil {
		m.failed = map[string]int{}
	}
	m.failed[target]++
}

// Foreign implements bundle.Metrics.
func (m *Metrics) Foreign(target string, n int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.foreign == nil {
		m.foreign = map[string]int{}
	}
	m.foreign[target] = n
}

// Sequence implements bundle.Metrics.
func (m *Metrics) Sequence(n uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.sequence = n
}

// LastPublished is the time last passed to Published for target.
func (m *Metrics) LastPublished(target string) time.Time {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.published[target]
}

// Failures counts the Failed calls for target.
func (m *Metrics) Failures(target string) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.failed[target]
}

// ForeignCount is the last value passed to Foreign for target.
func (m *Metrics) ForeignCount(target string) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.foreign[target]
}

// LastSequence is the last value passed to Sequence.
func (m *Metrics) LastSequence() uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.sequence
}

// PEM encodes certs as concatenated PEM certificates.
func PEM(certs ...*x509.Certificate) []byte {
	var out []byte
	for _, c := range certs {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return out
}

// Run runs run in a goroutine until the returned stop is called or t ends,
// and fails t if it returns an error.
func Run(t testing.TB, run func(context.Context) error) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := run(ctx); err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	stop = sync.OnceFunc(func() { cancel(); wg.Wait() })
	t.Cleanup(stop)
	return stop
}

// Unique returns prefix with a random suffix: a name of its own for each
// run of a test against a shared API server, which keeps its objects
// across runs (go test -count=N) and never finishes deleting a namespace
// (no controller-manager runs).
func Unique(prefix string) string {
	return prefix + "-" + strings.ToLower(rand.Text()[:6])
}
