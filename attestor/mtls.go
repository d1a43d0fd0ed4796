package attestor

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"k8s.io/apimachinery/pkg/util/cache"

	"github.com/meshca/meshca/internal/clock"
)

// KindMTLS is the credential kind recorded for renewal with a current SVID.
const KindMTLS = "mtls"

// RevocationChecker reports whether a certificate may no longer be used.
type RevocationChecker interface {
	// CheckRevoked returns nil when chain (an SVID for id, verified: the
	// leaf first, then the CA certificates that verified it, up to the
	// trust anchor) is not revoked, an error wrapping ErrRevoked when it is
	// (the leaf, or a CA certificate in the chain), and any other error
	// when it cannot tell.
	CheckRevoked(ctx context.Context, chain []*x509.Certificate, id spiffeid.ID) error
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
	// VerifiedCacheSize bounds how many verified chains are remembered, so
	// a client renewing over a connection that TLS already verified does
	// not pay for a second chain verification on every request. Default
	// 10,000; negative disables the cache. Revocation and Admit are checked
	// on every request regardless.
	VerifiedCacheSize int
	// Clock defaults to the wall clock.
	Clock clock.Clock
}

// DefaultVerifiedCacheSize is MTLSConfig.VerifiedCacheSize's default.
const DefaultVerifiedCacheSize = 10_000

// MTLS attests a workload renewing with the X.509-SVID it currently holds,
// presented as its TLS client certificate: the chain must verify against the
// trust bundle at the current time, the certificate must not be revoked
// (checked on every renewal, so revoking a join-token identity's SPIFFE ID
// ends its renewals), and the identity must pass the configured Admit.
type MTLS struct {
	cfg      MTLSConfig
	verified *cache.LRUExpireCache // chainKey → verifiedChain; nil when disabled
}

// verifiedChain is a chain x509svid.Verify accepted, with the chain it
// verified through. It holds while the bundle that verified it is still the
// one served, and until the earliest NotAfter in the chain (the cache
// entry's expiry).
type verifiedChain struct {
	id       spiffeid.ID
	bundle   *x509bundle.Bundle
	verified []*x509.Certificate
}

// chainKey identifies a presented chain: the SHA-256 of its certificates'
// DER, one after the other (each DER encoding delimits itself).
func chainKey(chain []*x509.Certificate) [sha256.Size]byte {
	h := sha256.New()
	for _, c := range chain {
		h.Write(c.Raw)
	}
	var k [sha256.Size]byte
	h.Sum(k[:0])
	return k
}

// NewMTLS returns the renewal attestor.
func NewMTLS(cfg MTLSConfig) (*MTLS, error) {
	if cfg.Bundles == nil || cfg.Revocations == nil {
		return nil, errors.New("attestor: mTLS attestor needs a bundle source and a revocation checker")
	}
	cfg.Clock = clock.OrReal(cfg.Clock)
	if cfg.VerifiedCacheSize == 0 {
		cfg.VerifiedCacheSize = DefaultVerifiedCacheSize
	}
	m := &MTLS{cfg: cfg}
	if cfg.VerifiedCacheSize > 0 {
		m.verified = cache.NewLRUExpireCacheWithClock(cfg.VerifiedCacheSize, cfg.Clock)
	}
	return m, nil
}

// verify returns the SPIFFE ID of a chain valid at now against the current
// bundle, and the chain it verified through (leaf first, anchor last),
// verifying it only when it is not remembered from an earlier request with
// the same bundle.
func (m *MTLS) verify(chain []*x509.Certificate, now time.Time) (spiffeid.ID, []*x509.Certificate, error) {
	var key [sha256.Size]byte
	if m.verified != nil {
		key = chainKey(chain)
		if v, ok := m.verified.Get(key); ok {
			vc := v.(verifiedChain)
			if b, err := m.cfg.Bundles.GetX509BundleForTrustDomain(vc.id.TrustDomain()); err == nil && b == vc.bundle {
				return vc.id, vc.verified, nil
			}
			m.verified.Remove(key) // the bundle changed: verify again
		}
	}
	id, chains, err := x509svid.Verify(chain, m.cfg.Bundles, x509svid.WithTime(now))
	if err != nil {
		return id, nil, err
	}
	// Every verified chain has the same certificate above the leaf: the
	// one whose key signed it.
	verified := chains[0]
	if m.verified == nil {
		return id, verified, nil
	}
	b, err := m.cfg.Bundles.GetX509BundleForTrustDomain(id.TrustDomain())
	if err != nil {
		return id, verified, nil // verified, but nothing to remember it by
	}
	notAfter := chain[0].NotAfter
	for _, c := range chain[1:] {
		notAfter = earliest(notAfter, c.NotAfter)
	}
	if ttl := notAfter.Sub(now); ttl > 0 {
		m.verified.Add(key, verifiedChain{id: id, bundle: b, verified: verified}, ttl)
	}
	return id, verified, nil
}

func earliest(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
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
	id, verified, err := m.verify(c.PeerCertificates, now)
	if err != nil {
		return Identity{}, refuse(ErrUnauthenticated, "client certificate is not a valid SVID of a trusted domain: %v", err)
	}
	serial := fmt.Sprintf("%x", leaf.SerialNumber)
	if err := m.cfg.Revocations.CheckRevoked(ctx, verified, id); err != nil {
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
