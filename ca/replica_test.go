package ca_test

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/ca/store"
	"github.com/meshca/meshca/internal/clock/clocktest"
	"github.com/meshca/meshca/internal/jwtsvid"
	"github.com/meshca/meshca/internal/storetest"
	"github.com/meshca/meshca/internal/testca"
)

// TestReplicasOwnIntermediates: replicas sharing a store each make their
// own intermediate under the shared root and keep its key to themselves:
// the store holds only the certificates, each recorded with its replica.
// Leaves from either verify against the one bundle. An emergency rotation
// on one replica revokes every replica's intermediate; the other replaces
// its own at its next look. A restarted replica makes a new one.
func TestReplicasOwnIntermediates(t *testing.T) {
	replica, clk, st, _ := newReplicas(t)
	a, b := replica("a"), replica("b")
	if a.SigningCertificate().Equal(b.SigningCertificate()) {
		t.Fatal("two replicas share one intermediate")
	}
	for _, r := range []*ca.Authority{a, b} {
		chain, _ := issue(t, r, 0)
		if err := verifies(chain, a.Bundle(), clk.Now()); err != nil {
			t.Fatal(err)
		}
	}
	state, err := st.LoadCAState(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if state.Active != nil || state.Next != nil || state.Root != nil || state.JWTKeys != nil {
		t.Fatal("a private key is in the shared store")
	}
	held := map[string]string{}
	for _, r := range state.ReplicaIntermediates {
		held[r.Replica+"/"+r.State] = string(r.CertDER)
	}
	if held["a/active"] != string(a.SigningCertificate().Raw) || held["b/active"] != string(b.SigningCertificate().Raw) {
		t.Fatalf("records %v: want each replica's active intermediate", len(held))
	}
	s, err := b.Status(context.Background())
	if err != nil || len(s.Intermediates) != 2 || s.Intermediates[0].Replica != "a" || s.Intermediates[1].Replica != "b" {
		t.Fatalf("status intermediates: %+v %v", s.Intermediates, err)
	}

	oldA, oldB := a.SigningCertificate(), b.SigningCertificate()
	if _, _, err := a.RotateIntermediateNow(context.Background(), "test"); err != nil {
		t.Fatal(err)
	}
	if a.SigningCertificate().Equal(oldA) {
		t.Fatal("the replica that took the request still signs with its revoked intermediate")
	}
	if err := b.Rotate(context.Background()); err != nil {
		t.Fatal(err)
	}
	if b.SigningCertificate().Equal(oldB) {
		t.Fatal("the other replica still signs with its revoked intermediate after its next look")
	}
	revoked := map[string]bool{}
	for _, rc := range mustState(t, st).RevokedIntermediates {
		revoked[string(rc.CertDER)] = true
	}
	if !revoked[string(oldA.Raw)] || !revoked[string(oldB.Raw)] {
		t.Fatal("not every replica's intermediate was revoked")
	}

	a2 := replica("a2")
	if a2.SigningCertificate().Equal(a.SigningCertificate()) {
		t.Fatal("a restarted replica reuses an intermediate whose key it cannot have")
	}
	if n := len(mustState(t, st).ReplicaIntermediates); n != 3 {
		t.Fatalf("%d records, want a, b and a2 (a's kept until it expires)", n)
	}

	t.Run("a root in the store is refused", func(t *testing.T) {
		_, err := ca.New(context.Background(), ca.Config{TrustDomain: td, Store: storetest.NewMem(), Replica: "x"})
		if err == nil || !strings.Contains(err.Error(), "need a root whose key no replica keeps") {
			t.Fatalf("ca.New: %v", err)
		}
	})
}

// TestReplicaJWTKeys: each replica signs JWT-SVIDs with a key of its own,
// whose public key it records in the shared state and whose private key
// stays with it. The first replica signs at once; one that starts while
// other keys are published signs only after the publication delay, when
// every replica has read its key. Every replica's bundle holds every
// key, so a token from one validates with the bundle of another. A
// restarted replica of the same name retires its predecessor's key.
func TestReplicaJWTKeys(t *testing.T) {
	ctx := context.Background()
	replica, clk, st, _ := newReplicas(t)
	mint := func(r *ca.Authority) (*ca.JWTSVID, error) {
		return r.MintJWTSVID(ctx, identity(fooID), []string{"aud"}, 0)
	}

	a := replica("a")
	fromA, err := mint(a)
	if err != nil {
		t.Fatalf("the first replica cannot sign at once: %v", err)
	}
	b := replica("b")
	if _, err := mint(b); !errors.Is(err, ca.ErrUnavailable) {
		t.Fatalf("a new replica signs before its key is published: %v, want ErrUnavailable", err)
	}
	// Within the delay, a reads the shared state (every 30 s in Run).
	clk.Advance(30 * time.Second)
	if err := a.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	clk.Advance(ca.DefaultJWTPublishDelay)
	fromB, err := mint(b)
	if err != nil {
		t.Fatalf("after the publication delay: %v", err)
	}
	if fromA.KeyID == fromB.KeyID {
		t.Fatal("two replicas share one JWT signing key")
	}
	for _, tc := range []struct {
		name  string
		tok   *ca.JWTSVID
		other *ca.Authority
	}{{"a's token, b's bundle", fromA, b}, {"b's token, a's bundle", fromB, a}} {
		if _, _, err := jwtsvid.Validate(tc.tok.Token, tc.other, []string{"aud"}, clk.Now()); err != nil {
			t.Errorf("%s: %v", tc.name, err)
		}
	}
	state := mustState(t, st)
	if state.JWTKeys != nil {
		t.Fatal("replicas use the single CA's JWT keys")
	}
	held := map[string]string{}
	for _, r := range state.ReplicaJWTKeys {
		if len(r.Key.Data) != 0 || r.Key.Alg != "" {
			t.Fatalf("replica %s's private JWT key is in the shared store", r.Replica)
		}
		held[r.Replica+"/"+r.State] = r.ID
	}
	if held["a/active"] != fromA.KeyID || held["b/active"] != fromB.KeyID || len(held) != 2 {
		t.Fatalf("records %v", held)
	}
	s, err := a.Status(ctx)
	if err != nil || len(s.JWTKeys) != 2 || s.JWTKeys[1].Replica != "b" || s.JWTKeys[1].SignsFrom.IsZero() {
		t.Fatalf("status JWT keys: %+v %v", s.JWTKeys, err)
	}

	// a restarts under the same name: it cannot have its predecessor's
	// key, which stays published (retired) until its last token expires.
	a2 := replica("a")
	if _, err := mint(a2); !errors.Is(err, ca.ErrUnavailable) {
		t.Fatalf("a restarted replica signs before its key is published: %v", err)
	}
	var old *store.ReplicaJWTKey
	for _, r := range mustState(t, st).ReplicaJWTKeys {
		if r.ID == fromA.KeyID {
			old = &r
		}
	}
	if old == nil || old.State != "retired" || old.NotAfter.After(clk.Now().Add(ca.DefaultJWTSVIDMaxTTL+ca.DefaultBackdate)) {
		t.Fatalf("the predecessor's key: %+v, want retired until its last token expires", old)
	}
	if _, _, err := jwtsvid.Validate(fromA.Token, a2, []string{"aud"}, clk.Now()); err != nil {
		t.Errorf("the predecessor's token with the restarted replica's bundle: %v", err)
	}
	clk.Advance(ca.DefaultJWTSVIDMaxTTL + ca.DefaultBackdate + time.Second)
	if err := a2.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	if a2.JWTBundle().HasJWTAuthority(fromA.KeyID) {
		t.Error("the predecessor's key is still published after its last token expired")
	}
	if _, err := mint(a2); err != nil {
		t.Errorf("the restarted replica after the delay: %v", err)
	}
}

// newReplicas returns a maker of replicas sharing one store under one
// cacerts root (pathlen 1: each replica makes its own intermediate), on a
// fake clock, and that root's parent.
func newReplicas(t *testing.T) (replica func(name string) *ca.Authority, clk *clocktest.Fake, st *storetest.Mem, parent ca.Parent) {
	now := time.Now()
	c := testca.NewIstioCACerts(t, testca.IstioOptions{CACert: func(tmpl *x509.Certificate) { tmpl.MaxPathLen, tmpl.MaxPathLenZero = 1, false }})
	dir := t.TempDir()
	c.Write(t, dir)
	parent, err := ca.LoadCACerts(dir, now, ca.CACertsOptions{})
	if err != nil {
		t.Fatal(err)
	}
	clk = clocktest.New(now)
	st = storetest.NewMem()
	return func(name string) *ca.Authority {
		return newAuthority(t, st, clk, func(cfg *ca.Config) { cfg.Parent, cfg.Replica = parent, name })
	}, clk, st, parent
}

// TestReplicasStartTogether: five replicas started at once on one empty
// store all start (a save that loses the compare-and-swap is retried on
// the winner's state), each with its own intermediate and JWT key, all
// recorded; only the first to save signs JWT-SVIDs at once.
func TestReplicasStartTogether(t *testing.T) {
	_, clk, st, parent := newReplicas(t)
	const n = 5
	auths := make([]*ca.Authority, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			auths[i], errs[i] = ca.New(context.Background(), ca.Config{TrustDomain: td, Store: st, Clock: clk, Parent: parent, Replica: fmt.Sprintf("r%d", i)})
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("replicas starting together: %v", err)
	}
	state := mustState(t, st)
	intermediates, jwtKeys := map[string]bool{}, map[string]bool{}
	for _, r := range state.ReplicaIntermediates {
		intermediates[r.Replica+"/"+r.State] = true
	}
	immediate := 0
	for _, k := range state.ReplicaJWTKeys {
		jwtKeys[k.Replica+"/"+k.State] = true
		if k.SignsFrom.IsZero() {
			immediate++
		}
	}
	for i := range n {
		name := fmt.Sprintf("r%d/active", i)
		if !intermediates[name] || !jwtKeys[name] {
			t.Errorf("replica %s: intermediate recorded %v, JWT key recorded %v", name, intermediates[name], jwtKeys[name])
		}
		if auths[i].SigningCertificate() == nil {
			t.Errorf("replica r%d has no intermediate", i)
		}
	}
	if len(state.ReplicaIntermediates) != n || len(state.ReplicaJWTKeys) != n {
		t.Errorf("%d intermediates and %d JWT keys recorded, want %d each", len(state.ReplicaIntermediates), len(state.ReplicaJWTKeys), n)
	}
	if immediate != 1 {
		t.Errorf("%d JWT keys sign at once, want 1 (the first saved)", immediate)
	}
}

// TestReplicaRunLooksEvery30s: a replica without leader election looks at
// the shared state at least every 30 s in Run, so an emergency rotation
// taken on another replica reaches it within 30 s, long before its own
// next rotation would.
func TestReplicaRunLooksEvery30s(t *testing.T) {
	replica, clk, _, _ := newReplicas(t)
	a, b := replica("a"), replica("b")
	oldB := b.SigningCertificate()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx) }()
	defer func() {
		cancel()
		<-done
	}()
	clocktest.Eventually(t, "b's Run waits", func() bool { return clk.Waiters() == 1 })
	if _, _, err := a.RotateIntermediateNow(context.Background(), "test"); err != nil {
		t.Fatal(err)
	}
	clk.Advance(30 * time.Second)
	clocktest.Eventually(t, "b replaces its revoked intermediate within 30 s", func() bool { return !b.SigningCertificate().Equal(oldB) })
}

func mustState(t *testing.T, st store.Store) *store.CAState {
	t.Helper()
	s, err := st.LoadCAState(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return s
}
