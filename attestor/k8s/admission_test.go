package k8s_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshca/meshca/attestor"
	"github.com/meshca/meshca/attestor/k8s"
	"github.com/meshca/meshca/internal/clock/clocktest"
)

// fakeServiceAccounts is the API server's ServiceAccounts: those in exist
// are found; while err is set every lookup fails with it; while hang is set
// every lookup waits for its context to end. It counts lookups.
type fakeServiceAccounts struct {
	mu    sync.Mutex
	exist map[string]bool
	err   error
	hang  bool
	calls int
}

func newFakeSAs(names ...string) *fakeServiceAccounts {
	f := &fakeServiceAccounts{exist: map[string]bool{}}
	for _, n := range names {
		f.exist[n] = true
	}
	return f
}

func (f *fakeServiceAccounts) Exists(ctx context.Context, ns, name string) (bool, error) {
	f.mu.Lock()
	f.calls++
	err, hang := f.err, f.hang
	f.mu.Unlock()
	if hang {
		<-ctx.Done()
		return false, ctx.Err()
	}
	if err != nil {
		return false, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.exist[ns+"/"+name], nil
}

func (f *fakeServiceAccounts) set(name string, exists bool, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if name != "" {
		f.exist[name] = exists
	}
	f.err = err
}

func (f *fakeServiceAccounts) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls
}

var errDown = errors.New("dial tcp 10.96.0.1:443: connect: connection refused")

func sa(ns, name string) spiffeid.ID { return spiffeid.RequireFromPath(td, "/ns/"+ns+"/sa/"+name) }

// TestAdmissionLists (finding 2): the allow and deny lists of first
// issuance apply to renewals of identities of the Kubernetes shape, and
// only to those.
func TestAdmissionLists(t *testing.T) {
	tests := []struct {
		name    string
		cfg     k8s.Config
		id      spiffeid.ID
		wantErr error
	}{
		{name: "allowed", id: sa("foo", "bar")},
		{name: "default deny", id: sa("kube-system", "coredns"), wantErr: attestor.ErrPermissionDenied},
		{name: "denied namespace", cfg: k8s.Config{Deny: []string{"kube-system", "denied"}}, id: sa("denied", "x"), wantErr: attestor.ErrPermissionDenied},
		{name: "denied ServiceAccount", cfg: k8s.Config{Deny: []string{"foo/b*"}}, id: sa("foo", "bar"), wantErr: attestor.ErrPermissionDenied},
		{name: "outside Allow", cfg: k8s.Config{Allow: []string{"team-*"}}, id: sa("foo", "bar"), wantErr: attestor.ErrPermissionDenied},
		{name: "inside Allow", cfg: k8s.Config{Allow: []string{"team-*", "foo/bar"}}, id: sa("foo", "bar")},
		{name: "Deny wins over Allow", cfg: k8s.Config{Allow: []string{"foo"}, Deny: []string{"foo/bar"}}, id: sa("foo", "bar"), wantErr: attestor.ErrPermissionDenied},
		{name: "Kubernetes shape in another trust domain", cfg: k8s.Config{Deny: []string{"denied"}},
			id: spiffeid.RequireFromString("spiffe://other.org/ns/denied/sa/x"), wantErr: attestor.ErrPermissionDenied},
		{name: "join-token identity: not of the shape", cfg: k8s.Config{Deny: []string{"*"}}, id: spiffeid.RequireFromPath(td, "/vm/web-1")},
		{name: "longer path: not of the shape", cfg: k8s.Config{Deny: []string{"*"}}, id: spiffeid.RequireFromPath(td, "/ns/denied/sa/x/y")},
		{name: "shorter path: not of the shape", cfg: k8s.Config{Deny: []string{"*"}}, id: spiffeid.RequireFromPath(td, "/ns/denied")},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rec := newRecorder()
			tc.cfg.TrustDomain, tc.cfg.Metrics = td, rec
			a, err := k8s.NewAdmission(k8s.AdmissionConfig{Config: tc.cfg})
			if err != nil {
				t.Fatal(err)
			}
			err = a.Admit(context.Background(), tc.id)
			if tc.wantErr == nil {
				if err != nil {
					t.Fatalf("Admit(%v) = %v, want nil", tc.id, err)
				}
				return
			}
			if !errors.Is(err, tc.wantErr) || !strings.HasPrefix(err.Error(), "k8s: ") || !strings.Contains(err.Error(), "may not get certificates") {
				t.Fatalf("Admit(%v) = %v, want k8s: ...%v...may not get certificates", tc.id, err, tc.wantErr)
			}
			if rec.renewalCount("denied") != 1 {
				t.Errorf("Renewal(denied) counted %d, want 1", rec.renewalCount("denied"))
			}
		})
	}
}

type admFixture struct {
	clk *clocktest.Fake
	sas *fakeServiceAccounts
	rec *recorder
	a   *k8s.Admission
}

func newAdmission(t *testing.T, lc k8s.LookupConfig, names ...string) *admFixture {
	t.Helper()
	f := &admFixture{clk: clocktest.New(epoch), sas: newFakeSAs(names...), rec: newRecorder()}
	a, err := k8s.NewAdmission(k8s.AdmissionConfig{Config: k8s.Config{TrustDomain: td, Clock: f.clk, Metrics: f.rec}, ServiceAccounts: f.sas, Lookup: lc})
	if err != nil {
		t.Fatal(err)
	}
	f.a = a
	return f
}

// step advances the clock, changes the fake API server, renews foo/bar, and
// checks the result and the lookups sent so far.
type step struct {
	what        string
	advance     time.Duration
	change      func(*fakeServiceAccounts)
	wantErr     error // nil: admitted
	wantMsg     string
	wantLookups int
}

func (f *admFixture) run(t *testing.T, steps []step) {
	t.Helper()
	for _, s := range steps {
		f.clk.Advance(s.advance)
		if s.change != nil {
			s.change(f.sas)
		}
		err := f.a.Admit(context.Background(), sa("foo", "bar"))
		switch {
		case s.wantErr == nil && err != nil:
			t.Errorf("%s: Admit() = %v, want admitted", s.what, err)
		case s.wantErr != nil && (!errors.Is(err, s.wantErr) || !strings.Contains(err.Error(), s.wantMsg)):
			t.Errorf("%s: Admit() = %v, want %v containing %q", s.what, err, s.wantErr, s.wantMsg)
		}
		if got := f.sas.count(); got != s.wantLookups {
			t.Errorf("%s: %d lookups, want %d", s.what, got, s.wantLookups)
		}
	}
}

// TestAdmissionServiceAccountDeleted (finding 2): a renewal after the
// ServiceAccount is deleted is refused once the lookup found it is older
// than the TTL (the staleness bound), and the refusal is remembered for
// NegativeTTL.
func TestAdmissionServiceAccountDeleted(t *testing.T) {
	f := newAdmission(t, k8s.LookupConfig{}, "foo/bar")
	deleted := func(s *fakeServiceAccounts) { s.set("foo/bar", false, nil) }
	f.run(t, []step{
		{what: "exists", wantLookups: 1},
		{what: "within the TTL: from the cache", advance: 59 * time.Second, wantLookups: 1},
		{what: "deleted, within the TTL: still admitted (the staleness bound)", change: deleted, advance: 999 * time.Millisecond, wantLookups: 1},
		{what: "at the TTL: asked again, refused", advance: time.Millisecond, wantErr: attestor.ErrPermissionDenied, wantMsg: "k8s: ServiceAccount foo/bar no longer exists", wantLookups: 2},
		{what: "refusal remembered", advance: 4 * time.Second, wantErr: attestor.ErrPermissionDenied, wantLookups: 2},
		{what: "recreated, after NegativeTTL: admitted", advance: time.Second, change: func(s *fakeServiceAccounts) { s.set("foo/bar", true, nil) }, wantLookups: 3},
	})
	if f.rec.renewalCount("deleted") != 2 || f.rec.lookupCount("not-found") != 1 || f.rec.lookupCount("found") != 2 {
		t.Errorf("metrics: renewals %v, lookups %v", f.rec.renewals, f.rec.lookups)
	}
}

// TestAdmissionNeverExisted: an SVID whose ServiceAccount is unknown to the
// API server is refused on its first renewal.
func TestAdmissionNeverExisted(t *testing.T) {
	f := newAdmission(t, k8s.LookupConfig{})
	f.run(t, []step{{what: "unknown", wantErr: attestor.ErrPermissionDenied, wantMsg: "no longer exists", wantLookups: 1}})
}

// TestAdmissionAPIServerDown (failure drill: the apiserver down, renewals
// over mTLS go on): a ServiceAccount found before renews while the API
// server cannot be reached, up to MaxStale after it was last found; one
// never found is refused as unavailable (retry), not admitted blind; once
// the API server answers, everything is as before.
func TestAdmissionAPIServerDown(t *testing.T) {
	down := func(s *fakeServiceAccounts) { s.set("", false, errDown) }
	up := func(s *fakeServiceAccounts) { s.set("", false, nil) }
	t.Run("seen before", func(t *testing.T) {
		f := newAdmission(t, k8s.LookupConfig{MaxStale: time.Hour}, "foo/bar")
		f.run(t, []step{
			{what: "found", wantLookups: 1},
			{what: "down, past the TTL: admitted on the earlier lookup", advance: 2 * time.Minute, change: down, wantLookups: 2},
			{what: "down, still within MaxStale", advance: 57 * time.Minute, wantLookups: 3},
			{what: "down, MaxStale after it was found: unavailable", advance: time.Minute, wantErr: attestor.ErrUnavailable, wantMsg: "cannot confirm that ServiceAccount foo/bar still exists", wantLookups: 4},
			{what: "up again: admitted", change: up, wantLookups: 5},
		})
		if f.rec.renewalCount("stale") != 2 || f.rec.renewalCount("unavailable") != 1 || f.rec.lookupCount("error") != 3 {
			t.Errorf("metrics: renewals %v, lookups %v", f.rec.renewals, f.rec.lookups)
		}
	})
	t.Run("never seen", func(t *testing.T) {
		f := newAdmission(t, k8s.LookupConfig{}, "foo/bar")
		f.run(t, []step{
			{what: "down, never found: unavailable", change: down, wantErr: attestor.ErrUnavailable, wantMsg: "connection refused", wantLookups: 1},
			{what: "up again: admitted", change: up, wantLookups: 2},
		})
	})
	t.Run("not found before", func(t *testing.T) {
		f := newAdmission(t, k8s.LookupConfig{})
		f.run(t, []step{
			{what: "not found", wantErr: attestor.ErrPermissionDenied, wantLookups: 1},
			{what: "down after NegativeTTL: unavailable, never admitted", advance: 10 * time.Second, change: down, wantErr: attestor.ErrUnavailable, wantLookups: 2},
		})
	})
}

// TestAdmissionLookupBounded: a lookup the API server never answers fails
// after the lookup timeout (5s), so a renewal is not held for the whole
// request; concurrent renewals of one ServiceAccount share one lookup.
func TestAdmissionLookupBounded(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newAdmission(t, k8s.LookupConfig{}, "foo/bar")
		f.sas.hang = true
		start := time.Now()
		var wg sync.WaitGroup
		errs := make([]error, 10)
		for i := range errs {
			wg.Go(func() { errs[i] = f.a.Admit(context.Background(), sa("foo", "bar")) })
		}
		wg.Wait()
		if took := time.Since(start); took != 5*time.Second {
			t.Errorf("a hanging lookup took %v, want 5s", took)
		}
		for i, err := range errs {
			if !errors.Is(err, attestor.ErrUnavailable) || !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("Admit() #%d = %v, want ErrUnavailable from the deadline", i, err)
			}
		}
		if got := f.sas.count(); got != 1 {
			t.Errorf("%d lookups for 10 concurrent renewals, want 1", got)
		}
	})
}

func TestAdmissionConfig(t *testing.T) {
	if _, err := k8s.NewAdmission(k8s.AdmissionConfig{Config: k8s.Config{TrustDomain: td}, Lookup: k8s.LookupConfig{Size: -1}}); err == nil || !strings.Contains(err.Error(), "k8s: ServiceAccount cache size -1") {
		t.Errorf("negative size: %v", err)
	}
	if _, err := k8s.NewAdmission(k8s.AdmissionConfig{}); err == nil || !strings.Contains(err.Error(), "trust domain") {
		t.Errorf("no trust domain: %v", err)
	}
	if _, err := k8s.NewAdmission(k8s.AdmissionConfig{Config: k8s.Config{TrustDomain: td, Deny: []string{"[x"}}}); err == nil || !strings.Contains(err.Error(), "pattern") {
		t.Errorf("bad pattern: %v", err)
	}
}
