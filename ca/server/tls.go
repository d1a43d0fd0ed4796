package server

import (
	"crypto/tls"
	"crypto/x509"
	"net"
	"sync"
	"time"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/clock"
)

// servingCerts issues the server's TLS certificate from its own CA and
// replaces it at half its lifetime, on demand during handshakes.
type servingCerts struct {
	auth  *ca.Authority
	dns   []string
	ips   []net.IP
	ttl   time.Duration
	clock clock.Clock

	mu      sync.Mutex
	cur     *tls.Certificate
	renewAt time.Time
	// issuer is the signing CA that issued cur; a new one (rotation, root
	// rotation, emergency rotation) replaces cur at the next handshake.
	issuer *x509.Certificate
}

func (s *servingCerts) get(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.clock.Now()
	issuer := s.auth.SigningCertificate()
	if s.cur != nil && now.Before(s.renewAt) && issuer == s.issuer {
		return s.cur, nil
	}
	c, err := s.auth.IssueServing(s.dns, s.ips, s.ttl)
	if err != nil {
		if s.cur != nil && now.Before(s.cur.Leaf.NotAfter) {
			return s.cur, nil // keep serving the still-valid one
		}
		return nil, err
	}
	s.cur, s.issuer = c, issuer
	s.renewAt = c.Leaf.NotBefore.Add(c.Leaf.NotAfter.Sub(c.Leaf.NotBefore) / 2)
	return c, nil
}

// tlsConfig is the server side of the CSR API: TLS 1.2 or later, and a
// client certificate requested but not required. Its chain is verified by
// the mTLS attestor against the trust bundle, so an expired or revoked SVID
// gets a clear error instead of a failed handshake; the handshake itself
// proves the client holds the certificate's key.
func (s *servingCerts) tlsConfig() *tls.Config {
	return &tls.Config{
		MinVersion:     tls.VersionTLS12,
		GetCertificate: s.get,
		ClientAuth:     tls.RequestClientCert,
	}
}
