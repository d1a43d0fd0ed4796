// Package pki makes the certificates of the peer servers (the floor and
// Istio's CA server) and of their clients: a root, an intermediate that
// signs, a serving certificate for 127.0.0.1, client SVIDs, and pools of
// pre-generated P-256 CSRs, so that key generation in the clients is never
// measured as server work. The CA is written in Istio's cacerts layout.
package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"time"
)

// Files of a CA directory, in Istio's cacerts layout plus the serving pair.
const (
	RootCertFile   = "root-cert.pem"
	CACertFile     = "ca-cert.pem" // the intermediate that signs leaves
	CAKeyFile      = "ca-key.pem"
	CertChainFile  = "cert-chain.pem" // intermediate, root
	ServerCertFile = "server-cert.pem"
	ServerKeyFile  = "server-key.pem"
)

// ServerName is the DNS name in every serving certificate of the benchmark
// (meshca's default --dns-names too); the IP SAN is 127.0.0.1.
const ServerName = "localhost"

// CA is a root and the intermediate under it that signs.
type CA struct {
	Root, Inter       *x509.Certificate
	rootKey, InterKey *ecdsa.PrivateKey
}

// NewCA generates a root and an intermediate, both ECDSA P-256.
func NewCA() (*CA, error) {
	now := time.Now()
	rootKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	rootTmpl := &x509.Certificate{
		Subject:               pkix.Name{Organization: []string{"bench"}, CommonName: "bench root"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(10 * 365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	root, err := sign(rootTmpl, rootTmpl, &rootKey.PublicKey, rootKey)
	if err != nil {
		return nil, err
	}
	interKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	inter, err := sign(&x509.Certificate{
		Subject:               pkix.Name{Organization: []string{"bench"}, CommonName: "bench intermediate"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}, root, &interKey.PublicKey, rootKey)
	if err != nil {
		return nil, err
	}
	return &CA{Root: root, Inter: inter, rootKey: rootKey, InterKey: interKey}, nil
}

// sign issues tmpl (given a random 128-bit serial) signed by key as parent.
func sign(tmpl, parent *x509.Certificate, pub crypto.PublicKey, key crypto.Signer) (*x509.Certificate, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, err
	}
	tmpl.SerialNumber = serial
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, key)
	if err != nil {
		return nil, fmt.Errorf("pki: create certificate: %w", err)
	}
	return x509.ParseCertificate(der)
}

// leaf issues an end-entity certificate for key under the intermediate.
func (ca *CA) leaf(tmpl *x509.Certificate, key *ecdsa.PrivateKey) (*x509.Certificate, error) {
	now := time.Now()
	tmpl.NotBefore, tmpl.NotAfter = now.Add(-time.Minute), now.Add(30*24*time.Hour)
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
	tmpl.BasicConstraintsValid = true
	return sign(tmpl, ca.Inter, &key.PublicKey, ca.InterKey)
}

// ClientCert returns an SVID for the SPIFFE ID id, chained to the
// intermediate, ready to present in a TLS handshake.
func (ca *CA) ClientCert(id string) (tls.Certificate, error) {
	u, err := url.Parse(id)
	if err != nil {
		return tls.Certificate{}, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	cert, err := ca.leaf(&x509.Certificate{URIs: []*url.URL{u}}, key)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{cert.Raw, ca.Inter.Raw}, PrivateKey: key, Leaf: cert}, nil
}

// WriteFiles writes the CA (cacerts layout) and a serving certificate for
// ServerName and 127.0.0.1 into dir; private keys 0600.
func (ca *CA) WriteFiles(dir string) error {
	srvKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	srv, err := ca.leaf(&x509.Certificate{
		Subject:     pkix.Name{CommonName: ServerName},
		DNSNames:    []string{ServerName},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
	}, srvKey)
	if err != nil {
		return err
	}
	interKey, err := keyPEM(ca.InterKey)
	if err != nil {
		return err
	}
	srvKeyPEM, err := keyPEM(srvKey)
	if err != nil {
		return err
	}
	files := []struct {
		name string
		data []byte
		mode os.FileMode
	}{
		{RootCertFile, CertPEM(ca.Root), 0o644},
		{CACertFile, CertPEM(ca.Inter), 0o644},
		{CAKeyFile, interKey, 0o600},
		{CertChainFile, append(CertPEM(ca.Inter), CertPEM(ca.Root)...), 0o644},
		{ServerCertFile, append(CertPEM(srv), CertPEM(ca.Inter)...), 0o644},
		{ServerKeyFile, srvKeyPEM, 0o600},
	}
	for _, f := range files {
		if err := os.WriteFile(filepath.Join(dir, f.name), f.data, f.mode); err != nil {
			return err
		}
	}
	return nil
}

// CertPEM encodes c as one PEM block.
func CertPEM(c *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
}

func keyPEM(k *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// CSR is a pre-generated certificate signing request and its key.
type CSR struct {
	PEM []byte
	Key *ecdsa.PrivateKey
}

// NewCSR generates a P-256 key and a CSR carrying id as its one URI SAN,
// as meshca's agent and istio-agent make them.
func NewCSR(id string) (CSR, error) {
	u, err := url.Parse(id)
	if err != nil {
		return CSR{}, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return CSR{}, err
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{u}}, key)
	if err != nil {
		return CSR{}, err
	}
	return CSR{PEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), Key: key}, nil
}

// CSRPool returns perID CSRs for each of ids (pool[i] for ids[i]),
// generated on every core.
func CSRPool(ids []string, perID int) ([][]CSR, error) {
	pool := make([][]CSR, len(ids))
	for i := range pool {
		pool[i] = make([]CSR, perID)
	}
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		err1 error
		next = make(chan int)
	)
	for range runtime.NumCPU() {
		wg.Go(func() {
			for n := range next {
				i, j := n/perID, n%perID
				c, err := NewCSR(ids[i])
				if err != nil {
					mu.Lock()
					err1 = err
					mu.Unlock()
					continue
				}
				pool[i][j] = c
			}
		})
	}
	for n := range len(ids) * perID {
		next <- n
	}
	close(next)
	wg.Wait()
	return pool, err1
}
