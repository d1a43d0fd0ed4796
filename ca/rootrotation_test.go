package ca_test

import (
	"context"
	"crypto/x509"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/meshca/meshca/attestor"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/ca/store"
	"github.com/meshca/meshca/internal/clock/clocktest"
	"github.com/meshca/meshca/internal/pki"
	"github.com/meshca/meshca/internal/storetest"
	"github.com/meshca/meshca/internal/testca"
)

// issue signs a leaf for fooID with ttl (0: the default) and returns its
// chain without the roots, and the roots element parsed.
func issue(t *testing.T, a *ca.Authority, ttl time.Duration) (chain, roots []*x509.Certificate) {
	t.Helper()
	iss, err := a.Sign(context.Background(), ca.SignRequest{CSR: csrPEM(t, p256(t), fooCSR()), TTL: ttl, Identity: identity(fooID)})
	if err != nil {
		t.Fatalf("Sign: %v", err)
	}
	n := len(iss.ChainPEM)
	chain = parseChain(t, iss.ChainPEM[:n-1])
	roots, err = pki.ParseCertificates([]byte(iss.ChainPEM[n-1]))
	if err != nil {
		t.Fatalf("roots element: %v", err)
	}
	return chain, roots
}

// verifies reports whether chain verifies at now against bundle.
func verifies(chain []*x509.Certificate, bundle *x509bundle.Bundle, now time.Time) error {
	_, _, err := x509svid.Verify(chain, bundle, x509svid.WithTime(now))
	return err
}

func rootFPs(b *x509bundle.Bundle) []string {
	var out []string
	for _, r := range b.X509Authorities() {
		out = append(out, ca.Fingerprint(r))
	}
	return out
}

func phase(t *testing.T, st store.Store) string {
	t.Helper()
	s, err := st.LoadCAState(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if s.RootRotation == nil {
		return ""
	}
	return s.RootRotation.Phase
}

func rotateRoot(t *testing.T, a *ca.Authority, action, ph string) string {
	t.Helper()
	msg, err := a.RotateRoot(context.Background(), ca.RootRotationRequest{Action: action, Phase: ph})
	if err != nil {
		t.Fatalf("RotateRoot(%s %s): %v", action, ph, err)
	}
	return msg
}

// TestRootRotationSelfSigned walks a self-signed root through a whole
// rotation on a fake clock: at every step the certificates issued before
// and after verify against the bundle, the bundle changes only by adding
// the new root first and dropping the old one last, and a restart in the
// middle of each phase resumes it as it was.
func TestRootRotationSelfSigned(t *testing.T) {
	ctx := context.Background()
	st := storetest.NewMem()
	clk := clocktest.New(t0)
	a := newAuthority(t, st, clk, nil)
	oldRoot := a.Bundle().X509Authorities()[0]
	restart := func(t *testing.T) {
		t.Helper()
		b := newAuthority(t, st, clk, nil)
		if got, want := rootFPs(b.Bundle()), rootFPs(a.Bundle()); strings.Join(got, ",") != strings.Join(want, ",") {
			t.Fatalf("after a restart the bundle is %v, want %v", got, want)
		}
		if !b.SigningCertificate().Equal(a.SigningCertificate()) {
			t.Fatal("after a restart another intermediate signs")
		}
		a = b
	}

	// A leaf with the longest lifetime, issued long before the switch.
	early, _ := issue(t, a, ca.DefaultMaxLeafTTL)
	changed := a.RootsChanged()
	msg := rotateRoot(t, a, ca.RootRotationStart, "")
	if !strings.HasPrefix(msg, "prepared") {
		t.Errorf("start said %q", msg)
	}
	select {
	case <-changed:
	default:
		t.Fatal("RootsChanged not closed when the new root was published")
	}
	roots := a.Bundle().X509Authorities()
	if len(roots) != 2 || !roots[0].Equal(oldRoot) {
		t.Fatalf("prepared: bundle has %d roots, want the old one first and the new one", len(roots))
	}
	newRoot := roots[1]
	if pemRoots, err := pki.ParseCertificates(a.RootsPEM()); err != nil || len(pemRoots) != 2 || !pemRoots[1].Equal(newRoot) {
		t.Fatalf("RootsPEM is not both roots: %v", err)
	}
	if again := rotateRoot(t, a, ca.RootRotationStart, ""); !strings.Contains(again, "already prepared") {
		t.Errorf("second start said %q, want it to do nothing", again)
	}
	if n := len(a.Bundle().X509Authorities()); n != 2 {
		t.Fatalf("a second start changed the bundle to %d roots", n)
	}
	// Prepared: leaves still chain to the old root, and carry both roots.
	prep, prepRoots := issue(t, a, 0)
	if err := prep[len(prep)-1].CheckSignatureFrom(oldRoot); err != nil {
		t.Fatal("prepared: the intermediate is no longer signed by the old root")
	}
	if len(prepRoots) != 2 {
		t.Fatalf("prepared: chain carries %d roots, want both", len(prepRoots))
	}
	restart(t)

	// The switch waits one renewal period (the default TTL).
	if got, want := a.NextRotation(), t0.Add(ca.DefaultLeafTTL); !got.Equal(want) {
		t.Errorf("NextRotation = %s, want the switch at %s", got, want)
	}
	clk.Set(t0.Add(ca.DefaultLeafTTL - time.Second))
	if err := a.Rotate(ctx); err != nil || phase(t, st) != store.PhasePrepared {
		t.Fatalf("switched before the overlap: %v, phase %s", err, phase(t, st))
	}
	clk.Set(t0.Add(ca.DefaultLeafTTL))
	if err := a.Rotate(ctx); err != nil || phase(t, st) != store.PhaseSwitched {
		t.Fatalf("did not switch after the overlap: %v, phase %s", err, phase(t, st))
	}
	switchedAt := clk.Now()
	after, afterRoots := issue(t, a, 0)
	if err := after[len(after)-1].CheckSignatureFrom(newRoot); err != nil {
		t.Fatal("switched: the intermediate is not signed by the new root")
	}
	if len(afterRoots) != 2 || !afterRoots[0].Equal(newRoot) {
		t.Fatal("switched: the roots element is not the new root, then the old one")
	}
	for name, c := range map[string][]*x509.Certificate{"early": early, "prepared": prep, "after": after} {
		if err := verifies(c, a.Bundle(), clk.Now()); err != nil {
			t.Errorf("switched: the %s leaf does not verify against the bundle: %v", name, err)
		}
	}
	restart(t)

	// Shortly after the switch the last leaf under the old root is known:
	// the early one, with the longest lifetime.
	clk.Set(switchedAt.Add(5 * time.Minute))
	if err := a.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	s, _ := st.LoadCAState(ctx)
	if got, want := s.RootRotation.RetireAfter, early[0].NotAfter; !got.Equal(want) {
		t.Fatalf("RetireAfter = %s, want the early leaf's NotAfter %s", got, want)
	}
	if got := a.NextRotation(); got.After(early[0].NotAfter) {
		t.Errorf("NextRotation = %s, after the retirement", got)
	}
	restart(t)
	clk.Set(early[0].NotAfter.Add(-time.Second))
	if err := a.Rotate(ctx); err != nil || phase(t, st) != store.PhaseSwitched || len(a.Bundle().X509Authorities()) != 2 {
		t.Fatalf("completed before the last old leaf expired: %v", err)
	}
	changed = a.RootsChanged()
	clk.Set(early[0].NotAfter)
	if err := a.Rotate(ctx); err != nil || phase(t, st) != store.PhaseCompleted {
		t.Fatalf("not completed once the last old leaf expired: %v, phase %s", err, phase(t, st))
	}
	<-changed
	if roots := a.Bundle().X509Authorities(); len(roots) != 1 || !roots[0].Equal(newRoot) {
		t.Fatal("completed: the bundle is not the new root alone")
	}
	if late, _ := issue(t, a, 0); verifies(late, a.Bundle(), clk.Now()) != nil {
		t.Error("completed: a leaf under the new root does not verify")
	}
	restart(t)
	// The old root's key is gone from the store.
	s, _ = st.LoadCAState(ctx)
	if cert, _ := x509.ParseCertificate(s.Root.CertDER); !cert.Equal(newRoot) || s.RootRotation.NewRoot != nil {
		t.Error("completed: the stored root is not the new one alone")
	}
	// A new rotation may start once the last one completed.
	rotateRoot(t, a, ca.RootRotationStart, "")
	if phase(t, st) != store.PhasePrepared {
		t.Error("a second rotation did not start after the first completed")
	}
}

// TestRootRotationRequests: what the operator's requests do in each phase,
// and the clear refusals of those that do not fit.
func TestRootRotationRequests(t *testing.T) {
	ctx := context.Background()
	st := storetest.NewMem()
	clk := clocktest.New(t0)
	a := newAuthority(t, st, clk, nil)
	refused := func(req ca.RootRotationRequest, want string) {
		t.Helper()
		_, err := a.RotateRoot(ctx, req)
		if !errors.Is(err, ca.ErrRotation) || !strings.Contains(err.Error(), want) {
			t.Errorf("RotateRoot(%+v) = %v, want ErrRotation saying %q", req, err, want)
		}
	}
	refused(ca.RootRotationRequest{Action: "restart"}, `unknown action "restart"`)
	refused(ca.RootRotationRequest{Action: ca.RootRotationAdvance, Phase: store.PhasePrepared}, "no root rotation is in progress")
	refused(ca.RootRotationRequest{Action: ca.RootRotationAbort}, "nothing to abort")

	rotateRoot(t, a, ca.RootRotationStart, "")
	refused(ca.RootRotationRequest{Action: ca.RootRotationAdvance}, "advance needs the phase to leave")
	refused(ca.RootRotationRequest{Action: ca.RootRotationAdvance, Phase: store.PhaseSwitched}, "in phase prepared, not switched")

	// Abort drops the new root.
	rotateRoot(t, a, ca.RootRotationAbort, "")
	if n := len(a.Bundle().X509Authorities()); n != 1 || phase(t, st) != "" {
		t.Fatalf("after abort: %d roots, phase %q", n, phase(t, st))
	}

	// Advance takes the step at once; advancing the same phase twice is
	// refused, not a second step.
	rotateRoot(t, a, ca.RootRotationStart, "")
	rotateRoot(t, a, ca.RootRotationAdvance, store.PhasePrepared)
	if phase(t, st) != store.PhaseSwitched {
		t.Fatalf("advance from prepared: phase %s", phase(t, st))
	}
	refused(ca.RootRotationRequest{Action: ca.RootRotationAdvance, Phase: store.PhasePrepared}, "in phase switched, not prepared")
	refused(ca.RootRotationRequest{Action: ca.RootRotationStart}, "in progress")
	refused(ca.RootRotationRequest{Action: ca.RootRotationAbort}, "can no longer be aborted")
	rotateRoot(t, a, ca.RootRotationAdvance, store.PhaseSwitched)
	if phase(t, st) != store.PhaseCompleted || len(a.Bundle().X509Authorities()) != 1 {
		t.Fatalf("advance from switched: phase %s", phase(t, st))
	}
}

// raceStore runs before once, just before the first SaveCAState that
// follows, as another replica would write in between.
type raceStore struct {
	store.Store
	before func()
}

func (r *raceStore) SaveCAState(ctx context.Context, st *store.CAState) (uint64, error) {
	if f := r.before; f != nil {
		r.before = nil
		f()
	}
	return r.Store.SaveCAState(ctx, st)
}

// TestRootRotationTwoWriters: two Authorities on one store (two replicas)
// never both take a step: when both find the switch due, the one that
// saves second fails the compare-and-swap, and at its next call takes the
// winner's state (its new intermediate) instead of switching again.
func TestRootRotationTwoWriters(t *testing.T) {
	ctx := context.Background()
	mem := storetest.NewMem()
	race := &raceStore{Store: mem}
	clk := clocktest.New(t0)
	a := newAuthority(t, mem, clk, nil)
	b := newAuthority(t, race, clk, nil)
	rotateRoot(t, a, ca.RootRotationStart, "")
	if err := b.Rotate(ctx); err != nil || len(b.Bundle().X509Authorities()) != 2 {
		t.Fatalf("the other replica does not publish the new root: %v", err)
	}

	clk.Set(t0.Add(ca.DefaultLeafTTL))
	race.before = func() {
		if err := a.Rotate(ctx); err != nil {
			t.Errorf("winner: %v", err)
		}
	}
	if err := b.Rotate(ctx); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("the replica that saved second: %v, want ErrConflict", err)
	}
	won, _ := mem.LoadCAState(ctx)
	if err := b.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	now, _ := mem.LoadCAState(ctx)
	if now.Version != won.Version || !b.SigningCertificate().Equal(a.SigningCertificate()) {
		t.Fatal("the losing replica switched again instead of taking the winner's state")
	}
	if err := b.SigningCertificate().CheckSignatureFrom(b.Bundle().X509Authorities()[0]); err != nil {
		t.Fatal("the losing replica does not sign under the new root")
	}
}

// TestRootRotationStagedCACerts: with Istio cacerts, the new root's files
// are staged in a second directory; the rotation publishes its root, then
// switches to it, and a restart after the switch finds it in either
// directory.
func TestRootRotationStagedCACerts(t *testing.T) {
	ctx := context.Background()
	for _, direct := range []bool{false, true} {
		t.Run(map[bool]string{false: "intermediate", true: "direct"}[direct], func(t *testing.T) {
			clk := clocktest.New(t0)
			opts := ca.CACertsOptions{SignDirectly: direct}
			cur, next := t.TempDir(), filepath.Join(t.TempDir(), "next")
			oldCA := testca.NewIstioCACerts(t, testca.IstioOptions{Now: t0, CACert: func(c *x509.Certificate) { c.MaxPathLen, c.MaxPathLenZero = 1, false }})
			oldCA.Write(t, cur)
			st := storetest.NewMem()
			start := func(t *testing.T, dir string) *ca.Authority {
				t.Helper()
				p, err := ca.LoadCACerts(dir, clk.Now(), opts)
				if err != nil {
					t.Fatal(err)
				}
				return newAuthority(t, st, clk, func(c *ca.Config) { c.Parent, c.NextParent = p, ca.StagedCACerts(next, opts) })
			}
			a := start(t, cur)
			before, _ := issue(t, a, 0)

			// Nothing staged yet: refused with what to do.
			if _, err := a.RotateRoot(ctx, ca.RootRotationRequest{Action: ca.RootRotationStart}); !errors.Is(err, ca.ErrRotation) || !strings.Contains(err.Error(), "cannot be used") {
				t.Fatalf("start without staged files = %v", err)
			}
			// Staging the same root is refused.
			if err := os.MkdirAll(next, 0o700); err != nil {
				t.Fatal(err)
			}
			oldCA.Write(t, next)
			if _, err := a.RotateRoot(ctx, ca.RootRotationRequest{Action: ca.RootRotationStart}); !errors.Is(err, ca.ErrRotation) || !strings.Contains(err.Error(), "already trusted") {
				t.Fatalf("start with the same root staged = %v", err)
			}
			newCA := testca.NewIstioCACerts(t, testca.IstioOptions{Now: t0, CACert: func(c *x509.Certificate) { c.MaxPathLen, c.MaxPathLenZero = 1, false }})
			newCA.Write(t, next)
			rotateRoot(t, a, ca.RootRotationStart, "")
			if roots := a.Bundle().X509Authorities(); len(roots) != 2 || !roots[1].Equal(newCA.Root) {
				t.Fatal("prepared: the staged root is not published beside the old one")
			}
			a = start(t, cur) // a restart in prepared

			clk.Set(t0.Add(ca.DefaultLeafTTL))
			if err := a.Rotate(ctx); err != nil || phase(t, st) != store.PhaseSwitched {
				t.Fatalf("switch: %v, phase %s", err, phase(t, st))
			}
			after, _ := issue(t, a, 0)
			if !after[len(after)-1].Equal(newCA.CACert) {
				t.Fatal("switched: leaves do not chain through the staged ca-cert.pem")
			}
			for _, c := range [][]*x509.Certificate{before, after} {
				if err := verifies(c, a.Bundle(), clk.Now()); err != nil {
					t.Fatalf("switched: %v", err)
				}
			}
			// Restarted on the old directory, the state says where the new
			// root is: the staged directory.
			a = start(t, cur)
			if !a.Bundle().X509Authorities()[0].Equal(newCA.Root) {
				t.Fatal("a restart after the switch went back to the old root")
			}
			// Once the operator has copied the staged files over, the
			// main directory serves.
			newCA.Write(t, cur)
			a = start(t, cur)
			got, _ := issue(t, a, 0)
			if !got[len(got)-1].Equal(newCA.CACert) {
				t.Fatal("after moving the files: another CA signs")
			}
			// Leaves issued in the minutes after the switch may still have
			// been signed under the old root: the last of them counts.
			clk.Set(t0.Add(ca.DefaultLeafTTL + 5*time.Minute))
			if err := a.Rotate(ctx); err != nil {
				t.Fatal(err)
			}
			if s, _ := st.LoadCAState(ctx); !s.RootRotation.RetireAfter.Equal(got[0].NotAfter) {
				t.Fatalf("RetireAfter = %s, want %s", s.RootRotation.RetireAfter, got[0].NotAfter)
			}
			clk.Set(got[0].NotAfter)
			if err := a.Rotate(ctx); err != nil || phase(t, st) != store.PhaseCompleted {
				t.Fatalf("complete: %v, phase %s", err, phase(t, st))
			}
			if roots := a.Bundle().X509Authorities(); len(roots) != 1 || !roots[0].Equal(newCA.Root) {
				t.Fatal("completed: the bundle is not the new root alone")
			}
		})
	}
}

// TestRotateIntermediateNow: the emergency rotation revokes the signing
// intermediate for renewal (a chain through it is refused, also after a
// restart), a fresh one signs, and the revocation is forgotten once the
// revoked intermediate has expired.
func TestRotateIntermediateNow(t *testing.T) {
	ctx := context.Background()
	st := storetest.NewMem()
	clk := clocktest.New(t0)
	a := newAuthority(t, st, clk, nil)
	old, _ := issue(t, a, 0)
	withRoot := func(c []*x509.Certificate) []*x509.Certificate {
		return append(append([]*x509.Certificate{}, c...), a.Bundle().X509Authorities()[0])
	}
	if err := a.CheckRevoked(ctx, withRoot(old), fooID); err != nil {
		t.Fatal(err)
	}
	revoked, active, err := a.RotateIntermediateNow(ctx, "key compromise")
	if err != nil {
		t.Fatal(err)
	}
	if !revoked.Equal(old[1]) || active.Equal(old[1]) || !a.SigningCertificate().Equal(active) {
		t.Fatal("the emergency rotation did not replace the signing intermediate")
	}
	fresh, _ := issue(t, a, 0)
	if !fresh[1].Equal(active) {
		t.Fatal("leaves are not signed by the fresh intermediate")
	}
	for _, b := range []*ca.Authority{a, newAuthority(t, st, clk, nil)} {
		err := b.CheckRevoked(ctx, withRoot(old), fooID)
		if !errors.Is(err, attestor.ErrRevoked) || !strings.Contains(err.Error(), "emergency rotation (key compromise)") {
			t.Errorf("renewal with a leaf of the revoked intermediate: %v", err)
		}
		if err := b.CheckRevoked(ctx, withRoot(fresh), fooID); err != nil {
			t.Errorf("renewal with a fresh leaf: %v", err)
		}
	}
	clk.Set(revoked.NotAfter)
	if err := a.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	if s, _ := st.LoadCAState(ctx); len(s.RevokedIntermediates) != 0 {
		t.Errorf("%d revoked intermediates kept past their expiry", len(s.RevokedIntermediates))
	}
}

// TestRotateIntermediateNowDirectMode: with no intermediate, the emergency
// rotation is refused with what to do instead.
func TestRotateIntermediateNowDirectMode(t *testing.T) {
	c := testca.NewIstioCACerts(t, testca.IstioOptions{Now: t0})
	dir := t.TempDir()
	c.Write(t, dir)
	clk := clocktest.New(t0)
	p, err := ca.LoadCACerts(dir, clk.Now(), ca.CACertsOptions{})
	if err != nil {
		t.Fatal(err)
	}
	a := newAuthority(t, storetest.NewMem(), clk, func(c *ca.Config) { c.Parent = p })
	if _, _, err := a.RotateIntermediateNow(context.Background(), ""); !errors.Is(err, ca.ErrRotation) || !strings.Contains(err.Error(), "direct mode") {
		t.Errorf("RotateIntermediateNow in direct mode = %v", err)
	}
}

// TestRootRotationCrossSign: with cross-signing, from the switch until
// completion every chain also carries the intermediate certified by the old
// root, so a client that trusts only the old root verifies leaves under
// the new one; it survives a restart; at completion the twin is dropped.
// A parent meshca does not hold (cacerts) cannot cross-sign.
func TestRootRotationCrossSign(t *testing.T) {
	clk := clocktest.New(t0)
	st := storetest.NewMem()
	// A 96 h intermediate takes over from the next at 48 h, while a 72 h
	// leaf issued before the switch keeps the rotation switched.
	cfg := func(c *ca.Config) { c.RootRotationCrossSign, c.IntermediateTTL = true, 96*time.Hour }
	a := newAuthority(t, st, clk, cfg)
	oldRoot := a.Bundle().X509Authorities()[0]
	rotateRoot(t, a, ca.RootRotationStart, "")
	if chain, _ := issue(t, a, 72*time.Hour); len(chain) != 2 {
		t.Fatalf("prepared: %d certificates in the chain, want leaf and intermediate (no twin before the switch)", len(chain))
	}
	rotateRoot(t, a, ca.RootRotationAdvance, store.PhasePrepared)
	var newRoot *x509.Certificate
	for _, r := range a.Bundle().X509Authorities() {
		if !r.Equal(oldRoot) {
			newRoot = r
		}
	}
	onlyOld := x509bundle.FromX509Authorities(td, []*x509.Certificate{oldRoot})
	onlyNew := x509bundle.FromX509Authorities(td, []*x509.Certificate{newRoot})
	check := func(a *ca.Authority) {
		t.Helper()
		chain, _ := issue(t, a, 0)
		if len(chain) != 3 || chain[2].CheckSignatureFrom(oldRoot) != nil || chain[1].CheckSignatureFrom(newRoot) != nil ||
			string(chain[2].RawSubjectPublicKeyInfo) != string(chain[1].RawSubjectPublicKeyInfo) {
			t.Fatalf("switched: %d certificates; want leaf, intermediate (new root), the same intermediate certified by the old root", len(chain))
		}
		for name, b := range map[string]*x509bundle.Bundle{"old root only": onlyOld, "new root only": onlyNew, "both": a.Bundle()} {
			if err := verifies(chain, b, clk.Now()); err != nil {
				t.Errorf("switched, a client trusting the %s: %v", name, err)
			}
		}
	}
	check(a)
	s, err := a.Status(context.Background())
	if err != nil || !s.RootRotation.CrossSign || s.Intermediates[len(s.Intermediates)-2].State != "cross-signed" {
		t.Fatalf("status: %+v %v; want cross_sign and a cross-signed intermediate", s.RootRotation, err)
	}
	// A restart opens the stored twin; the next intermediate gets one too.
	a = newAuthority(t, st, clk, cfg)
	check(a)
	first := a.SigningCertificate()
	clk.Set(ca.ActivateTime(first).Add(time.Minute))
	if err := a.Rotate(context.Background()); err != nil {
		t.Fatal(err)
	}
	if a.SigningCertificate().Equal(first) || phase(t, st) != store.PhaseSwitched {
		t.Fatal("want the next intermediate active, the rotation still switched")
	}
	check(a)
	// Completed: the old root certifies nothing more.
	rotateRoot(t, a, ca.RootRotationAdvance, store.PhaseSwitched)
	if err := a.Rotate(context.Background()); err != nil {
		t.Fatal(err)
	}
	chain, _ := issue(t, a, 0)
	if len(chain) != 2 || verifies(chain, onlyOld, clk.Now()) == nil {
		t.Fatal("completed: the chain still verifies against the old root alone")
	}
	if state, _ := st.LoadCAState(context.Background()); state.RootRotation.OldRoot != nil {
		t.Fatal("completed: the old root's key is still kept")
	}
}

// TestRootRotationLeaderFence: with several replicas, only the leader
// takes the scheduled steps, and a leader whose term is older than one
// that has written the state takes none (it lost its lease without
// knowing); operators' requests are taken by any replica.
func TestRootRotationLeaderFence(t *testing.T) {
	clk := clocktest.New(t0)
	st := storetest.NewMem()
	leader := func(term uint64, leading bool) func(*ca.Config) {
		return func(c *ca.Config) { c.Leader = func() (uint64, bool) { return term, leading } }
	}
	newer := newAuthority(t, st, clk, leader(7, true))
	follower := newAuthority(t, st, clk, leader(7, false))
	stale := newAuthority(t, st, clk, leader(6, true))
	rotateRoot(t, follower, ca.RootRotationStart, "")
	clk.Advance(25 * time.Hour) // past the overlap: the switch is due
	for name, a := range map[string]*ca.Authority{"a follower": follower, "a stale leader": stale} {
		if err := a.Rotate(context.Background()); err != nil {
			t.Fatal(err)
		}
		if p := phase(t, st); p != store.PhasePrepared {
			t.Fatalf("%s took the switch (phase %s)", name, p)
		}
	}
	if err := newer.Rotate(context.Background()); err != nil {
		t.Fatal(err)
	}
	if p := phase(t, st); p != store.PhaseSwitched {
		t.Fatalf("the leader did not take the switch (phase %s)", p)
	}
	s, err := st.LoadCAState(context.Background())
	if err != nil || s.LeaderFence != 7 {
		t.Fatalf("fence %d, want the leader's term 7", s.LeaderFence)
	}
	// An operator's request takes its step on a follower too.
	rotateRoot(t, follower, ca.RootRotationAdvance, store.PhaseSwitched)
	if p := phase(t, st); p != store.PhaseCompleted {
		t.Fatalf("an advance sent to a follower left the rotation %s, want completed", p)
	}
}
