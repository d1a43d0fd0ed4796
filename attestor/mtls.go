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

// Admit is the admission a renewal passes besides the certificate checks:
// whether id may still get certificates from this CA, as at first issuance
// (allow and deny lists, the ServiceAccount still existing, ...). It returns
// nil to admit, an error wrapping ErrPermissionDenied to refuse, and one
// wrapping ErrUnavailable when it cannot tell now (the caller retries).
type Admit func(ctx context.Context, id spiffeid.ID) error

// MTLSConfig configures MTLS.
type MTLSConfig struct {
	// Bundles holds the trust anchors a renewing SVID must chain to. Required.
	Bundles x509bundle.Source
	// Revocations is consulted for every presented certificate. Required.
	Revocations RevocationChecker
	// Admit is asked about every renewal that passed the certificate and
	// revocation checks. Nil admits them all: then only revocation stops
	// an identity from renewing for ever.
	Admit Admit
	// Clock defaults to the wall clock.
	Clock clock.Clock
}

// MTLS attests a workload renewing with the X.509-SVID it currently holds,
// presented as its TLS client certificate: the chain must verify against the
// trust bundle at the current time, the certificate must not be revoked
// (checked on every renewal, so revoking a join-token identity's SPIFFE ID
// ends its renewals), and the identity must pass the configured Admit.
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
	if m.cfg.Admit != nil {
		if err := m.cfg.Admit(ctx, id); err != nil {
			if !errors.Is(err, ErrPermissionDenied) && !errors.Is(err, ErrUnavailable) {
				// Fail closed on an admission that broke its contract.
				err = fmt.Errorf("%w: %w", ErrUnavailable, err)
			}
			return Identity{}, fmt.Errorf("attestor: renewal of %s: %w", id, err)
		}
	}
	return Identity{ID: id, Kind: KindMTLS, Subject: "serial:" + serial}, nil
}
