package attestor

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/meshca/meshca/internal/clock"
)

// KindMTLS is the credential kind recorded for renewal with a current SVID.
const KindMTLS = "mtls"

// RevocationChecker reports whether a certificate may no longer be used.
type RevocationChecker interface {
	// CheckRevoked returns nil when cert (an SVID for id) is not revoked, an
	// error wrapping ErrRevoked when it is, and any other error when it cannot
	// tell.
	CheckRevoked(ctx context.Context, cert *x509.Certificate, id spiffeid.ID) error
}

// ErrRevoked is wrapped by RevocationChecker implementations for a revoked
// certificate.
var ErrRevoked = errors.New("attestor: certificate revoked")

// MTLSConfig configures MTLS.
type MTLSConfig struct {
	// Bundles holds the trust anchors a renewing SVID must chain to. Required.
	Bundles x509bundle.Source
	// Revocations is consulted for every presented certificate. Required.
	Revocations RevocationChecker
	// Clock defaults to the wall clock.
	Clock clock.Clock
}

// MTLS attests a workload renewing with the X.509-SVID it currently holds,
// presented as its TLS client certificate: the chain must verify against the
// trust bundle at the current time and the certificate must not be revoked.
type MTLS struct {
	cfg MTLSConfig
}

// NewMTLS returns the renewal attestor.
func NewMTLS(cfg MTLSConfig) (*MTLS, error) {
	if cfg.Bundles == nil || cfg.Revocations == nil {
		return nil, errors.New("attestor: mTLS attestor needs a bundle source and a revocation checker")
	}
	cfg.Clock = clock.OrReal(cfg.Clock)
	return &MTLS{cfg: cfg}, nil
}

// Attest implements Attestor.
func (m *MTLS) Attest(ctx context.Context, c Credential) (Identity, error) {
	if len(c.PeerCertificates) == 0 {
		return Identity{}, ErrNoCredential
	}
	leaf := c.PeerCertificates[0]
	now := m.cfg.Clock.Now()
	// Say plainly what is wrong with the commonest failures before the
	// generic chain verification.
	if now.After(leaf.NotAfter) {
		return Identity{}, refuse(ErrUnauthenticated, "client certificate expired at %s", leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	if now.Before(leaf.NotBefore) {
		return Identity{}, refuse(ErrUnauthenticated, "client certificate not valid before %s", leaf.NotBefore.UTC().Format(time.RFC3339))
	}
	id, _, err := x509svid.Verify(c.PeerCertificates, m.cfg.Bundles, x509svid.WithTime(now))
	if err != nil {
		return Identity{}, refuse(ErrUnauthenticated, "client certificate is not a valid SVID of a trusted domain: %v", err)
	}
	serial := fmt.Sprintf("%x", leaf.SerialNumber)
	if err := m.cfg.Revocations.CheckRevoked(ctx, leaf, id); err != nil {
		if errors.Is(err, ErrRevoked) {
			return Identity{}, refuse(ErrPermissionDenied, "client certificate %s for %s is revoked", serial, id)
		}
		return Identity{}, fmt.Errorf("attestor: checking revocation of %s: %w", serial, err)
	}
	return Identity{ID: id, Kind: KindMTLS, Subject: "serial:" + serial}, nil
}
