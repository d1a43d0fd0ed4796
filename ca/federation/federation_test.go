package federation

import (
	"bytes"
	"context"
	"crypto/x509"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshca/meshca/ca/bundle"
	"github.com/meshca/meshca/ca/federation/fedbundle"
	"github.com/meshca/meshca/ca/store"
	"github.com/meshca/meshca/internal/clock/clocktest"
	"github.com/meshca/meshca/internal/storetest"
)

var (
	tdB = spiffeid.RequireTrustDomainFromString("b.test")
	t0  = time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)
)

// fakeMetrics records what the federation reports.
type fakeMetrics struct {
	mu        sync.Mutex
	refreshed map[string]time.Time
	failed    map[string]int
}

func newFakeMetrics() *fakeMetrics {
	return &fakeMetrics{refreshed: map[string]time.Time{}, failed: map[string]int{}}
}

func (m *fakeMetrics) Refreshed(td string, t time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.refreshed[td] = t
}

func (m *fakeMetrics) Failed(td string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.failed[td]++
}

func (m *fakeMetrics) Sequence(string, uint64) {}

func (m *fakeMetrics) failures(td string) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.failed[td]
}

// newFed returns a Federation over st for peers, on clk.
func newFed(t *testing.T, st Store, clk *clocktest.Fake, m Metrics, peers ...Peer) *Federation {
	t.Helper()
	f, err := New(Config{Peers: peers, TrustDomain: own, Store: st, Clock: clk, Metrics: m,
		Roots: func() []*x509.Certificate { return nil }})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// TestNewRefusesOwnTrustDomain: a peer in the CA's own trust domain is
// refused by New as by Parse, whoever built the Config.
func TestNewRefusesOwnTrustDomain(t *testing.T) {
	_, err := New(Config{Peers: []Peer{{ID: own, TrustDomainConfig: TrustDomainConfig{TrustDomain: own.Name(), BundleFile: "/x"}}},
		TrustDomain: own, Store: storetest.NewMem(), Roots: func() []*x509.Certificate { return nil }})
	if err == nil || !strings.Contains(err.Error(), "own trust domain") {
		t.Fatalf("New with a peer in its own trust domain: %v", err)
	}
}

// webPeer is b.test behind e, https_web, trusted through its CA file.
func webPeer(t *testing.T, e *endpoint) Peer {
	return Peer{ID: tdB, TrustDomainConfig: TrustDomainConfig{TrustDomain: "b.test", BundleEndpointURL: e.srv.URL + "/",
		BundleEndpointProfile: bundle.ProfileWeb, CAFile: e.caFile(t, t.TempDir())}}
}

// TestRefresh: one fetch of a bundle endpoint, and what it refuses. A
// refused bundle is not served, and nothing is stored.
func TestRefresh(t *testing.T) {
	b := newTDCA(t, "b.test")
	c := newTDCA(t, "c.test")
	endpointID := spiffeid.RequireFromPath(tdB, "/meshca/bundle-endpoint")
	good := doc(t, tdB, 2*time.Minute, 7, b.root)
	tests := []struct {
		name    string
		peer    func(t *testing.T) (Peer, *endpoint)
		status  int
		body    []byte
		wantErr string
	}{
		{name: "https_web", peer: func(t *testing.T) (Peer, *endpoint) {
			e := newEndpoint(t, nil)
			return webPeer(t, e), e
		}, body: good},
		{name: "https_spiffe verified with the bootstrap bundle", peer: func(t *testing.T) (Peer, *endpoint) {
			cert := b.serverCert(t, endpointID)
			e := newEndpoint(t, &cert)
			return spiffePeer(t, e, endpointID, b), e
		}, body: good},
		{name: "https_spiffe endpoint with another SPIFFE ID", peer: func(t *testing.T) (Peer, *endpoint) {
			cert := b.serverCert(t, spiffeid.RequireFromPath(tdB, "/impostor"))
			e := newEndpoint(t, &cert)
			return spiffePeer(t, e, endpointID, b), e
		}, body: good, wantErr: "unexpected ID"},
		{name: "https_spiffe endpoint certified by another trust domain", peer: func(t *testing.T) (Peer, *endpoint) {
			cert := c.serverCert(t, endpointID)
			e := newEndpoint(t, &cert)
			return spiffePeer(t, e, endpointID, b), e
		}, body: good, wantErr: "certificate signed by unknown authority"},
		{name: "https_web with a certificate the roots do not trust", peer: func(t *testing.T) (Peer, *endpoint) {
			e := newEndpoint(t, nil)
			p := webPeer(t, e)
			p.CAFile = writeFile(t, t.TempDir(), "other.pem", certPEM(c.root))
			return p, e
		}, body: good, wantErr: "certificate"},
		{name: "another trust domain's bundle", peer: func(t *testing.T) (Peer, *endpoint) {
			e := newEndpoint(t, nil)
			return webPeer(t, e), e
		}, body: doc(t, tdB, 0, 1, c.root), wantErr: "is for trust domain c.test"},
		{name: "malformed JSON", peer: func(t *testing.T) (Peer, *endpoint) {
			e := newEndpoint(t, nil)
			return webPeer(t, e), e
		}, body: []byte(`{"keys": [`), wantErr: "unable to parse JWKS"},
		{name: "no X.509 authorities", peer: func(t *testing.T) (Peer, *endpoint) {
			e := newEndpoint(t, nil)
			return webPeer(t, e), e
		}, body: []byte(`{"keys": []}`), wantErr: "no X.509 authorities"},
		{name: "10 MiB body", peer: func(t *testing.T) (Peer, *endpoint) {
			e := newEndpoint(t, nil)
			return webPeer(t, e), e
		}, body: append(append([]byte(`{"keys": [], "x": "`), bytes.Repeat([]byte("a"), 10<<20)...), `"}`...), wantErr: "larger than"},
		{name: "HTTP error", peer: func(t *testing.T) (Peer, *endpoint) {
			e := newEndpoint(t, nil)
			return webPeer(t, e), e
		}, status: http.StatusServiceUnavailable, body: good, wantErr: "503"},
		{name: "redirect to a good bundle", peer: func(t *testing.T) (Peer, *endpoint) {
			e := newEndpoint(t, nil)
			return webPeer(t, e), e
		}, status: http.StatusFound, body: good, wantErr: "302"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, e := tt.peer(t)
			status := tt.status
			if status == 0 {
				status = http.StatusOK
			}
			e.set(status, tt.body)
			st := storetest.NewMem()
			f := newFed(t, st, clocktest.New(t0), nil, p)
			wait, err := f.refresh(context.Background(), f.peers[0])
			stored, lerr := st.FederatedBundles(context.Background())
			if lerr != nil {
				t.Fatal(lerr)
			}
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("refresh error = %v, want one containing %q", err, tt.wantErr)
				}
				if len(f.Bundles()) != 0 || len(stored) != 0 {
					t.Fatalf("a refused bundle is served (%d) or stored (%d)", len(f.Bundles()), len(stored))
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if wait != 2*time.Minute {
				t.Errorf("next refresh in %s, want the refresh hint, 2m", wait)
			}
			got := f.Bundles()[tdB]
			if got == nil || !got.X509Bundle().Equal(spiffebundle.FromX509Authorities(tdB, []*x509.Certificate{b.root}).X509Bundle()) {
				t.Fatalf("served %v, want b.test's root", got)
			}
			if len(stored) != 1 || stored[0].TrustDomain != "b.test" || stored[0].Source != store.FederatedFromEndpoint || !stored[0].RefreshedAt.Equal(t0) {
				t.Fatalf("stored %+v", stored)
			}
		})
	}
}

// spiffePeer is b.test behind e, https_spiffe for id, bootstrapped with
// ca's root.
func spiffePeer(t *testing.T, e *endpoint, id spiffeid.ID, ca *tdCA) Peer {
	t.Helper()
	return Peer{ID: tdB, EndpointID: id, TrustDomainConfig: TrustDomainConfig{TrustDomain: "b.test", BundleEndpointURL: e.srv.URL + "/",
		BundleEndpointProfile: bundle.ProfileSPIFFE, EndpointSPIFFEID: id.String(),
		BundleFile: writeFile(t, t.TempDir(), "b.json", doc(t, tdB, 0, 1, ca.root))}}
}

// TestInterval: the refresh hint is honoured within the bounds.
func TestInterval(t *testing.T) {
	f := newFed(t, storetest.NewMem(), clocktest.New(t0), nil)
	for _, tt := range []struct {
		name string
		hint time.Duration
		want time.Duration
	}{
		{"no hint: five minutes, as SPIRE", 0, 5 * time.Minute},
		{"a hint within the bounds", 2 * time.Minute, 2 * time.Minute},
		{"a hint below the least", time.Second, DefaultMinRefresh},
		{"a hint over the most", 48 * time.Hour, DefaultMaxRefresh},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := f.interval(tt.hint); got != tt.want {
				t.Fatalf("interval(%s) = %s, want %s", tt.hint, got, tt.want)
			}
		})
	}
}

// TestRunKeepsLastGoodBundle: while the endpoint is down, or serves
// garbage, the last good bundle stays served and stored; failures are
// counted and retried with backoff; the next good bundle replaces it.
func TestRunKeepsLastGoodBundle(t *testing.T) {
	b := newTDCA(t, "b.test")
	b2 := newTDCA(t, "b.test")
	e := newEndpoint(t, nil)
	e.set(http.StatusOK, doc(t, tdB, time.Minute, 1, b.root))
	st := storetest.NewMem()
	clk := clocktest.New(t0)
	m := newFakeMetrics()
	f := newFed(t, st, clk, m, webPeer(t, e))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = f.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	served := func() []*x509.Certificate {
		if b := f.Bundles()[tdB]; b != nil {
			return b.X509Authorities()
		}
		return nil
	}
	clocktest.Eventually(t, "first fetch", func() bool { return len(served()) == 1 && clk.Waiters() == 1 })

	e.set(http.StatusInternalServerError, nil)
	clk.Advance(time.Minute)
	clocktest.Eventually(t, "a failure counted", func() bool { return m.failures("b.test") == 1 && clk.Waiters() == 1 })
	e.set(http.StatusOK, []byte("{not json"))
	clk.Advance(DefaultRetryMin)
	clocktest.Eventually(t, "a second failure counted", func() bool { return m.failures("b.test") == 2 && clk.Waiters() == 1 })
	if got := served(); len(got) != 1 || !got[0].Equal(b.root) {
		t.Fatal("the last good bundle is no longer served after failed fetches")
	}
	if recs, _ := st.FederatedBundles(ctx); len(recs) != 1 || !recs[0].RefreshedAt.Equal(t0) {
		t.Fatalf("stored after failures: %+v", recs)
	}
	// The retry after two failures waits twice as long, still within the
	// refresh interval (a minute).
	clk.Advance(DefaultRetryMin)
	e.set(http.StatusOK, doc(t, tdB, time.Minute, 2, b.root, b2.root))
	if hits := e.hits.Load(); hits != 3 {
		t.Fatalf("%d fetches before the backoff ended, want 3", hits)
	}
	clk.Advance(DefaultRetryMin)
	clocktest.Eventually(t, "the new bundle", func() bool { return len(served()) == 2 })
	recs, err := st.FederatedBundles(ctx)
	if err != nil || len(recs) != 1 || !recs[0].ChangedAt.Equal(t0.Add(time.Minute+3*DefaultRetryMin)) {
		t.Fatalf("stored %+v, %v", recs, err)
	}
}

// TestRunStaticFile: a static bundle file is stored at start and read
// again when it changes; a broken rewrite keeps the last good bundle.
func TestRunStaticFile(t *testing.T) {
	b := newTDCA(t, "b.test")
	b2 := newTDCA(t, "b.test")
	dir := t.TempDir()
	path := writeFile(t, dir, "b.json", doc(t, tdB, 0, 1, b.root))
	st := storetest.NewMem()
	clk := clocktest.New(t0)
	m := newFakeMetrics()
	f := newFed(t, st, clk, m, Peer{ID: tdB, TrustDomainConfig: TrustDomainConfig{TrustDomain: "b.test", BundleFile: path}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = f.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	count := func() int {
		if b := f.Bundles()[tdB]; b != nil {
			return len(b.X509Authorities())
		}
		return 0
	}
	clocktest.Eventually(t, "the file read", func() bool { return count() == 1 && clk.Waiters() == 1 })
	writeFile(t, dir, "b.json", []byte("garbage"))
	clk.Advance(DefaultFileInterval)
	clocktest.Eventually(t, "the broken file refused", func() bool { return m.failures("b.test") == 1 && clk.Waiters() == 1 })
	if count() != 1 {
		t.Fatal("a broken file replaced the bundle")
	}
	writeFile(t, dir, "b.json", doc(t, tdB, 0, 2, b.root, b2.root))
	clk.Advance(DefaultFileInterval)
	clocktest.Eventually(t, "the changed file", func() bool { return count() == 2 })
	recs, err := st.FederatedBundles(ctx)
	if err != nil || len(recs) != 1 || recs[0].Source != store.FederatedFromFile {
		t.Fatalf("stored %+v, %v", recs, err)
	}
}

// TestFollowerReadsTheStore: a replica that does not fetch serves what the
// fetching replica stored, at its next reload; the leader deletes the
// bundles of trust domains no longer configured; an https_spiffe peer's
// bootstrap bundle is stored until the first fetch.
func TestFollowerReadsTheStore(t *testing.T) {
	b := newTDCA(t, "b.test")
	endpointID := spiffeid.RequireFromPath(tdB, "/meshca/bundle-endpoint")
	cert := b.serverCert(t, endpointID)
	e := newEndpoint(t, &cert)
	e.set(http.StatusServiceUnavailable, nil)
	st := storetest.NewMem()
	ctx := context.Background()
	stale := store.FederatedBundle{TrustDomain: "gone.test", Bundle: doc(t, spiffeid.RequireTrustDomainFromString("gone.test"), 0, 1, b.root),
		Source: store.FederatedFromEndpoint, RefreshedAt: t0, ChangedAt: t0}
	if err := st.SaveFederatedBundle(ctx, stale); err != nil {
		t.Fatal(err)
	}
	p := spiffePeer(t, e, endpointID, b)
	leaderClock, followerClock := clocktest.New(t0), clocktest.New(t0)
	leader := newFed(t, st, leaderClock, nil, p)
	follower := newFed(t, st, followerClock, nil, p)
	if err := follower.Load(ctx); err != nil || len(follower.Bundles()) != 0 {
		t.Fatalf("before any fetch the follower serves %d bundles (%v)", len(follower.Bundles()), err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { _ = leader.Run(runCtx) })
	wg.Go(func() { follower.Watch(runCtx) })
	defer func() { cancel(); wg.Wait() }()

	clocktest.Eventually(t, "the bootstrap bundle stored, the stale one deleted", func() bool {
		recs, err := st.FederatedBundles(ctx)
		return err == nil && len(recs) == 1 && recs[0].TrustDomain == "b.test" && recs[0].Source == store.FederatedFromBootstrap
	})
	e.set(http.StatusOK, doc(t, tdB, time.Minute, 5, b.root))
	clocktest.Eventually(t, "the leader waits", func() bool { return leaderClock.Waiters() == 1 })
	leaderClock.Advance(DefaultRetryMin)
	clocktest.Eventually(t, "the fetched bundle stored", func() bool {
		recs, err := st.FederatedBundles(ctx)
		return err == nil && len(recs) == 1 && recs[0].Source == store.FederatedFromEndpoint
	})
	clocktest.Eventually(t, "the follower waits", func() bool { return followerClock.Waiters() == 1 })
	followerClock.Advance(DefaultReloadInterval)
	clocktest.Eventually(t, "the follower serves it", func() bool {
		got := follower.Bundles()[tdB]
		if got == nil {
			return false
		}
		seq, _ := got.SequenceNumber()
		return seq == 5
	})
}

// FuzzParseBundle reads arbitrary bytes as b.test's bundle document, as
// fetched from its endpoint, and checks that fedbundle.Parse (here, beside
// the helpers that make bundle documents) never panics and
// that what it accepts is a bundle of b.test with at least one X.509
// authority and none that names another trust domain.
func FuzzParseBundle(f *testing.F) {
	b, c := newTDCA(f, "b.test"), newTDCA(f, "c.test")
	f.Add(doc(f, tdB, time.Minute, 3, b.root))
	f.Add(doc(f, tdB, 0, 0, b.root, c.root))
	f.Add(doc(f, tdB, 0, 0))
	f.Add([]byte(`{"keys": [{"kty": "EC", "use": "x509-svid", "crv": "P-256", "x5c": ["AA=="]}]}`))
	f.Add([]byte(`{"keys": [`))
	f.Fuzz(func(t *testing.T, data []byte) {
		got, err := fedbundle.Parse(tdB, data)
		if err != nil {
			return
		}
		if got.TrustDomain() != tdB || len(got.X509Authorities()) == 0 {
			t.Fatalf("accepted a bundle of %s with %d X.509 authorities", got.TrustDomain(), len(got.X509Authorities()))
		}
		for _, a := range got.X509Authorities() {
			for _, u := range a.URIs {
				if id, err := spiffeid.FromURI(u); err == nil && !id.MemberOf(tdB) {
					t.Fatalf("accepted an authority naming %s", id)
				}
			}
		}
	})
}

// TestEndpointOutsideItsTrustDomain: an https_spiffe endpoint whose SPIFFE
// ID is in the CA's own trust domain is verified with the CA's roots, and
// one in another federated trust domain with that trust domain's current
// bundle: refused while there is none, accepted once it is served.
func TestEndpointOutsideItsTrustDomain(t *testing.T) {
	a, b, c := newTDCA(t, own.Name()), newTDCA(t, "b.test"), newTDCA(t, "c.test")
	good := doc(t, tdB, 0, 1, b.root)
	// endpointFor serves good as id, certified by ca, and returns b.test's
	// peer behind it.
	endpointFor := func(t *testing.T, ca *tdCA, id spiffeid.ID) Peer {
		cert := ca.serverCert(t, id)
		e := newEndpoint(t, &cert)
		e.set(http.StatusOK, good)
		return Peer{ID: tdB, EndpointID: id, TrustDomainConfig: TrustDomainConfig{TrustDomain: "b.test", BundleEndpointURL: e.srv.URL + "/",
			BundleEndpointProfile: bundle.ProfileSPIFFE, EndpointSPIFFEID: id.String()}}
	}
	newFedRoots := func(t *testing.T, roots []*x509.Certificate, peers ...Peer) *Federation {
		t.Helper()
		f, err := New(Config{Peers: peers, TrustDomain: own, Store: storetest.NewMem(), Clock: clocktest.New(t0),
			Roots: func() []*x509.Certificate { return roots }})
		if err != nil {
			t.Fatal(err)
		}
		return f
	}
	wantErr := func(t *testing.T, err error, want string) {
		t.Helper()
		if want == "" && err != nil || want != "" && (err == nil || !strings.Contains(err.Error(), want)) {
			t.Fatalf("refresh error = %v, want %q", err, want)
		}
	}
	relay := spiffeid.RequireFromPath(own, "/relay")

	t.Run("in our own trust domain, by our roots", func(t *testing.T) {
		f := newFedRoots(t, []*x509.Certificate{a.root}, endpointFor(t, a, relay))
		_, err := f.refresh(t.Context(), f.peers[0])
		wantErr(t, err, "")
	})
	t.Run("in our own trust domain, certified by another", func(t *testing.T) {
		f := newFedRoots(t, []*x509.Certificate{a.root}, endpointFor(t, b, relay))
		_, err := f.refresh(t.Context(), f.peers[0])
		wantErr(t, err, "certificate signed by unknown authority")
	})
	t.Run("in another federated trust domain, by its bundle", func(t *testing.T) {
		static := Peer{ID: c.td, TrustDomainConfig: TrustDomainConfig{TrustDomain: "c.test",
			BundleFile: writeFile(t, t.TempDir(), "c.json", doc(t, c.td, 0, 1, c.root))}}
		f := newFedRoots(t, []*x509.Certificate{a.root}, endpointFor(t, c, spiffeid.RequireFromPath(c.td, "/relay")), static)
		_, err := f.refresh(t.Context(), f.peers[0])
		wantErr(t, err, "no bundle of c.test")
		if _, err := f.refresh(t.Context(), f.peers[1]); err != nil {
			t.Fatal(err)
		}
		_, err = f.refresh(t.Context(), f.peers[0])
		wantErr(t, err, "")
	})
}
