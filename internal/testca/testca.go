// Package testca is a small real CA (ECDSA P-256 root and intermediate)
// that issues SVIDs for tests of the agent's servers, and Istio's plug-in
// CA layout as Istio's tooling makes it (istio.go) for tests of the CA.
// Import it only from _test.go files.
//
// Keys are generated per call: a P-256 key takes tens of microseconds, so
// there is no pool of pre-generated keys to share.
package testca

import (
	"crypto"
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

	"github.com/meshca/meshca/ca/client"
	"github.com/meshca/meshca/sds"
)

// WorkloadID is the identity Issue certifies.
var WorkloadID = spiffeid.RequireFromString("spiffe://example.org/ns/foo/sa/bar")

// CA is a real root and intermediate (ECDSA P-256) that issue SVIDs. The
// root is valid from an hour before New to a day after, the intermediate to
// twelve hours after.
type CA struct {
	Root, Inter       *x509.Certificate
	RootKey, InterKey *ecdsa.PrivateKey
}

// New makes a CA with a new root and intermediate.
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

// Issue returns a new SVID for WorkloadID, valid around time.Now(), with a
// new key and serial each time.
func (ca *CA) Issue(t testing.TB, version uint64) *sds.SVID {
	t.Helper()
	key := NewKey(t)
	leaf, err := ca.SignLeaf(WorkloadID, &key.PublicKey, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return &sds.SVID{
		ID:           WorkloadID,
		Certificates: []*x509.Certificate{leaf, ca.Inter},
		Key:          key,
		Roots:        []*x509.Certificate{ca.Root},
		Version:      version,
	}
}

// SignLeaf signs an X509-SVID for id and pub with the intermediate, valid
// from a minute before now to an hour after. It returns an error instead of
// failing a test, so that a fake CA can call it from the goroutine of the
// code under test.
func (ca *CA) SignLeaf(id spiffeid.ID, pub crypto.PublicKey, now time.Time) (*x509.Certificate, error) {
	return sign(&x509.Certificate{
		NotBefore:   now.Add(-time.Minute),
		NotAfter:    now.Add(time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		URIs:        []*url.URL{id.URL()},
	}, ca.Inter, pub, ca.InterKey)
}

// NewKey returns a new ECDSA P-256 key.
func NewKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// NewCSR returns a new ECDSA P-256 key and a PEM CSR for id signed by it,
// as the CA's clients send it (ca/client.NewCSR).
func NewCSR(t testing.TB, id spiffeid.ID) (*ecdsa.PrivateKey, []byte) {
	t.Helper()
	key := NewKey(t)
	csr, err := client.NewCSR(key, id)
	if err != nil {
		t.Fatal(err)
	}
	return key, csr
}

// Sign signs tmpl for pub with key, as parent (self-signed when parent is
// nil), with a new random 128-bit serial.
func Sign(t testing.TB, tmpl, parent *x509.Certificate, pub any, key crypto.Signer) *x509.Certificate {
	t.Helper()
	c, err := sign(tmpl, parent, pub, key)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func sign(tmpl, parent *x509.Certificate, pub any, key crypto.Signer) (*x509.Certificate, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, err
	}
	tmpl.SerialNumber = serial
	if parent == nil {
		parent = tmpl
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, key)
	if err != nil {
		return nil, err
	}
	return x509.ParseCertificate(der)
}
