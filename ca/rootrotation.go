package ca

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"

	"github.com/meshca/meshca/ca/store"
)

// A root rotation replaces the root without downtime, in three steps kept
// in store.CAState.RootRotation (so a restart resumes it) and taken by
// Rotate on the injected clock:
//
//  1. prepared (RotateRoot start): the new root is published in the bundle
//     beside the old one; intermediates are still signed by the old root.
//     Workloads receive both roots with their next certificate.
//  2. switched, RootRotationOverlap later (one renewal period by default,
//     so every workload holds both roots): a new intermediate under the new
//     root signs from now on; the old root stays trusted.
//  3. completed, once the last leaf chained to the old root has expired
//     (found in the issuance log): the old root leaves the bundle.
//
// For the self-signed root, the new root is generated at step 1; for a
// staged parent (Config.NextParent: an Istio cacerts directory under the
// new root) it is loaded at step 1 and again at step 2.

// switchGrace is how long after the switch the issuance log is read for
// the last leaf under the old roots: requests that took the old signing CA
// just before the switch have been recorded by then.
const switchGrace = 5 * time.Minute

// retirePage is how many issuance records retireTime reads at once.
const retirePage = 10_000

// ParentLoader loads a parent staged for a root rotation at time now.
type ParentLoader func(ctx context.Context, now time.Time) (Parent, error)

// StagedCACerts is the ParentLoader of an Istio cacerts directory staged
// for a root rotation (`meshca server --cacerts-next-dir`), read with
// LoadCACerts each time it is needed.
func StagedCACerts(dir string, o CACertsOptions) ParentLoader {
	return func(_ context.Context, now time.Time) (Parent, error) { return LoadCACerts(dir, now, o) }
}

// Root rotation actions (RootRotationRequest.Action).
const (
	RootRotationStart   = "start"
	RootRotationAdvance = "advance"
	RootRotationAbort   = "abort"
)

// RootRotationRequest is an operator's request about the root rotation.
type RootRotationRequest struct {
	// Action is RootRotationStart, RootRotationAdvance or RootRotationAbort.
	Action string
	// Phase is the phase an advance leaves (store.PhasePrepared or
	// store.PhaseSwitched): it must be the current one, so that a request
	// sent twice does not take two steps.
	Phase string
}

// RotateRoot starts, advances or aborts a root rotation and returns what
// it did, for the operator. Start is idempotent: while a rotation is
// prepared it does nothing and says so; while one is switched it is
// refused. Advance takes the current phase's step now instead of when it is
// due; abort drops a prepared rotation's new root. Requests that do not fit
// the rotation's state are refused with ErrRotation.
func (a *Authority) RotateRoot(ctx context.Context, req RootRotationRequest) (string, error) {
	a.rotateMu.Lock()
	defer a.rotateMu.Unlock()
	var (
		msg   string
		final *store.CAState
	)
	err := a.update(ctx, func(st *store.CAState, now time.Time) (err error) {
		final = st
		switch req.Action {
		case RootRotationStart:
			msg, err = a.startRootRotation(ctx, st, now)
		case RootRotationAdvance:
			msg, err = advanceRootRotation(st, req.Phase, now)
		case RootRotationAbort:
			msg, err = abortRootRotation(st)
		default:
			err = fmt.Errorf("%w: unknown action %q: want start, advance or abort", ErrRotation, req.Action)
		}
		return err
	})
	var later *laterError
	switch {
	case !errors.As(err, &later):
		return msg, err
	case req.Action == RootRotationAdvance && final.RootRotation != nil && final.RootRotation.Phase == req.Phase:
		return "", fmt.Errorf("%w: the step is due now but failed, and is retried with backoff, at most a minute apart: %v", ErrRotation, later.err)
	}
	// The request was saved; a step after it (preparing the next
	// intermediate) failed and is retried.
	a.cfg.Logger.Warn("root rotation request done, but a later step failed", "err", err)
	return msg, nil
}

func (a *Authority) startRootRotation(ctx context.Context, st *store.CAState, now time.Time) (string, error) {
	if rr := st.RootRotation; rr != nil {
		switch rr.Phase {
		case store.PhasePrepared:
			return fmt.Sprintf("a root rotation is already prepared (since %s): nothing done; intermediates switch to the new root at %s",
				stamp(rr.PreparedAt), stamp(rr.SwitchAfter)), nil
		case store.PhaseSwitched:
			return "", fmt.Errorf("%w: a root rotation is in progress: intermediates switched to the new root at %s and the old root is still trusted; wait for it to complete, or complete it now with advance from phase switched",
				ErrRotation, stamp(rr.SwitchedAt))
		}
	}
	tr := a.trust.Load()
	if tr == nil {
		return "", fmt.Errorf("%w: the CA is not started", ErrRotation)
	}
	rr := &store.RootRotation{Phase: store.PhasePrepared, OldRoots: certsDER(tr.bundle.X509Authorities()),
		PreparedAt: now, SwitchAfter: now.Add(a.cfg.RootRotationOverlap)}
	rr.CrossSign = a.cfg.RootRotationCrossSign // refused with a parent by New
	switch {
	case a.cfg.Parent == nil:
		k, err := a.newRoot(ctx, now, true)
		if err != nil {
			return "", err
		}
		rr.NewRoot, rr.NewRoots = k, [][]byte{k.CertDER}
	case a.cfg.NextParent == nil:
		return "", fmt.Errorf("%w: the root lives in files (--cacerts-dir) and no new one is staged: put the new root's cacerts files in a second directory and give it as --cacerts-next-dir", ErrRotation)
	default:
		p, err := a.cfg.NextParent(ctx, now)
		if err != nil {
			a.cfg.Logger.Error("root rotation: the staged parent cannot be used", "err", err)
			return "", fmt.Errorf("%w: the staged parent (--cacerts-next-dir) cannot be used: the server log says why", ErrRotation)
		}
		if slices.ContainsFunc(tr.bundle.X509Authorities(), p.Anchor().Equal) {
			return "", fmt.Errorf("%w: the staged parent chains to a root already trusted (sha256 %s): stage a CA certificate under the new root", ErrRotation, Fingerprint(p.Anchor()))
		}
		rr.NewRoots = certsDER(p.Roots())
	}
	st.RootRotation = rr
	return fmt.Sprintf("prepared: new root published beside the old one; intermediates switch to it at %s, after every workload has renewed once", stamp(rr.SwitchAfter)), nil
}

func advanceRootRotation(st *store.CAState, phase string, now time.Time) (string, error) {
	rr := st.RootRotation
	switch {
	case phase != store.PhasePrepared && phase != store.PhaseSwitched:
		return "", fmt.Errorf("%w: advance needs the phase to leave: prepared or switched, not %q", ErrRotation, phase)
	case rr == nil || rr.Phase == store.PhaseCompleted:
		return "", fmt.Errorf("%w: no root rotation is in progress: nothing to advance", ErrRotation)
	case rr.Phase != phase:
		return "", fmt.Errorf("%w: the root rotation is in phase %s, not %s: nothing done", ErrRotation, rr.Phase, phase)
	case phase == store.PhasePrepared:
		rr.SwitchAfter = now
		return "switched now, ahead of time: workloads that have not renewed since the new root was published do not trust it yet", nil
	}
	rr.RetireAfter = now
	return "completed now, ahead of time: the old root is no longer trusted, and certificates still valid under it fail where the bundle is updated", nil
}

func abortRootRotation(st *store.CAState) (string, error) {
	rr := st.RootRotation
	switch {
	case rr == nil || rr.Phase == store.PhaseCompleted:
		return "", fmt.Errorf("%w: no root rotation is in progress: nothing to abort", ErrRotation)
	case rr.Phase != store.PhasePrepared:
		return "", fmt.Errorf("%w: the root rotation switched at %s and leaves already chain to the new root: it can no longer be aborted; let it complete", ErrRotation, stamp(rr.SwitchedAt))
	}
	st.RootRotation = nil
	return "aborted: the new root is no longer published; nothing chained to it", nil
}

// rootStep takes the root rotation's step that is due at now, if any. A
// switch to a staged parent returns that parent, loaded and checked.
func (a *Authority) rootStep(ctx context.Context, st *store.CAState, now time.Time) (Parent, error) {
	rr := st.RootRotation
	if rr == nil {
		return nil, nil
	}
	switch rr.Phase {
	case store.PhasePrepared:
		if now.Before(rr.SwitchAfter) {
			return nil, nil
		}
		return a.switchRoot(ctx, st, now)
	case store.PhaseSwitched:
		if rr.RetireAfter.IsZero() {
			if now.Before(rr.SwitchedAt.Add(switchGrace)) {
				return nil, nil
			}
			t, err := a.retireTime(ctx, rr)
			if err != nil {
				return nil, fmt.Errorf("ca: root rotation: finding the last leaf under the old root: %w", err)
			}
			rr.RetireAfter = t
		}
		if !now.Before(rr.RetireAfter) {
			rr.Phase, rr.CompletedAt = store.PhaseCompleted, now
			// The old root is no longer trusted: it certifies nothing
			// more, and its key is dropped.
			rr.OldRoot = nil
			for _, k := range []*store.CAKey{st.Active, st.Next} {
				if k != nil {
					k.CrossCertDER = nil
				}
			}
		}
	}
	return nil, nil
}

// switchRoot makes the new root's parent the one that signs: the next
// update makes a fresh intermediate under it. The old signing key is
// dropped.
func (a *Authority) switchRoot(ctx context.Context, st *store.CAState, now time.Time) (Parent, error) {
	rr := st.RootRotation
	var staged Parent
	switch {
	case rr.NewRoot != nil && a.cfg.Parent != nil:
		return nil, errors.New("ca: root rotation: the new root is self-signed but the CA now runs on a cacerts directory: abort the rotation")
	case rr.NewRoot != nil:
		if rr.CrossSign {
			rr.OldRoot = st.Root
		}
		st.Root, rr.NewRoot = rr.NewRoot, nil
	case a.cfg.NextParent == nil:
		return nil, errors.New("ca: root rotation: cannot switch: no staged parent (--cacerts-next-dir) is configured")
	default:
		p, err := a.cfg.NextParent(ctx, now)
		if err != nil {
			return nil, fmt.Errorf("ca: root rotation: cannot switch: the staged parent: %w", err)
		}
		if !hasRoot(rr.NewRoots, p.Anchor()) {
			return nil, fmt.Errorf("ca: root rotation: cannot switch: the staged parent chains to root sha256 %s, not to the one published: stage those files again, or abort the rotation", Fingerprint(p.Anchor()))
		}
		staged = p
	}
	if cur := a.active.Load(); cur != nil {
		rr.OldSigner = cur.cert.Raw
	}
	st.Active, st.Next = nil, nil
	rr.Phase, rr.SwitchedAt = store.PhaseSwitched, now
	return staged, nil
}

// retireTime is when the last leaf chained to the old roots expires: the
// latest NotAfter among the leaves the issuance log holds as issued up to
// switchGrace after the switch, and never before that point. Every leaf
// still valid has its record (records are pruned only Retention after they
// expire), whatever lifetimes were configured when it was issued; the log
// is read in pages, oldest first.
func (a *Authority) retireTime(ctx context.Context, rr *store.RootRotation) (time.Time, error) {
	until := rr.SwitchedAt.Add(switchGrace)
	last := until
	var since time.Time
	seen := map[string]bool{} // serials already read at time since
	for {
		recs, err := a.cfg.Store.Issuances(ctx, store.IssuanceFilter{IssuedSince: since, Limit: retirePage})
		if err != nil {
			return time.Time{}, err
		}
		progress := false
		for _, r := range recs {
			if r.IssuedAt.After(until) {
				return last, nil
			}
			if r.IssuedAt.Equal(since) && seen[r.Serial] {
				continue
			}
			progress = true
			last = latest(last, r.NotAfter)
			if !r.IssuedAt.Equal(since) {
				since, seen = r.IssuedAt, map[string]bool{}
			}
			seen[r.Serial] = true
		}
		switch {
		case len(recs) < retirePage:
			return last, nil
		case !progress:
			// A whole page issued at one instant: the pages cannot move
			// on. Take the bound from today's lifetimes instead.
			return latest(last, until.Add(max(a.cfg.MaxTTL, a.cfg.IntermediateTTL)+a.cfg.Backdate)), nil
		}
	}
}

// rootStepTime is when the root rotation rr next has a step due; zero when
// none.
func rootStepTime(rr *store.RootRotation) time.Time {
	switch {
	case rr == nil:
		return time.Time{}
	case rr.Phase == store.PhasePrepared:
		return rr.SwitchAfter
	case rr.Phase == store.PhaseSwitched && rr.RetireAfter.IsZero():
		return rr.SwitchedAt.Add(switchGrace)
	case rr.Phase == store.PhaseSwitched:
		return rr.RetireAfter
	}
	return time.Time{}
}

// trustFor returns the trust of state st: the parent that signs in its
// phase and the roots trusted. It reuses the current trust when st's
// roots and phase are those it was built from. staged is the staged
// parent when the caller has just loaded it.
func (a *Authority) trustFor(ctx context.Context, st *store.CAState, now time.Time, staged Parent) (*trust, error) {
	key := trustKey(st)
	if cur := a.trust.Load(); cur != nil && cur.key == key && staged == nil {
		return cur, nil
	}
	parent, err := a.parentFor(ctx, st, now, staged)
	if err != nil {
		return nil, err
	}
	roots := slices.Clone(parent.Roots())
	if rr := st.RootRotation; rr != nil {
		extra := map[string][][]byte{store.PhasePrepared: rr.NewRoots, store.PhaseSwitched: rr.OldRoots}[rr.Phase]
		for _, der := range extra {
			c, err := x509.ParseCertificate(der)
			if err != nil {
				return nil, fmt.Errorf("ca: root rotation: stored root: %w", err)
			}
			if !slices.ContainsFunc(roots, c.Equal) {
				roots = append(roots, c)
			}
		}
	}
	tr := &trust{parent: parent, direct: leafKey(parent) != nil, key: key, changed: make(chan struct{}),
		bundle: x509bundle.FromX509Authorities(a.cfg.TrustDomain, roots)}
	for _, r := range roots {
		tr.rootsPEM = append(tr.rootsPEM, certPEM(r)...)
	}
	tr.rootsStr = string(tr.rootsPEM)
	return tr, nil
}

// parentFor is the parent that signs in state st: the self-signed root it
// holds, or Config.Parent, or, once a rotation has switched to a staged
// parent, whichever of Config.Parent and the staged one chains to the new
// root (the operator may by then have moved the staged files into
// --cacerts-dir).
func (a *Authority) parentFor(ctx context.Context, st *store.CAState, now time.Time, staged Parent) (Parent, error) {
	rr := st.RootRotation
	switch {
	case a.cfg.Parent == nil:
		return a.selfSignedParent(st.Root, now)
	case rr == nil || rr.Phase == store.PhasePrepared || hasRoot(rr.NewRoots, a.cfg.Parent.Anchor()):
		return a.cfg.Parent, nil
	case staged == nil && a.cfg.NextParent != nil:
		p, err := a.cfg.NextParent(ctx, now)
		if err == nil && hasRoot(rr.NewRoots, p.Anchor()) {
			staged = p
		}
	}
	switch {
	case staged != nil:
		return staged, nil
	case rr.Phase == store.PhaseCompleted:
		// The files were replaced since: they are the operator's word.
		a.cfg.Logger.Warn("the cacerts root is not the one the last root rotation switched to: using --cacerts-dir as it is",
			"root_sha256", Fingerprint(a.cfg.Parent.Anchor()))
		return a.cfg.Parent, nil
	}
	return nil, fmt.Errorf("ca: a root rotation switched to root sha256 %s, but neither --cacerts-dir nor --cacerts-next-dir holds a CA certificate under it",
		derFingerprint(rr.NewRoots[0]))
}

// trustKey identifies what a trust is built from in state st.
func trustKey(st *store.CAState) string {
	var b strings.Builder
	if st.Root != nil {
		b.WriteString(derFingerprint(st.Root.CertDER))
	}
	if rr := st.RootRotation; rr != nil {
		b.WriteString("|" + rr.Phase)
		for _, der := range append(slices.Clone(rr.OldRoots), rr.NewRoots...) {
			b.WriteString("|" + derFingerprint(der))
		}
	}
	return b.String()
}

// logRootRotation logs, at info, the step from old to cur, with both
// roots' fingerprints.
func (a *Authority) logRootRotation(old, cur *store.RootRotation) {
	switch {
	case cur == nil && old != nil && old.Phase == store.PhasePrepared:
		a.cfg.Logger.Info("root rotation aborted: the new root is no longer published", rootAttrs(old)...)
		return
	case cur == nil || (old != nil && old.Phase == cur.Phase && old.RetireAfter.Equal(cur.RetireAfter)):
		return
	}
	attrs := rootAttrs(cur)
	switch cur.Phase {
	case store.PhasePrepared:
		a.cfg.Logger.Info("root rotation prepared: the new root is published beside the old one", append(attrs, "switch_after", cur.SwitchAfter)...)
	case store.PhaseSwitched:
		if old != nil && old.Phase == store.PhaseSwitched {
			a.cfg.Logger.Info("root rotation: the last leaf under the old root is known", append(attrs, "retire_after", cur.RetireAfter)...)
			return
		}
		a.cfg.Logger.Info("root rotation switched: intermediates are signed by the new root; the old root stays trusted", attrs...)
	case store.PhaseCompleted:
		a.cfg.Logger.Info("root rotation completed: the old root is no longer trusted", attrs...)
	}
}

func rootAttrs(rr *store.RootRotation) []any {
	fps := func(ders [][]byte) string {
		out := make([]string, len(ders))
		for i, d := range ders {
			out[i] = derFingerprint(d)
		}
		return strings.Join(out, ",")
	}
	return []any{"old_root_sha256", fps(rr.OldRoots), "new_root_sha256", fps(rr.NewRoots)}
}

func hasRoot(ders [][]byte, c *x509.Certificate) bool {
	return slices.ContainsFunc(ders, func(d []byte) bool { return bytes.Equal(d, c.Raw) })
}

func certsDER(certs []*x509.Certificate) [][]byte {
	out := make([][]byte, len(certs))
	for i, c := range certs {
		out[i] = c.Raw
	}
	return out
}

// stamp formats a time for operators' messages.
func stamp(t time.Time) string { return t.UTC().Format(time.RFC3339) }
