package ca

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"sync"
	"time"
)

// pingEvery bounds how often Ready probes a store that failed a write.
const pingEvery = time.Second

// storeHealth remembers the last failed store write (a full disk, a
// read-only file system) so that readiness reports it, until a write
// succeeds again: the next issuance, or Ready's own probe.
type storeHealth struct {
	mu       sync.Mutex
	err      error
	lastPing time.Time
}

// observe records the outcome of a store write and returns err unchanged.
// A context error says nothing about the store.
func (h *storeHealth) observe(err error) error {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	h.mu.Lock()
	h.err = err
	h.mu.Unlock()
	return err
}

// Ready is the CA's readiness at now: the signing intermediate (in direct
// mode, the parent's chain) is valid, and the store can record (after a
// failed write, the store is probed with Ping at most once per second, so a
// CA taken out of service by its own readiness recovers without traffic
// when the disk has room again).
func (a *Authority) Ready(ctx context.Context) error {
	now := a.cfg.Clock.Now()
	switch sc := a.active.Load(); {
	case sc == nil:
		return errors.New("ca: no signing intermediate")
	case a.trust.Load().direct && !now.Before(sc.notAfter):
		return fmt.Errorf("ca: the CA certificate that signs leaves (%s) or its chain expired at %s: replace the cacerts files",
			sc.cert.Subject.CommonName, sc.notAfter.UTC().Format(time.RFC3339))
	case !now.Before(sc.notAfter):
		return errors.New("ca: signing intermediate expired")
	}
	h := &a.health
	h.mu.Lock()
	failed, probe := h.err, h.err != nil && now.Sub(h.lastPing) >= pingEvery
	if probe {
		h.lastPing = now
	}
	h.mu.Unlock()
	if failed == nil {
		return nil
	}
	if probe { // outside the lock: a slow disk must not stall other probes
		err := a.cfg.Store.Ping(ctx)
		if err == nil {
			a.cfg.Logger.Info("store records again after a failed write", "err_before", failed)
		}
		if !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) {
			h.mu.Lock()
			h.err = err
			h.mu.Unlock()
			failed = err
		}
		if err == nil {
			return nil
		}
	}
	return fmt.Errorf("ca: the store cannot record: %w", failed)
}

// maxExpiryWarning bounds how early Warnings speaks of an expiring CA
// certificate.
const maxExpiryWarning = 30 * 24 * time.Hour

// ExpiryWarningTime is when a CA certificate valid from notBefore to
// notAfter is close enough to its end to warn of it: in its last third, and
// at most 30 days before it. A ten-year root warns 30 days ahead, a 90-day
// certificate 30 days ahead (when cert-manager would renew it), a 7-day one
// 56 hours ahead.
func ExpiryWarningTime(notBefore, notAfter time.Time) time.Time {
	return notAfter.Add(-min(notAfter.Sub(notBefore)/3, maxExpiryWarning))
}

// Warnings lists what does not stop the CA from issuing now but needs an
// operator soon; /readyz shows them below "ok", and Run logs them daily.
// Today that is a certificate of the parent's chain (the plug-in
// ca-cert.pem that signs leaves in direct mode, a cacerts chain, the root)
// past its ExpiryWarningTime, or so close to its end that a leaf of the
// default lifetime is cut short to it: after it the CA issues nothing until
// the files are replaced; and a rotation step that failed (it is retried).
func (a *Authority) Warnings() []string {
	now := a.cfg.Clock.Now()
	var out []string
	if msg := a.lastErr.Load(); msg != nil {
		out = append(out, "a rotation step failed and is retried with backoff, at most a minute apart: "+*msg)
	}
	tr := a.trust.Load()
	parent := tr.parent
	certs := append([]*x509.Certificate{parent.Certificate()}, parent.Chain()...)
	for i, c := range append(certs, parent.Anchor()) {
		// Due at ExpiryWarningTime, or once a default leaf is cut short.
		due := earliest(ExpiryWarningTime(c.NotBefore, c.NotAfter), c.NotAfter.Add(-a.cfg.DefaultTTL))
		if (i > 0 && c.Equal(certs[0])) || now.Before(due) {
			continue // the parent again at the head of its chain, or not due
		}
		role := "the parent CA certificate"
		switch {
		case i == 0 && tr.direct:
			role = "the CA certificate that signs leaves"
		case c.Equal(parent.Anchor()):
			role = "the root"
		}
		out = append(out, fmt.Sprintf("%s %q expires at %s, in %s: certificates are cut short to it and none can be issued after it; replace it",
			role, c.Subject.CommonName, c.NotAfter.UTC().Format(time.RFC3339), c.NotAfter.Sub(now).Round(time.Minute)))
	}
	return out
}
