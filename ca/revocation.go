package ca

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"math/big"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshca/meshca/attestor"
	"github.com/meshca/meshca/ca/store"
)

// revokes is the one rule for "is this certificate revoked": deny-list
// entry r covers a certificate with this serial, SPIFFE ID and NotBefore
// when it names the serial, or names the SPIFFE ID and the certificate was
// issued at or before the revocation. NotBefore was backdated for clock
// skew, so the certificate was issued Backdate after it. The issuance record
// carries the certificate's NotBefore, so the admin listing and the renewal
// check always agree. Revoking a serial does not revoke certificates
// already renewed from it: to cut off a stolen key that may have renewed,
// revoke the SPIFFE ID.
func (a *Authority) revokes(r store.Revocation, serial, id string, notBefore time.Time) bool {
	if r.Serial != "" {
		return r.Serial == serial
	}
	return r.SPIFFEID == id && !notBefore.Add(a.cfg.Backdate).After(r.RevokedAt)
}

// CheckRevoked implements attestor.RevocationChecker: chain (verified, the
// leaf first) is revoked when it goes through an intermediate revoked by
// RotateIntermediateNow, or when the deny-list revokes its leaf (the rule
// of revokes).
func (a *Authority) CheckRevoked(ctx context.Context, chain []*x509.Certificate, id spiffeid.ID) error {
	if len(chain) == 0 {
		return errors.New("ca: no certificate to check")
	}
	if c, rc, ok := a.revoked.Load().check(chain); ok {
		return fmt.Errorf("%w: signed under intermediate %s, revoked at %s by an emergency rotation (%s): renew with a fresh credential",
			attestor.ErrRevoked, c.SerialNumber.Text(16), stamp(rc.RevokedAt), rc.Reason)
	}
	cert := chain[0]
	serial := cert.SerialNumber.Text(16)
	revs, err := a.cfg.Store.Revocations(ctx, serial, id.String())
	if err != nil {
		return err
	}
	for _, r := range revs {
		if a.revokes(r, serial, id.String(), cert.NotBefore) {
			return fmt.Errorf("%w: %s", attestor.ErrRevoked, r.Reason)
		}
	}
	return nil
}

// IssuanceStatus is one issuance record and whether it is revoked.
type IssuanceStatus struct {
	store.Issuance
	Revoked bool
}

// Issuances lists the issuance log with each record's revocation status,
// read in one store call.
func (a *Authority) Issuances(ctx context.Context, f store.IssuanceFilter) ([]IssuanceStatus, error) {
	recs, err := a.cfg.Store.Issuances(ctx, f)
	if err != nil {
		return nil, fmt.Errorf("ca: list issuances: %w", err)
	}
	out := make([]IssuanceStatus, 0, len(recs))
	for _, rec := range recs {
		st := IssuanceStatus{Issuance: rec.Issuance}
		for _, r := range rec.Revocations {
			if a.revokes(r, rec.Serial, rec.SPIFFEID, rec.NotBefore) {
				st.Revoked = true
				break
			}
		}
		out = append(out, st)
	}
	return out, nil
}

// revocationExpiry is when no certificate that r covers can still be
// valid. Every certificate this CA issued is in the issuance log until
// Retention after it expires, so the log's NotAfter is exact; the bound
// from today's lifetimes (a leaf lives at most MaxTTL and never past its
// intermediate) covers a record the log no longer has, and settings that
// were longer when the certificate was issued are covered by the log.
func (a *Authority) revocationExpiry(ctx context.Context, r store.Revocation) (time.Time, error) {
	expires := r.RevokedAt.Add(max(a.cfg.MaxTTL, a.cfg.IntermediateTTL) + a.cfg.Backdate)
	if r.Serial != "" {
		rec, err := a.cfg.Store.Issuance(ctx, r.Serial)
		switch {
		case err == nil:
			return rec.NotAfter, nil
		case !errors.Is(err, store.ErrNotFound):
			return time.Time{}, fmt.Errorf("ca: revoke: %w", err)
		}
		return expires, nil
	}
	recs, err := a.cfg.Store.Issuances(ctx, store.IssuanceFilter{SPIFFEID: r.SPIFFEID})
	if err != nil {
		return time.Time{}, fmt.Errorf("ca: revoke: %w", err)
	}
	for _, rec := range recs {
		if a.revokes(r, rec.Serial, rec.SPIFFEID, rec.NotBefore) && rec.NotAfter.After(expires) {
			expires = rec.NotAfter
		}
	}
	return expires, nil
}

// Revoke puts a serial (hex, any case, leading zeros allowed) or a SPIFFE ID
// on the deny-list, in canonical form so that it matches, and returns the
// entry as stored. The entry expires, and is pruned, once no certificate it
// covers can still be valid (see revocationExpiry).
func (a *Authority) Revoke(ctx context.Context, r store.Revocation) (store.Revocation, error) {
	if (r.Serial == "") == (r.SPIFFEID == "") {
		return r, fmt.Errorf("ca: %w: give exactly one of a serial and a SPIFFE ID", ErrInvalidRevocation)
	}
	if r.Serial != "" {
		hexDigits := strings.TrimPrefix(strings.ToLower(strings.ReplaceAll(r.Serial, ":", "")), "0x")
		n, ok := new(big.Int).SetString(hexDigits, 16)
		// SetString also takes a sign and underscores; a serial is digits.
		if !ok || n.Sign() <= 0 || strings.ContainsAny(hexDigits, "+-_") {
			return r, fmt.Errorf("ca: %w: serial %q is not a positive hex number", ErrInvalidRevocation, r.Serial)
		}
		r.Serial = n.Text(16)
	}
	if r.SPIFFEID != "" {
		id, err := spiffeid.FromString(r.SPIFFEID)
		if err != nil {
			return r, fmt.Errorf("ca: %w: %v", ErrInvalidRevocation, err)
		}
		r.SPIFFEID = id.String()
	}
	if r.RevokedAt.IsZero() {
		r.RevokedAt = a.cfg.Clock.Now()
	}
	expires, err := a.revocationExpiry(ctx, r)
	if err != nil {
		return r, err
	}
	r.ExpiresAt = expires
	if err := a.cfg.Store.Revoke(ctx, r); err != nil {
		return r, fmt.Errorf("ca: revoke: %w", err)
	}
	return r, nil
}
