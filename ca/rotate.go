package ca

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/meshca/meshca/ca/store"
)

// PrepareTime is when the next intermediate is prepared: at 40 % of the
// active one's lifetime, so a parent that is briefly unavailable (Vault
// down) does not delay the rotation.
func PrepareTime(c *x509.Certificate) time.Time { return lifeFraction(c, 0.4) }

// ActivateTime is when the next intermediate takes over: at half the active
// one's lifetime, so every leaf it signed (at most MaxTTL, which defaults
// to under half its lifetime) expires before it does.
func ActivateTime(c *x509.Certificate) time.Time { return lifeFraction(c, 0.5) }

func lifeFraction(c *x509.Certificate, f float64) time.Time {
	life := c.NotAfter.Sub(c.NotBefore)
	return c.NotBefore.Add(time.Duration(float64(life) * f))
}

// Rotate brings the intermediates up to date at the current time: it makes
// an active one if there is none usable, prepares the next one when due,
// and switches to it when due. State changes are saved atomically before
// they take effect. It is safe to call at any time. In direct mode there
// is no intermediate, and it does nothing.
func (a *Authority) Rotate(ctx context.Context) error {
	if a.direct {
		return nil
	}
	a.rotateMu.Lock()
	defer a.rotateMu.Unlock()

	st, err := a.cfg.Store.LoadCAState(ctx)
	switch {
	case errors.Is(err, store.ErrNotFound):
		st = &store.CAState{}
	case err != nil:
		return fmt.Errorf("ca: load CA state: %w", err)
	}
	now := a.cfg.Clock.Now()
	usable := func(k *store.CAKey) (*signingCA, bool) {
		if k == nil {
			return nil, false
		}
		s, err := a.signingCAFrom(k)
		if err != nil {
			a.cfg.Logger.Warn("discarding stored intermediate", "err", err)
			return nil, false
		}
		// An intermediate is of no use once it cannot cover a default leaf.
		return s, now.Before(s.cert.NotAfter.Add(-a.cfg.DefaultTTL))
	}
	active, ok := usable(st.Active)
	changed := false
	if !ok {
		if active, err = a.newIntermediate(ctx, now); err != nil {
			return err
		}
		st.Next = nil
		changed = true
	}
	next, ok := usable(st.Next)
	if st.Next != nil && !ok {
		st.Next, next, changed = nil, nil, true
	}
	var prepareErr error
	if next == nil && !now.Before(PrepareTime(active.cert)) {
		if next, prepareErr = a.newIntermediate(ctx, now); prepareErr == nil {
			if st.Next, err = a.sealed(next); err != nil {
				return err
			}
			changed = true
		}
	}
	if next != nil && !now.Before(ActivateTime(active.cert)) {
		active, next = next, nil
		st.Active, st.Next, changed = st.Next, nil, true
	}
	// Store the active one if it is new.
	if st.Active == nil || !bytes.Equal(st.Active.CertDER, active.cert.Raw) {
		if st.Active, err = a.sealed(active); err != nil {
			return err
		}
		changed = true
	}
	if changed {
		if _, err := a.cfg.Store.SaveCAState(ctx, st); a.health.observe(err) != nil {
			return fmt.Errorf("ca: save CA state: %w", err)
		}
		a.cfg.Logger.Info("intermediate state updated", "active_serial", active.cert.SerialNumber.Text(16),
			"active_not_after", active.cert.NotAfter, "next_prepared", st.Next != nil)
	}
	if cur := a.active.Load(); cur == nil || !cur.cert.Equal(active.cert) {
		a.active.Store(active)
		a.cfg.Metrics.SigningCAExpiry(active.notAfter)
	}
	a.nextPrepared.Store(next != nil)
	if prepareErr != nil {
		// The active intermediate still works; the caller retries later.
		return fmt.Errorf("ca: preparing the next intermediate: %w", prepareErr)
	}
	return nil
}

// NextRotation returns when Rotate next has work to do; the zero Time in
// direct mode, where it never has.
func (a *Authority) NextRotation() time.Time {
	if a.direct {
		return time.Time{}
	}
	s := a.active.Load()
	if s == nil {
		return a.cfg.Clock.Now()
	}
	if a.nextPrepared.Load() {
		return ActivateTime(s.cert)
	}
	return PrepareTime(s.cert)
}

// newIntermediate makes a fresh intermediate signed by the parent.
func (a *Authority) newIntermediate(ctx context.Context, now time.Time) (*signingCA, error) {
	key, err := generateKey(a.cfg.KeyType)
	if err != nil {
		return nil, err
	}
	tmpl, err := caTemplate(a.cfg.TrustDomain, "meshca intermediate "+a.cfg.TrustDomain.Name(), key.Public(),
		now.Add(-a.cfg.Backdate), now.Add(a.cfg.IntermediateTTL), 0)
	if err != nil {
		return nil, err
	}
	if pnb := a.parent.Certificate().NotBefore; tmpl.NotBefore.Before(pnb) {
		tmpl.NotBefore = pnb
	}
	cert, err := a.parent.SignIntermediate(ctx, tmpl, key.Public())
	if err != nil {
		return nil, fmt.Errorf("ca: %w: %v", ErrUnavailable, err)
	}
	if err := a.verifyIntermediate(cert); err != nil {
		return nil, fmt.Errorf("ca: new intermediate: %w", err)
	}
	a.cfg.Logger.Info("new intermediate", "serial", cert.SerialNumber.Text(16), "not_after", cert.NotAfter)
	return a.newSigningCA(cert, key, cert.NotAfter), nil
}

// newSigningCA makes an intermediate under the parent (or, in direct mode,
// the parent's own certificate) ready to sign leaves valid until notAfter.
func (a *Authority) newSigningCA(cert *x509.Certificate, key crypto.Signer, notAfter time.Time) *signingCA {
	s := &signingCA{cert: cert, key: key, notAfter: notAfter}
	chain := a.parent.Chain() // the parent, unless it is the anchor, and its chain
	if !cert.Equal(a.parent.Certificate()) {
		chain = append([]*x509.Certificate{cert}, chain...)
	}
	for _, c := range chain {
		s.chainDER = append(s.chainDER, c.Raw)
		s.chainPEM = append(s.chainPEM, string(certPEM(c)))
	}
	s.chainPEM = append(s.chainPEM, string(certPEM(a.parent.Anchor())))
	return s
}

// leafKey is the key that signs leaves when p signs them directly, else
// nil.
func leafKey(p Parent) crypto.Signer {
	if dp, ok := p.(directParent); ok {
		return dp.leafKey()
	}
	return nil
}

// startDirect makes the parent's own certificate and key, key, the signing
// CA for good: direct mode, as istiod uses a plug-in ca-cert.pem.
func (a *Authority) startDirect(key crypto.Signer) error {
	a.direct = true
	cert := a.parent.Certificate()
	notAfter := parentNotAfter(a.parent)
	s := a.newSigningCA(cert, key, notAfter)
	if err := a.probe(s); err != nil {
		return fmt.Errorf("ca: leaves signed by %q would not verify: %w", cert.Subject.CommonName, err)
	}
	a.active.Store(s)
	a.cfg.Metrics.SigningCAExpiry(notAfter)
	a.cfg.Logger.Info("signing leaves directly with the parent CA certificate, as istiod does with a plug-in ca-cert.pem: no meshca intermediate, nothing to rotate",
		"subject", cert.Subject.String(), "serial", cert.SerialNumber.Text(16), "not_after", notAfter)
	return nil
}

// probe signs a throwaway X509-SVID in the trust domain with s, checks it
// with ValidateLeaf, and verifies it with go-spiffe against the bundle, as
// peers will: a parent whose own constraints (name constraints that exclude
// the trust domain) would make every leaf useless is refused at start, not
// at the first handshake.
func (a *Authority) probe(s *signingCA) error {
	key, err := generateKey(KeyECDSAP256)
	if err != nil {
		return err
	}
	spki, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		return err
	}
	id, err := spiffeid.FromSegments(a.cfg.TrustDomain, "meshca", "start-up-probe")
	if err != nil {
		return err
	}
	now := a.cfg.Clock.Now()
	tmpl, err := leafTemplate(id, key.Public(), spki, latest(now.Add(-a.cfg.Backdate), s.cert.NotBefore).Truncate(time.Second),
		earliest(now.Add(MinLeafTTL), s.notAfter).Truncate(time.Second))
	if err != nil {
		return err
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, s.cert, key.Public(), s.key)
	if err != nil {
		return err
	}
	if err := ValidateLeaf(der, s.cert, id, spki, now); err != nil {
		return err
	}
	chain := make([]*x509.Certificate, 0, 1+len(s.chainDER))
	for _, d := range append([][]byte{der}, s.chainDER...) {
		c, err := x509.ParseCertificate(d)
		if err != nil {
			return err
		}
		chain = append(chain, c)
	}
	_, _, err = x509svid.Verify(chain, a.bundle, x509svid.WithTime(now))
	return err
}

// signingCAFrom opens a stored intermediate and checks it still belongs to
// the current parent (the parent may have been replaced).
func (a *Authority) signingCAFrom(k *store.CAKey) (*signingCA, error) {
	cert, key, err := a.openCAKey(k)
	if err != nil {
		return nil, err
	}
	if err := a.verifyIntermediate(cert); err != nil {
		return nil, fmt.Errorf("ca: stored intermediate %s: %w", cert.SerialNumber.Text(16), err)
	}
	return a.newSigningCA(cert, key, cert.NotAfter), nil
}

// verifyIntermediate checks that an intermediate chains through the current
// parent to a root now, path length constraints and validity included, so
// leaves signed by it will verify. It runs once per rotation or start.
func (a *Authority) verifyIntermediate(cert *x509.Certificate) error {
	if err := cert.CheckSignatureFrom(a.parent.Certificate()); err != nil {
		return errors.New("not signed by the current parent")
	}
	roots, inters := x509.NewCertPool(), x509.NewCertPool()
	for _, r := range a.parent.Roots() {
		roots.AddCert(r)
	}
	inters.AddCert(a.parent.Certificate())
	for _, c := range a.parent.Chain() {
		inters.AddCert(c)
	}
	_, err := cert.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inters, CurrentTime: a.cfg.Clock.Now(),
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	if err != nil {
		return fmt.Errorf("does not chain to the root: %w", err)
	}
	return nil
}

func (a *Authority) sealed(s *signingCA) (*store.CAKey, error) {
	sealed, err := a.sealer.seal(s.key)
	if err != nil {
		return nil, err
	}
	return &store.CAKey{CertDER: s.cert.Raw, Key: sealed}, nil
}
