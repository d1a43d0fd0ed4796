package ca

import (
	"context"
	"crypto/x509"
	"fmt"
	"math/big"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshca/meshca/attestor"
	"github.com/meshca/meshca/ca/store"
)

// CheckRevoked implements attestor.RevocationChecker: a certificate is
// revoked when its serial is on the deny-list, or its SPIFFE ID is and the
// certificate was issued at or before that revocation. Revoking a serial
// does not revoke certificates already renewed from it: to cut off a stolen
// key that may have renewed, revoke the SPIFFE ID.
func (a *Authority) CheckRevoked(ctx context.Context, cert *x509.Certificate, id spiffeid.ID) error {
	serial := cert.SerialNumber.Text(16)
	revs, err := a.cfg.Store.Revocations(ctx, serial, id.String())
	if err != nil {
		return err
	}
	for _, r := range revs {
		// NotBefore was backdated for clock skew: the certificate was
		// issued Backdate after it.
		issued := cert.NotBefore.Add(a.cfg.Backdate)
		if r.Serial == serial || (r.SPIFFEID == id.String() && !issued.After(r.RevokedAt)) {
			return fmt.Errorf("%w: %s", attestor.ErrRevoked, r.Reason)
		}
	}
	return nil
}

// Revoke puts a serial (hex, any case, leading zeros allowed) or a SPIFFE ID
// on the deny-list, in canonical form so that it matches.
func (a *Authority) Revoke(ctx context.Context, r store.Revocation) error {
	if r.Serial != "" {
		n, ok := new(big.Int).SetString(strings.TrimPrefix(strings.ToLower(strings.ReplaceAll(r.Serial, ":", "")), "0x"), 16)
		if !ok || n.Sign() <= 0 {
			return fmt.Errorf("ca: %w: serial %q is not a positive hex number", ErrInvalidRevocation, r.Serial)
		}
		r.Serial = n.Text(16)
	}
	if r.SPIFFEID != "" {
		id, err := spiffeid.FromString(r.SPIFFEID)
		if err != nil {
			return fmt.Errorf("ca: %w: %v", ErrInvalidRevocation, err)
		}
		r.SPIFFEID = id.String()
	}
	if r.RevokedAt.IsZero() {
		r.RevokedAt = a.cfg.Clock.Now()
	}
	return a.cfg.Store.Revoke(ctx, r)
}
