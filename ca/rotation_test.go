package ca_test

import (
	"context"
	"crypto/x509"
	"runtime"
	"testing"
	"time"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/clock/clocktest"
	"github.com/meshca/meshca/internal/storetest"
)

func TestRotationTimesArePureFunctionsOfTheCertificate(t *testing.T) {
	c := &x509.Certificate{NotBefore: t0, NotAfter: t0.Add(100 * time.Hour)}
	if got, want := ca.PrepareTime(c), t0.Add(40*time.Hour); !got.Equal(want) {
		t.Errorf("PrepareTime = %s, want %s", got, want)
	}
	if got, want := ca.ActivateTime(c), t0.Add(50*time.Hour); !got.Equal(want) {
		t.Errorf("ActivateTime = %s, want %s", got, want)
	}
}

// TestRotationUnderFakeClock walks an intermediate through its whole life:
// prepared ahead at 40 %, activated at 50 %, the old one no longer used, and
// no leaf ever outliving the intermediate that signed it.
func TestRotationUnderFakeClock(t *testing.T) {
	ctx := context.Background()
	st := storetest.NewMem()
	clk := clocktest.New(t0)
	a := newAuthority(t, st, clk, nil)

	first := a.SigningCertificate()
	if life := first.NotAfter.Sub(first.NotBefore); life != ca.DefaultIntermediateTTL+ca.DefaultBackdate {
		t.Fatalf("intermediate lifetime %s", life)
	}
	state := func() (hasNext bool) {
		s, err := st.LoadCAState(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return s.Next != nil
	}
	if state() {
		t.Fatal("next intermediate prepared at start")
	}

	// Just before the prepare time nothing changes.
	clk.Set(ca.PrepareTime(first).Add(-time.Second))
	if err := a.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	if state() || !a.SigningCertificate().Equal(first) {
		t.Fatal("rotation acted before it was due")
	}
	if got := a.NextRotation(); !got.Equal(ca.PrepareTime(first)) {
		t.Errorf("NextRotation = %s, want the prepare time", got)
	}

	// At the prepare time the next one is stored but not used.
	clk.Set(ca.PrepareTime(first))
	if err := a.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	if !state() {
		t.Fatal("next intermediate not prepared at 40 % of the lifetime")
	}
	if !a.SigningCertificate().Equal(first) {
		t.Fatal("switched before half life")
	}
	if got := a.NextRotation(); !got.Equal(ca.ActivateTime(first)) {
		t.Errorf("NextRotation = %s, want the activation time", got)
	}
	prepared, _ := st.LoadCAState(ctx)

	// A leaf issued just before activation with the longest TTL still ends
	// before the intermediate that signed it.
	clk.Set(ca.ActivateTime(first).Add(-time.Second))
	iss, err := a.Sign(ctx, ca.SignRequest{CSR: csrPEM(t, p256(t), &x509.CertificateRequest{URIs: uris(fooID)}), TTL: ca.DefaultMaxLeafTTL, Identity: identity(fooID)})
	if err != nil {
		t.Fatal(err)
	}
	if leafOf(t, iss).NotAfter.After(first.NotAfter) || leafOf(t, iss).NotAfter.Sub(clk.Now()) != ca.DefaultMaxLeafTTL {
		t.Errorf("leaf NotAfter %s vs issuer %s", leafOf(t, iss).NotAfter, first.NotAfter)
	}

	// At half life the prepared one becomes active.
	clk.Set(ca.ActivateTime(first))
	if err := a.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	second := a.SigningCertificate()
	if second.Equal(first) {
		t.Fatal("no rotation at half life")
	}
	if string(second.Raw) != string(prepared.Next.CertDER) {
		t.Error("activated intermediate is not the prepared one")
	}
	if state() {
		t.Error("next slot not cleared after activation")
	}
	iss, err = a.Sign(ctx, ca.SignRequest{CSR: csrPEM(t, p256(t), &x509.CertificateRequest{URIs: uris(fooID)}), Identity: identity(fooID)})
	if err != nil {
		t.Fatal(err)
	}
	if err := leafOf(t, iss).CheckSignatureFrom(second); err != nil {
		t.Errorf("leaf after rotation not signed by the new intermediate: %v", err)
	}

	// Several lifetimes later, with Rotate run at each due time, every
	// intermediate is valid when it signs.
	for range 10 {
		clk.Set(a.NextRotation())
		if err := a.Rotate(ctx); err != nil {
			t.Fatal(err)
		}
		sc := a.SigningCertificate()
		if !clk.Now().Before(sc.NotAfter) || clk.Now().Before(sc.NotBefore) {
			t.Fatalf("active intermediate not valid at %s", clk.Now())
		}
		iss, err := a.Sign(ctx, ca.SignRequest{CSR: csrPEM(t, p256(t), &x509.CertificateRequest{URIs: uris(fooID)}), TTL: ca.DefaultMaxLeafTTL, Identity: identity(fooID)})
		if err != nil {
			t.Fatal(err)
		}
		if leafOf(t, iss).NotAfter.After(sc.NotAfter) {
			t.Fatal("leaf outlives its issuer")
		}
	}
}

// TestLeafClampedToIssuer: with a maximum TTL longer than the intermediate
// has left, the leaf ends with the intermediate, never after.
func TestLeafClampedToIssuer(t *testing.T) {
	clk := clocktest.New(t0)
	a := newAuthority(t, storetest.NewMem(), clk, func(c *ca.Config) {
		c.IntermediateTTL = 48 * time.Hour
		c.MaxTTL = 100 * time.Hour
	})
	iss, err := a.Sign(context.Background(), ca.SignRequest{CSR: csrPEM(t, p256(t), &x509.CertificateRequest{URIs: uris(fooID)}), TTL: 100 * time.Hour, Identity: identity(fooID)})
	if err != nil {
		t.Fatal(err)
	}
	if !leafOf(t, iss).NotAfter.Equal(a.SigningCertificate().NotAfter) {
		t.Errorf("leaf NotAfter %s, want clamped to issuer's %s", leafOf(t, iss).NotAfter, a.SigningCertificate().NotAfter)
	}
}

// TestRunRotatesOnTime drives the background loop with the fake clock.
func TestRunRotatesOnTime(t *testing.T) {
	clk := clocktest.New(t0)
	a := newAuthority(t, storetest.NewMem(), clk, nil)
	first := a.SigningCertificate()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()

	// Step the clock to each wake-up the loop asks for, until activation.
	deadline := time.Now().Add(10 * time.Second)
	for a.SigningCertificate().Equal(first) {
		if time.Now().After(deadline) {
			t.Fatal("Run did not rotate")
		}
		if clk.Waiters() > 0 {
			clk.Advance(time.Hour)
		}
		runtime.Gosched() // let the loop reach its wait; time itself is the fake clock
	}
	if clk.Now().Before(ca.ActivateTime(first)) {
		t.Errorf("rotated at %s, before the activation time %s", clk.Now(), ca.ActivateTime(first))
	}
	cancel()
	if err := <-done; err != context.Canceled {
		t.Errorf("Run returned %v", err)
	}
}

// TestRestartKeepsRootAndIntermediate: a second Authority on the same store
// picks up the same root and active intermediate.
func TestRestartKeepsRootAndIntermediate(t *testing.T) {
	st := storetest.NewMem()
	clk := clocktest.New(t0)
	a1 := newAuthority(t, st, clk, nil)
	clk.Advance(time.Hour)
	a2 := newAuthority(t, st, clk, nil)
	if !a1.Bundle().Equal(a2.Bundle()) {
		t.Error("root changed across restart")
	}
	if !a1.SigningCertificate().Equal(a2.SigningCertificate()) {
		t.Error("intermediate changed across restart")
	}
}

// TestRestartAfterLongDowntime: an intermediate that expired while the CA
// was down is replaced at start.
func TestRestartAfterLongDowntime(t *testing.T) {
	st := storetest.NewMem()
	clk := clocktest.New(t0)
	a1 := newAuthority(t, st, clk, nil)
	clk.Advance(30 * 24 * time.Hour)
	a2 := newAuthority(t, st, clk, nil)
	if a2.SigningCertificate().Equal(a1.SigningCertificate()) {
		t.Fatal("expired intermediate kept")
	}
	if !a1.Bundle().Equal(a2.Bundle()) {
		t.Error("root changed")
	}
	if _, err := a2.Sign(context.Background(), ca.SignRequest{CSR: csrPEM(t, p256(t), &x509.CertificateRequest{URIs: uris(fooID)}), Identity: identity(fooID)}); err != nil {
		t.Fatalf("Sign after downtime: %v", err)
	}
}

// TestPruneKeepsRecordsWithinRetention: records go once their certificate
// has been expired for longer than the retention, not before.
func TestPruneKeepsRecordsWithinRetention(t *testing.T) {
	ctx := context.Background()
	st := storetest.NewMem()
	clk := clocktest.New(t0)
	a := newAuthority(t, st, clk, func(c *ca.Config) { c.Retention = 48 * time.Hour })
	if _, err := a.Sign(ctx, ca.SignRequest{CSR: csrPEM(t, p256(t), fooCSR()), TTL: time.Hour, Identity: identity(fooID)}); err != nil {
		t.Fatal(err)
	}
	clk.Advance(time.Hour + 47*time.Hour) // expired 47h ago
	if p, err := a.Prune(ctx); err != nil || p.Issuances != 0 || numRecords(t, st) != 1 {
		t.Fatalf("Prune within retention = %+v, %v (records %d)", p, err, numRecords(t, st))
	}
	clk.Advance(2 * time.Hour) // expired 49h ago
	if p, err := a.Prune(ctx); err != nil || p.Issuances != 1 || numRecords(t, st) != 0 {
		t.Fatalf("Prune past retention = %+v, %v (records %d)", p, err, numRecords(t, st))
	}
}
