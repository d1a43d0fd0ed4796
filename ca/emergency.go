package ca

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"fmt"
	"time"

	"github.com/meshca/meshca/ca/store"
)

// RotateIntermediateNow is the emergency rotation for a suspected
// compromise of the signing intermediate's key, after SPIRE's taint and
// revoke: a fresh intermediate signs from now on, and the old one (and the
// next one, prepared with it in the same store) is revoked for renewal:
// CheckRevoked refuses every certificate whose verified chain goes through
// it, so its holders renew with their first-issuance credential (a
// Kubernetes token; a new join token outside Kubernetes). Peers still
// accept the certificates it signed until they expire: to stop that, rotate
// the root. It returns the revoked intermediate and the new one. In direct
// mode there is no intermediate, and it is refused with ErrRotation. With
// several replicas (Config.Replica), every replica's intermediates are
// revoked: each replaces its own at its next look at the shared state.
func (a *Authority) RotateIntermediateNow(ctx context.Context, reason string) (revoked, active *x509.Certificate, err error) {
	a.rotateMu.Lock()
	defer a.rotateMu.Unlock()
	err = a.update(ctx, func(st *store.CAState, now time.Time) error {
		held := st
		if a.cfg.Replica != "" {
			held = &a.local
		}
		if tr := a.trust.Load(); tr == nil || tr.direct || held.Active == nil {
			return fmt.Errorf("%w: no meshca intermediate signs leaves: the cacerts CA certificate does (direct mode); to replace it, rotate the root with a staged directory", ErrRotation)
		}
		var err error
		if revoked, err = x509.ParseCertificate(held.Active.CertDER); err != nil {
			return fmt.Errorf("ca: stored intermediate: %w", err)
		}
		ders := [][]byte{keyCert(held.Active), keyCert(held.Next)}
		for _, r := range st.ReplicaIntermediates {
			ders = append(ders, r.CertDER)
		}
		seen := map[string]bool{}
		for _, der := range ders {
			if der != nil && !seen[string(der)] {
				seen[string(der)] = true
				st.RevokedIntermediates = append(st.RevokedIntermediates, store.RevokedCA{CertDER: der, RevokedAt: now, Reason: reason})
			}
		}
		st.Active, st.Next = nil, nil // update makes a fresh one (a replica: its revoked ones are unusable)
		return nil
	})
	if err != nil && !isLater(err) {
		return nil, nil, err
	}
	active = a.SigningCertificate()
	a.cfg.Logger.Warn("emergency intermediate rotation: the old intermediate is revoked for renewal",
		"revoked_serial", revoked.SerialNumber.Text(16), "revoked_sha256", Fingerprint(revoked),
		"active_serial", active.SerialNumber.Text(16), "active_sha256", Fingerprint(active), "reason", reason)
	return revoked, active, nil
}

func isLater(err error) bool {
	_, ok := err.(*laterError)
	return ok
}

// revokedCAs are the intermediates revoked by emergency rotations, by the
// SHA-256 of their public key: the key is what is compromised.
type revokedCAs struct {
	byKey map[[sha256.Size]byte]store.RevokedCA
}

func revokedFrom(list []store.RevokedCA) *revokedCAs {
	r := &revokedCAs{byKey: make(map[[sha256.Size]byte]store.RevokedCA, len(list))}
	for _, rc := range list {
		if c, err := x509.ParseCertificate(rc.CertDER); err == nil {
			r.byKey[sha256.Sum256(c.RawSubjectPublicKeyInfo)] = rc
		}
	}
	return r
}

// has reports whether c's key is revoked.
func (r *revokedCAs) has(c *x509.Certificate) bool {
	_, ok := r.byKey[sha256.Sum256(c.RawSubjectPublicKeyInfo)]
	return ok
}

// check returns the revoked CA among the certificates of chain above its
// leaf, if any.
func (r *revokedCAs) check(chain []*x509.Certificate) (*x509.Certificate, store.RevokedCA, bool) {
	if len(r.byKey) == 0 {
		return nil, store.RevokedCA{}, false
	}
	for _, c := range chain[1:] {
		if rc, ok := r.byKey[sha256.Sum256(c.RawSubjectPublicKeyInfo)]; ok {
			return c, rc, true
		}
	}
	return nil, store.RevokedCA{}, false
}

// pruneRevoked forgets the revoked intermediates that have expired: no
// chain through them verifies any more.
func pruneRevoked(st *store.CAState, now time.Time) {
	kept := st.RevokedIntermediates[:0]
	for _, rc := range st.RevokedIntermediates {
		if c, err := x509.ParseCertificate(rc.CertDER); err != nil || now.Before(c.NotAfter) {
			kept = append(kept, rc)
		}
	}
	if len(kept) == 0 {
		kept = nil
	}
	st.RevokedIntermediates = kept
}
