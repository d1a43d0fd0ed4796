package ca

import (
	"bytes"
	"cmp"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
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

// Rotate brings the CA up to date at the current time: it takes the root
// rotation's next step when due (see RotateRoot), makes an active
// intermediate if there is none usable, prepares the next one when due, and
// switches to it when due. State changes are saved atomically before they
// take effect. It is safe to call at any time. In direct mode there is no
// intermediate to rotate.
func (a *Authority) Rotate(ctx context.Context) error {
	a.rotateMu.Lock()
	defer a.rotateMu.Unlock()
	return a.update(ctx, nil)
}

// update loads the CA state, applies op to it (an operator's request; nil
// for none), then whatever is due at now: the root rotation's next step,
// the intermediates' rotation, forgetting revoked intermediates that have
// expired. A changed state is saved with compare-and-swap before it takes
// effect, so two writers never both advance: the one that loses gets
// store.ErrConflict and takes the winner's state at its next call. An
// error of op changes nothing. Callers hold rotateMu.
func (a *Authority) update(ctx context.Context, op func(st *store.CAState, now time.Time) error) error {
	st, err := a.cfg.Store.LoadCAState(ctx)
	switch {
	case errors.Is(err, store.ErrNotFound):
		st = &store.CAState{}
	case err != nil:
		return fmt.Errorf("ca: load CA state: %w", err)
	}
	before, err := json.Marshal(st)
	if err != nil {
		return err
	}
	now := a.cfg.Clock.Now()
	if a.cfg.Parent == nil && st.Root == nil {
		if st.Root, err = a.newRoot(ctx, now, false); err != nil {
			return err
		}
	}
	if op != nil {
		if err := op(st, now); err != nil {
			return err
		}
	}
	// A root step that cannot be taken now (the staged parent unreadable)
	// must not stop the intermediates' rotation: it is retried.
	var (
		staged  Parent
		stepErr error
	)
	// The leader takes scheduled steps; an operator's request takes the
	// step it asked for on whichever replica received it (the
	// compare-and-swap keeps that safe).
	if a.fenced(st) || op != nil {
		staged, stepErr = a.rootStep(ctx, st, now)
	}
	tr, err := a.trustFor(ctx, st, now, staged)
	if err != nil {
		return err
	}
	// A replica among several keeps its intermediates to itself: they are
	// brought up to date in a view of its own, and only their certificates
	// go into the shared state.
	slots := st
	if a.cfg.Replica != "" {
		slots = &store.CAState{Active: a.local.Active, Next: a.local.Next, RootRotation: st.RootRotation, RevokedIntermediates: st.RevokedIntermediates}
	}
	active, next, prepareErr, err := a.intermediates(ctx, slots, tr, now)
	if err != nil {
		return err
	}
	if a.cfg.Replica != "" {
		// Kept even if the save below fails: the retry records them
		// instead of asking the parent again.
		a.local.Active, a.local.Next = slots.Active, slots.Next
		recordReplica(st, a.cfg.Replica, slots, now)
	}
	jwt, err := a.rotateJWTKeys(st, now)
	if err != nil {
		return err
	}
	pruneRevoked(st, now)
	after, err := json.Marshal(st)
	if err != nil {
		return err
	}
	if !bytes.Equal(before, after) {
		_, err := a.cfg.Store.SaveCAState(ctx, st)
		if !errors.Is(err, store.ErrConflict) { // another writer, not a store failure
			_ = a.health.observe(err)
		}
		if err != nil {
			return fmt.Errorf("ca: save CA state: %w", err)
		}
		a.logChanges(before, st)
	}
	a.apply(tr, active, next, st)
	a.jwt.Store(jwt)
	if err := errors.Join(stepErr, prepareErr); err != nil {
		msg := err.Error()
		a.lastErr.Store(&msg)
		return &laterError{err}
	}
	a.lastErr.Store(nil)
	return nil
}

// fenced reports whether this replica may take scheduled steps on st: it
// leads, and no newer leader has written st. A leader's first update
// under a term raises st's fence to it.
func (a *Authority) fenced(st *store.CAState) bool {
	term, leading := a.leading()
	switch {
	case !leading:
		return false
	case st.LeaderFence > term:
		a.cfg.Logger.Warn("a newer leader has taken over: this replica takes no scheduled step", "term", term, "fence", st.LeaderFence)
		return false
	}
	st.LeaderFence = term
	return true
}

// leading is Config.Leader, or (0, true) for a replica alone.
func (a *Authority) leading() (uint64, bool) {
	if a.cfg.Leader == nil {
		return 0, true
	}
	return a.cfg.Leader()
}

// laterError is an update's error about a step that could not be taken
// now while the rest was saved and took effect: Run retries the step.
type laterError struct{ err error }

func (e *laterError) Error() string { return e.err.Error() }
func (e *laterError) Unwrap() error { return e.err }

// intermediates brings st's intermediates up to date at now under tr's
// parent and returns the signing CA and whether the next intermediate is
// prepared. A failure to prepare the next one is returned apart: the
// active one still works, and the caller retries later.
func (a *Authority) intermediates(ctx context.Context, st *store.CAState, tr *trust, now time.Time) (active *signingCA, next bool, prepareErr, err error) {
	if tr.direct {
		st.Active, st.Next = nil, nil
		if cur := a.active.Load(); cur != nil && cur.cert.Equal(tr.parent.Certificate()) {
			return cur, false, nil, nil
		}
		s, err := a.directSigningCA(tr)
		return s, false, nil, err
	}
	cross := crossRoot(st)
	revoked := revokedFrom(st.RevokedIntermediates)
	usable := func(k *store.CAKey) (*signingCA, bool) {
		if k == nil {
			return nil, false
		}
		s, err := a.signingCAFrom(k, tr.parent, cross)
		if err != nil {
			a.cfg.Logger.Warn("discarding stored intermediate", "err", err)
			return nil, false
		}
		if revoked.has(s.cert) { // an emergency rotation, perhaps on another replica
			return nil, false
		}
		// An intermediate is of no use once it cannot cover a default leaf.
		return s, now.Before(s.cert.NotAfter.Add(-a.cfg.DefaultTTL))
	}
	act, ok := usable(st.Active)
	if !ok {
		if act, err = a.newIntermediate(ctx, tr.parent, cross, now); err != nil {
			return nil, false, nil, err
		}
		if st.Active, err = a.sealed(act); err != nil {
			return nil, false, nil, err
		}
		st.Next = nil
	}
	nxt, ok := usable(st.Next)
	if st.Next != nil && !ok {
		st.Next, nxt = nil, nil
	}
	if nxt == nil && !now.Before(PrepareTime(act.cert)) {
		if nxt, prepareErr = a.newIntermediate(ctx, tr.parent, cross, now); prepareErr == nil {
			if st.Next, err = a.sealed(nxt); err != nil {
				return nil, false, nil, err
			}
		}
	}
	if nxt != nil && !now.Before(ActivateTime(act.cert)) {
		act, nxt = nxt, nil
		st.Active, st.Next = st.Next, nil
	}
	if prepareErr != nil {
		prepareErr = fmt.Errorf("ca: preparing the next intermediate: %w", prepareErr)
	}
	return act, nxt != nil, prepareErr, nil
}

// recordReplica writes replica's intermediates (in slots) into the shared
// state st, keeping the other replicas' records that have not expired, in
// a stable order (an unchanged state is not written again).
func recordReplica(st *store.CAState, replica string, slots *store.CAState, now time.Time) {
	since := map[string]time.Time{}
	var kept []store.ReplicaCA
	for _, r := range st.ReplicaIntermediates {
		if r.Replica == replica {
			since[string(r.CertDER)] = r.Since
			continue
		}
		if c, err := x509.ParseCertificate(r.CertDER); err == nil && now.Before(c.NotAfter) {
			kept = append(kept, r)
		}
	}
	for _, s := range []struct {
		state string
		k     *store.CAKey
	}{{"active", slots.Active}, {"next", slots.Next}} {
		if s.k == nil {
			continue
		}
		t, ok := since[string(s.k.CertDER)]
		if !ok {
			t = now
		}
		kept = append(kept, store.ReplicaCA{Replica: replica, State: s.state, CertDER: s.k.CertDER, Since: t})
	}
	slices.SortFunc(kept, func(x, y store.ReplicaCA) int {
		return cmp.Or(cmp.Compare(x.Replica, y.Replica), cmp.Compare(x.State, y.State))
	})
	st.ReplicaIntermediates = kept
}

// apply puts a saved state into effect: the trust first, so that a Sign
// that sees a new signing CA also sees the roots it chains to.
func (a *Authority) apply(tr *trust, active *signingCA, nextPrepared bool, st *store.CAState) {
	if cur := a.trust.Load(); cur != tr {
		a.trust.Store(tr)
		if cur != nil {
			close(cur.changed)
		}
	}
	if cur := a.active.Load(); cur != active { // a new intermediate, or the same with another chain
		a.active.Store(active)
		a.cfg.Metrics.SigningCAExpiry(active.notAfter)
	}
	a.nextPrepared.Store(nextPrepared)
	a.revoked.Store(revokedFrom(st.RevokedIntermediates))
	var at int64
	if t := rootStepTime(st.RootRotation); !t.IsZero() {
		at = t.UnixNano()
	}
	a.rootStepAt.Store(at)
}

// logChanges logs, at info, what a saved update changed, from the state as
// it was before (JSON) to st.
func (a *Authority) logChanges(before []byte, st *store.CAState) {
	var old store.CAState
	_ = json.Unmarshal(before, &old) // it was marshalled from a CAState
	if !bytes.Equal(keyCert(old.Active), keyCert(st.Active)) || (old.Next == nil) != (st.Next == nil) {
		attrs := []any{"next_prepared", st.Next != nil}
		if c, err := x509.ParseCertificate(keyCert(st.Active)); err == nil {
			attrs = append(attrs, "active_serial", c.SerialNumber.Text(16), "active_not_after", c.NotAfter)
		}
		a.cfg.Logger.Info("intermediate state updated", attrs...)
	}
	oa, on, or := jwtKeyIDs(old.JWTKeys)
	if na, nn, nr := jwtKeyIDs(st.JWTKeys); oa != na || on != nn || or != nr {
		a.cfg.Logger.Info("JWT signing keys updated", "active_kid", na, "next_kid", nn, "retired", nr)
	}
	a.logRootRotation(old.RootRotation, st.RootRotation)
}

func keyCert(k *store.CAKey) []byte {
	if k == nil {
		return nil
	}
	return k.CertDER
}

// NextRotation returns when Rotate next has work to do: the intermediate's
// next step, or the root rotation's when that is earlier; the zero Time
// when there is none (direct mode, no root rotation under way).
func (a *Authority) NextRotation() time.Time {
	var next time.Time
	if ns := a.rootStepAt.Load(); ns != 0 {
		if _, leading := a.leading(); leading { // a follower takes no step
			next = time.Unix(0, ns)
		}
	}
	tr, s := a.trust.Load(), a.active.Load()
	switch {
	case tr == nil || s == nil:
		return a.cfg.Clock.Now()
	}
	if j := a.jwt.Load(); j != nil && j.key != nil && (next.IsZero() || j.next.Before(next)) {
		next = j.next
	}
	if tr.direct {
		return next
	}
	inter := PrepareTime(s.cert)
	if a.nextPrepared.Load() {
		inter = ActivateTime(s.cert)
	}
	if next.IsZero() || inter.Before(next) {
		return inter
	}
	return next
}

// crossRoot is the old root that certifies new intermediates as well while
// a cross-signing root rotation is switched; nil otherwise.
func crossRoot(st *store.CAState) *store.CAKey {
	if rr := st.RootRotation; rr != nil && rr.Phase == store.PhaseSwitched && rr.CrossSign {
		return rr.OldRoot
	}
	return nil
}

// newIntermediate makes a fresh intermediate signed by the parent, and
// certified by the old root cross too when it is not nil.
func (a *Authority) newIntermediate(ctx context.Context, parent Parent, cross *store.CAKey, now time.Time) (*signingCA, error) {
	key, err := generateKey(a.cfg.KeyType)
	if err != nil {
		return nil, err
	}
	tmpl, err := caTemplate(a.cfg.TrustDomain, "meshca intermediate "+a.cfg.TrustDomain.Name(), key.Public(),
		now.Add(-a.cfg.Backdate), now.Add(a.cfg.IntermediateTTL), 0)
	if err != nil {
		return nil, err
	}
	if pnb := parent.Certificate().NotBefore; tmpl.NotBefore.Before(pnb) {
		tmpl.NotBefore = pnb
	}
	cert, err := parent.SignIntermediate(ctx, tmpl, key)
	if err != nil {
		return nil, fmt.Errorf("ca: %w: %w", ErrUnavailable, err)
	}
	if err := a.verifyIntermediate(cert, parent); err != nil {
		return nil, fmt.Errorf("ca: new intermediate: %w", err)
	}
	if life := cert.NotAfter.Sub(now); life < 2*a.cfg.DefaultTTL {
		// It would be replaced at once, and again at every update.
		return nil, fmt.Errorf("ca: the parent made the intermediate valid for %s only, not %s: it must cover twice --default-ttl (%s); raise the parent's limit (Vault: the mount's max_lease_ttl) or lower --intermediate-ttl",
			life.Round(time.Minute), a.cfg.IntermediateTTL, a.cfg.DefaultTTL)
	}
	a.cfg.Logger.Info("new intermediate", "serial", cert.SerialNumber.Text(16), "not_after", cert.NotAfter,
		"root_sha256", Fingerprint(parent.Anchor()))
	var twin *x509.Certificate
	if cross != nil {
		if twin, err = a.crossSign(ctx, cross, cert); err != nil {
			return nil, fmt.Errorf("ca: %w: cross-signing the intermediate with the old root: %w", ErrUnavailable, err)
		}
	}
	return a.newSigningCA(cert, key, cert.NotAfter, parent, twin), nil
}

// crossSign certifies the intermediate c (its subject and key) by the old
// root k as well, for clients that trust only the old root.
func (a *Authority) crossSign(ctx context.Context, k *store.CAKey, c *x509.Certificate) (*x509.Certificate, error) {
	root, key, err := a.openRoot(k)
	if err != nil {
		return nil, err
	}
	serial, err := newSerial(c.NotBefore)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{SerialNumber: serial, Subject: c.Subject, NotBefore: c.NotBefore, NotAfter: earliest(c.NotAfter, root.NotAfter),
		KeyUsage: c.KeyUsage, BasicConstraintsValid: true, IsCA: true, MaxPathLen: c.MaxPathLen, MaxPathLenZero: c.MaxPathLenZero,
		SubjectKeyId: c.SubjectKeyId, URIs: c.URIs}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, root, c.PublicKey, withContext(ctx, key))
	if err != nil {
		return nil, err
	}
	twin, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	a.cfg.Logger.Info("intermediate cross-signed by the old root", "serial", c.SerialNumber.Text(16),
		"cross_serial", twin.SerialNumber.Text(16), "old_root_sha256", Fingerprint(root))
	return twin, nil
}

// newSigningCA makes an intermediate under the parent (or, in direct mode,
// the parent's own certificate) ready to sign leaves valid until notAfter;
// cross, when not nil, is the intermediate certified by an old root too,
// handed out last.
func (a *Authority) newSigningCA(cert *x509.Certificate, key crypto.Signer, notAfter time.Time, parent Parent, cross *x509.Certificate) *signingCA {
	s := &signingCA{cert: cert, key: key, leaf: newLeafSigner(cert, key), notAfter: notAfter, cross: cross}
	chain := parent.Chain() // the parent, unless it is the anchor, and its chain
	if !cert.Equal(parent.Certificate()) {
		chain = append([]*x509.Certificate{cert}, chain...)
	}
	if cross != nil {
		chain = append(chain, cross)
	}
	for _, c := range chain {
		s.chainDER = append(s.chainDER, c.Raw)
		s.chainPEM = append(s.chainPEM, string(certPEM(c)))
	}
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

// directSigningCA makes tr's parent's own certificate and key the signing
// CA: direct mode, as istiod uses a plug-in ca-cert.pem.
func (a *Authority) directSigningCA(tr *trust) (*signingCA, error) {
	cert := tr.parent.Certificate()
	notAfter := parentNotAfter(tr.parent)
	s := a.newSigningCA(cert, leafKey(tr.parent), notAfter, tr.parent, nil)
	if err := a.probe(s, tr.bundle); err != nil {
		return nil, fmt.Errorf("ca: leaves signed by %q would not verify: %w", cert.Subject.CommonName, err)
	}
	a.cfg.Logger.Info("signing leaves directly with the parent CA certificate, as istiod does with a plug-in ca-cert.pem: no meshca intermediate, nothing to rotate",
		"subject", cert.Subject.String(), "serial", cert.SerialNumber.Text(16), "not_after", notAfter)
	return s, nil
}

// probe signs a throwaway X509-SVID in the trust domain with s, checks it
// with ValidateLeaf, and verifies it with go-spiffe against the bundle, as
// peers will: a parent whose own constraints (name constraints that exclude
// the trust domain) would make every leaf useless is refused at start, not
// at the first handshake.
func (a *Authority) probe(s *signingCA, bundle *x509bundle.Bundle) error {
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
	der, _, err := s.signLeaf(id, key.Public(), spki, latest(now.Add(-a.cfg.Backdate), s.cert.NotBefore).Truncate(time.Second),
		earliest(now.Add(MinLeafTTL), s.notAfter).Truncate(time.Second))
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
	_, _, err = x509svid.Verify(chain, bundle, x509svid.WithTime(now))
	return err
}

// signingCAFrom opens a stored intermediate and checks it still belongs to
// the current parent (the parent may have been replaced), and its
// cross-signed twin, if any, to the old root cross (nil: the twin is no
// longer handed out).
func (a *Authority) signingCAFrom(k *store.CAKey, parent Parent, cross *store.CAKey) (*signingCA, error) {
	var twinDER []byte
	if cross != nil {
		twinDER = k.CrossCertDER
	}
	if cur := a.active.Load(); cur != nil && bytes.Equal(cur.cert.Raw, k.CertDER) && bytes.Equal(rawOf(cur.cross), twinDER) &&
		cur.cert.CheckSignatureFrom(parent.Certificate()) == nil {
		return cur, nil // already open and checked
	}
	cert, key, err := a.openCAKey(k)
	if err != nil {
		return nil, err
	}
	if err := a.verifyIntermediate(cert, parent); err != nil {
		return nil, fmt.Errorf("ca: stored intermediate %s: %w", cert.SerialNumber.Text(16), err)
	}
	var twin *x509.Certificate
	if twinDER != nil {
		old, err := x509.ParseCertificate(cross.CertDER)
		if err != nil {
			return nil, err
		}
		if twin, err = x509.ParseCertificate(twinDER); err != nil {
			return nil, err
		}
		if twin.CheckSignatureFrom(old) != nil || !bytes.Equal(twin.RawSubjectPublicKeyInfo, cert.RawSubjectPublicKeyInfo) {
			return nil, fmt.Errorf("ca: stored intermediate %s: its cross-signed twin is not the old root's certificate of its key", cert.SerialNumber.Text(16))
		}
	}
	return a.newSigningCA(cert, key, cert.NotAfter, parent, twin), nil
}

func rawOf(c *x509.Certificate) []byte {
	if c == nil {
		return nil
	}
	return c.Raw
}

// verifyIntermediate checks that an intermediate chains through the current
// parent to a root now, path length constraints and validity included, so
// leaves signed by it will verify. It runs once per rotation or start.
func (a *Authority) verifyIntermediate(cert *x509.Certificate, parent Parent) error {
	if err := cert.CheckSignatureFrom(parent.Certificate()); err != nil {
		return errors.New("not signed by the current parent")
	}
	roots, inters := x509.NewCertPool(), x509.NewCertPool()
	for _, r := range parent.Roots() {
		roots.AddCert(r)
	}
	inters.AddCert(parent.Certificate())
	for _, c := range parent.Chain() {
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
	return &store.CAKey{CertDER: s.cert.Raw, Key: sealed, CrossCertDER: rawOf(s.cross)}, nil
}
