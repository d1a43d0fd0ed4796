package sds_test

import (
	"context"
	"crypto/x509"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/meshca/meshca/ca/client"
	"github.com/meshca/meshca/internal/clock/clocktest"
	"github.com/meshca/meshca/internal/testca"
	"github.com/meshca/meshca/sds"
)

var partner = spiffeid.RequireTrustDomainFromString("partner.example")

// partnerRoots counts the partner's roots in s's federated bundles.
func partnerRoots(s *sds.SVID) int {
	if b := s.Federated[partner]; b != nil {
		return len(b.X509Authorities())
	}
	return 0
}

// FederationCA is satisfied by the real client.
var _ sds.FederationCA = (*client.Client)(nil)

func federated(seq uint64, roots ...*x509.Certificate) map[spiffeid.TrustDomain]*spiffebundle.Bundle {
	b := spiffebundle.FromX509Authorities(partner, roots)
	b.SetSequenceNumber(seq)
	return map[spiffeid.TrustDomain]*spiffebundle.Bundle{partner: b}
}

// firstSVID runs e's Manager and returns its first SVID and a
// subscription.
func firstSVID(t *testing.T, e *env) (*sds.SVID, <-chan struct{}) {
	t.Helper()
	changed, unsubscribe := e.m.Subscribe()
	t.Cleanup(unsubscribe)
	e.run(t)
	recv(t, changed)
	return e.m.Current(), changed
}

// TestSetFederated: new federated bundles republish the current SVID with
// them (one version more, same certificate), bundles with the same
// authorities do not, the workload's own trust domain is never among
// them, and a renewal keeps them.
func TestSetFederated(t *testing.T) {
	e := newEnv(t, nil)
	first, changed := firstSVID(t, e)
	if first.Federated != nil {
		t.Fatalf("federated bundles before any: %v", first.Federated)
	}
	p1, p2 := testca.New(t), testca.New(t)

	steps := []struct {
		name      string
		set       map[spiffeid.TrustDomain]*spiffebundle.Bundle
		push      bool
		wantRoots int // of partner.example; 0: none
	}{
		{"a federated trust domain", federated(1, p1.Root), true, 1},
		{"the same authorities, a new sequence", federated(2, p1.Root), false, 1},
		{"a new root", federated(3, p1.Root, p2.Root), true, 2},
		{"our own trust domain is left out", func() map[spiffeid.TrustDomain]*spiffebundle.Bundle {
			m := federated(3, p1.Root, p2.Root)
			m[td] = spiffebundle.FromX509Authorities(td, []*x509.Certificate{p1.Root})
			return m
		}(), false, 2},
		{"a bundle of our own trust domain under another name is left out", func() map[spiffeid.TrustDomain]*spiffebundle.Bundle {
			m := federated(3, p1.Root, p2.Root)
			m[spiffeid.RequireTrustDomainFromString("liar.example")] = spiffebundle.FromX509Authorities(td, []*x509.Certificate{p1.Root})
			return m
		}(), false, 2},
		{"none any more", nil, true, 0},
	}
	for _, st := range steps {
		before := e.m.Current()
		e.m.SetFederated(st.set)
		if !st.push {
			noRecv(t, changed)
			if e.m.Current() != before {
				t.Fatalf("%s: the SVID was republished", st.name)
			}
			continue
		}
		recv(t, changed)
		cur := e.m.Current()
		if cur.Version != before.Version+1 || cur.Certificates[0] != first.Certificates[0] {
			t.Fatalf("%s: version %d (want %d), same leaf %v", st.name, cur.Version, before.Version+1, cur.Certificates[0] == first.Certificates[0])
		}
		if _, ok := cur.Federated[td]; ok {
			t.Fatalf("%s: our own trust domain among the federated", st.name)
		}
		if got := partnerRoots(cur); got != st.wantRoots || (st.wantRoots == 0) != (cur.Federated == nil) {
			t.Fatalf("%s: %d partner roots (federated %v), want %d", st.name, got, cur.Federated, st.wantRoots)
		}
	}
	// A renewal carries the bundles held.
	e.m.SetFederated(federated(4, p1.Root))
	recv(t, changed)
	held := e.m.Current()
	e.nextWait(t) // the Manager waits for the renewal time
	e.clk.Advance(leafTTL / 2)
	recv(t, changed)
	renewed := e.m.Current()
	if renewed.Certificates[0] == held.Certificates[0] || renewed.Version != held.Version+1 || partnerRoots(renewed) != 1 {
		t.Fatalf("renewal: new leaf %v, version %d after %d, federated %v", renewed.Certificates[0] != held.Certificates[0], renewed.Version, held.Version, renewed.Federated)
	}
}

// fakeFedCA answers FederatedBundles from a script, one answer per call.
type fakeFedCA struct {
	mu      sync.Mutex
	answers []fedAnswer
	calls   int
	own     spiffeid.TrustDomain
}

type fedAnswer struct {
	bundles map[spiffeid.TrustDomain]*spiffebundle.Bundle
	err     error
}

func (f *fakeFedCA) FederatedBundles(_ context.Context, own spiffeid.TrustDomain) (map[spiffeid.TrustDomain]*spiffebundle.Bundle, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.own = own
	a := f.answers[min(f.calls, len(f.answers)-1)]
	f.calls++
	return a.bundles, a.err
}

func (f *fakeFedCA) callCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls
}

// TestRunFederation: the bundles the CA answers are served; a failed call
// keeps them and is retried after the backoff; a CA without the bundle
// service (Unimplemented) changes nothing and is asked again at the next
// tick.
func TestRunFederation(t *testing.T) {
	e := newEnv(t, nil)
	_, _ = firstSVID(t, e)
	p1, p2 := testca.New(t), testca.New(t)
	fca := &fakeFedCA{answers: []fedAnswer{
		{bundles: federated(1, p1.Root)},
		{err: status.Error(codes.Unavailable, "CA down")},
		{bundles: federated(2, p1.Root, p2.Root)},
		{err: status.Error(codes.Unimplemented, "unknown service")},
	}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.m.RunFederation(ctx, fca, time.Minute) }()
	defer func() {
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("RunFederation returned %v", err)
		}
	}()
	roots := func() int { return partnerRoots(e.m.Current()) }
	waitCall := func(n int) {
		t.Helper()
		clocktest.Eventually(t, "the call", func() bool { return fca.callCount() >= n && e.clk.Waiters() >= 2 })
	}
	clocktest.Eventually(t, "the first bundles", func() bool { return roots() == 1 })
	if fca.own != td {
		t.Errorf("asked for the bundles of all but %s, want all but %s", fca.own, td)
	}
	waitCall(1)
	e.clk.Advance(time.Minute)
	waitCall(2)
	if roots() != 1 {
		t.Fatal("a failed call changed the bundles")
	}
	e.clk.Advance(sds.DefaultBackoffMin) // the first retry: the backoff's floor (Rand 0.5: no jitter)
	clocktest.Eventually(t, "the new bundles", func() bool { return roots() == 2 })
	waitCall(3)
	e.clk.Advance(time.Minute)
	waitCall(4)
	if roots() != 2 {
		t.Fatal("an Unimplemented answer changed the bundles")
	}
}
