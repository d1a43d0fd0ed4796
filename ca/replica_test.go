package ca_test

import (
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/ca/store"
	"github.com/meshca/meshca/internal/clock/clocktest"
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
	now := time.Now()
	c := testca.NewIstioCACerts(t, testca.IstioOptions{CACert: func(tmpl *x509.Certificate) { tmpl.MaxPathLen, tmpl.MaxPathLenZero = 1, false }})
	dir := t.TempDir()
	c.Write(t, dir)
	parent, err := ca.LoadCACerts(dir, now, ca.CACertsOptions{})
	if err != nil {
		t.Fatal(err)
	}
	clk := clocktest.New(now)
	st := storetest.NewMem()
	replica := func(name string) *ca.Authority {
		return newAuthority(t, st, clk, func(cfg *ca.Config) { cfg.Parent, cfg.Replica = parent, name })
	}
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
	// JWT-SVIDs would need each replica's key published by all: refused.
	if _, err := a.MintJWTSVID(context.Background(), identity(fooID), []string{"x"}, 0); !errors.Is(err, ca.ErrJWTUnavailable) {
		t.Errorf("MintJWTSVID on a replica: %v, want ErrJWTUnavailable", err)
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

func mustState(t *testing.T, st store.Store) *store.CAState {
	t.Helper()
	s, err := st.LoadCAState(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// shortParent signs intermediates shorter than asked, as a Vault mount
// with a low max_lease_ttl does.
type shortParent struct {
	*ca.LocalParent
	life time.Duration
}

func (p shortParent) SignIntermediate(ctx context.Context, tmpl *x509.Certificate, key crypto.Signer) (*x509.Certificate, error) {
	tmpl.NotAfter = tmpl.NotBefore.Add(p.life)
	return p.LocalParent.SignIntermediate(ctx, tmpl, key)
}

// TestIntermediateCutShortRefused: an intermediate the parent made too
// short to cover two default lifetimes would be replaced at every update
// (a parent call each time): it is refused with what to change.
func TestIntermediateCutShortRefused(t *testing.T) {
	c := testca.NewIstioCACerts(t, testca.IstioOptions{CACert: func(tmpl *x509.Certificate) { tmpl.MaxPathLen, tmpl.MaxPathLenZero = 1, false }})
	dir := t.TempDir()
	c.Write(t, dir)
	parent, err := ca.LoadCACerts(dir, time.Now(), ca.CACertsOptions{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = ca.New(context.Background(), ca.Config{TrustDomain: td, Store: storetest.NewMem(), Clock: clocktest.New(time.Now()),
		Parent: shortParent{parent, 30 * time.Hour}})
	if err == nil || !strings.Contains(err.Error(), "must cover twice --default-ttl") {
		t.Fatalf("ca.New: %v", err)
	}
}
