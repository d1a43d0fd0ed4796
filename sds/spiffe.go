package sds

import (
	"errors"
	"fmt"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// SPIFFESource presents a Source as go-spiffe's x509svid.Source and
// x509bundle.Source, so the current SVID and bundle can drive go-spiffe's
// TLS configurations (spiffetls/tlsconfig), e.g. for SDS over TCP.
type SPIFFESource struct{ Source }

// GetX509SVID implements x509svid.Source.
func (s SPIFFESource) GetX509SVID() (*x509svid.SVID, error) {
	cur := s.Current()
	if cur == nil {
		return nil, errors.New("sds: no SVID yet")
	}
	return &x509svid.SVID{ID: cur.ID, Certificates: cur.Certificates, PrivateKey: cur.Key}, nil
}

// GetX509BundleForTrustDomain implements x509bundle.Source: the roots of
// the workload's trust domain, or a federated trust domain's.
func (s SPIFFESource) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	cur := s.Current()
	if cur == nil {
		return nil, errors.New("sds: no trust bundle yet")
	}
	if td == cur.ID.TrustDomain() {
		return x509bundle.FromX509Authorities(td, cur.Roots), nil
	}
	if b, ok := cur.Federated[td]; ok {
		return b.X509Bundle(), nil
	}
	return nil, fmt.Errorf("sds: no bundle for trust domain %q", td)
}
