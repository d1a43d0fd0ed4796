// Package testca is a small real CA (ECDSA P-256 root and intermediate)
// that issues SVIDs for tests of the agent's servers. Import it only from
// _test.go files.
package testca

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net/url"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshca/meshca/sds"
)

// WorkloadID is the identity Issue certifies.
var WorkloadID = spiffeid.RequireFromString("spiffe://example.org/ns/foo/sa/bar")

// testCA is a real root and intermediate (ECDSA P-256) that issue SVIDs.
type CA struct {
	Root, Inter       *x509.Certificate
	RootKey, InterKey *ecdsa.PrivateKey
}

func New(t testing.TB) *CA {
	t.Helper()
	ca := &CA{RootKey: NewKey(t), InterKey: NewKey(t)}
	now := time.Now()
	ca.Root = Sign(t, &x509.Certificate{
		Subject:               pkix.Name{CommonName: "test root"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		URIs:                  []*url.URL{WorkloadID.TrustDomain().ID().URL()},
	}, nil, &ca.RootKey.PublicKey, ca.RootKey)
	ca.Inter = Sign(t, &x509.Certificate{
		Subject:               pkix.Name{CommonName: "test intermediate"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(12 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}, ca.Root, &ca.InterKey.PublicKey, ca.RootKey)
	return ca
}

// issue returns a new SVID for WorkloadID (a new key and serial each time).
func (ca *CA) Issue(t testing.TB, version uint64) *sds.SVID {
	t.Helper()
	key := NewKey(t)
	now := time.Now()
	leaf := Sign(t, &x509.Certificate{
		NotBefore:   now.Add(-time.Minute),
		NotAfter:    now.Add(time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		URIs:        []*url.URL{WorkloadID.URL()},
	}, ca.Inter, &key.PublicKey, ca.InterKey)
	return &sds.SVID{
		ID:           WorkloadID,
		Certificates: []*x509.Certificate{leaf, ca.Inter},
		Key:          key,
		Roots:        []*x509.Certificate{ca.Root},
		Version:      version,
	}
}

func NewKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func Sign(t testing.TB, tmpl, parent *x509.Certificate, pub any, key *ecdsa.PrivateKey) *x509.Certificate {
	t.Helper()
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		t.Fatal(err)
	}
	tmpl.SerialNumber = serial
	if parent == nil {
		parent = tmpl
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
