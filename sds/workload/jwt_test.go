package workload

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	workloadpb "github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/metadata"

	"github.com/meshca/meshca/internal/clock/clocktest"
	"github.com/meshca/meshca/internal/jwtsvid"
	"github.com/meshca/meshca/sds"
)

// fakeJWTCA signs with its current key and publishes its keys; mints
// counts MintJWTSVID calls, fetches JWTBundle calls.
type fakeJWTCA struct {
	t       *testing.T
	clk     *clocktest.Fake
	mu      sync.Mutex
	key     crypto.Signer
	kid     string
	keys    map[string]crypto.PublicKey
	mints   int
	fetches int
}

// newFakeJWTCA returns a fakeJWTCA with one key.
func newFakeJWTCA(t *testing.T, clk *clocktest.Fake) *fakeJWTCA {
	f := &fakeJWTCA{t: t, clk: clk, keys: map[string]crypto.PublicKey{}}
	f.rotate()
	return f
}

// newJWTServer returns a Server whose JWT profile is a JWTCache of ca,
// and a context with the security header.
func newJWTServer(t *testing.T, ca *fakeJWTCA) (*sds.JWTCache, *Server, context.Context) {
	cache, err := sds.NewJWTCache(sds.JWTConfig{ID: jwtID, CA: ca, Clock: ca.clk})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := New(Config{Source: sds.NewStaticSource(nil), JWT: cache})
	if err != nil {
		t.Fatal(err)
	}
	return cache, srv, metadata.NewIncomingContext(context.Background(), metadata.Pairs(securityHeader, "true"))
}

func (f *fakeJWTCA) rotate() {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		f.t.Fatal(err)
	}
	kid, _ := jwtsvid.KeyID(k.Public())
	f.mu.Lock()
	defer f.mu.Unlock()
	f.key, f.kid = k, kid
	f.keys[kid] = k.Public()
}

func (f *fakeJWTCA) MintJWTSVID(_ context.Context, aud []string, _ string) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.mints++
	now := f.clk.Now()
	return jwtsvid.Sign(f.key, f.kid, jwtsvid.Claims{ID: jwtID, Audience: aud, IssuedAt: now, ExpiresAt: now.Add(5 * time.Minute)})
}

func (f *fakeJWTCA) JWTBundle(context.Context, spiffeid.TrustDomain) (*jwtbundle.Bundle, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fetches++
	return jwtbundle.FromJWTAuthorities(jwtID.TrustDomain(), f.keys), nil
}

var jwtID = spiffeid.RequireFromString("spiffe://example.org/ns/a/sa/b")

// TestJWTCacheAndBundleStream: one token per audience set, renewed at half
// its life; FetchJWTBundles sends the bundle again once the CA has
// published a new key.
func TestJWTCacheAndBundleStream(t *testing.T) {
	clk := clocktest.New(time.Now())
	ca := newFakeJWTCA(t, clk)
	cache, srv, ctx := newJWTServer(t, ca)
	fetch := func(aud ...string) string {
		t.Helper()
		r, err := srv.FetchJWTSVID(ctx, &workloadpb.JWTSVIDRequest{Audience: aud})
		if err != nil {
			t.Fatal(err)
		}
		return r.GetSvids()[0].GetSvid()
	}
	first := fetch("a", "b")
	if fetch("b", "a", "a") != first || ca.mints != 1 {
		t.Fatalf("the same audience set minted again (%d mints)", ca.mints)
	}
	fetch("c")
	clk.Advance(150 * time.Second) // half of 5 minutes
	if fetch("a", "b"); ca.mints != 3 {
		t.Errorf("not renewed at half life (%d mints)", ca.mints)
	}

	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream := &rotatingStream{ctx: sctx, cancel: cancel, next: func() {
		ca.rotate()
		if err := cache.Refresh(context.Background()); err != nil {
			t.Error(err)
		}
	}}
	if err := srv.FetchJWTBundles(&workloadpb.JWTBundlesRequest{}, stream); err != nil {
		t.Fatal(err)
	}
	if len(stream.keys) != 2 || stream.keys[0] != 1 || stream.keys[1] != 2 {
		t.Errorf("bundles sent with %v keys, want 1 then 2", stream.keys)
	}
}

// rotatingStream records the keys of each bundle sent, calls next after
// the first and ends the stream after the second.
type rotatingStream struct {
	fakeStream[workloadpb.JWTBundlesResponse]
	ctx    context.Context
	cancel context.CancelFunc
	next   func()
	keys   []int
}

func (s *rotatingStream) Context() context.Context { return s.ctx }
func (s *rotatingStream) Send(r *workloadpb.JWTBundlesResponse) error {
	b, err := jwtbundle.Parse(jwtID.TrustDomain(), r.GetBundles()[jwtID.TrustDomain().IDString()])
	if err != nil {
		return err
	}
	s.keys = append(s.keys, len(b.JWTAuthorities()))
	if len(s.keys) == 1 {
		s.next()
	} else {
		s.cancel()
	}
	return nil
}

// TestValidateRefreshesAfterMiss: a token signed by a key younger than
// the cached bundle (a CA replica that just started) validates after one
// fetch of the bundle; a token of an unknown key within 10 s of that fetch
// asks the CA nothing and is refused.
func TestValidateRefreshesAfterMiss(t *testing.T) {
	clk := clocktest.New(time.Now())
	ca := newFakeJWTCA(t, clk)
	cache, srv, ctx := newJWTServer(t, ca)
	if _, _, err := cache.Bundle(ctx); err != nil { // cached with the first key only
		t.Fatal(err)
	}
	validate := func(tok string) error {
		_, err := srv.ValidateJWTSVID(ctx, &workloadpb.ValidateJWTSVIDRequest{Audience: "aud", Svid: tok})
		return err
	}
	mint := func() string {
		tok, err := ca.MintJWTSVID(ctx, []string{"aud"}, "")
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}

	clk.Advance(missRefreshEveryForTest)
	ca.rotate() // another replica's key, not in the cached bundle
	if err := validate(mint()); err != nil {
		t.Fatalf("a token of a new key after a refresh: %v", err)
	}
	fetches := ca.fetches
	// A made-up key right after: refused without asking the CA.
	tok, err := newFakeJWTCA(t, clk).MintJWTSVID(ctx, []string{"aud"}, "")
	if err != nil {
		t.Fatal(err)
	}
	if err := validate(tok); err == nil {
		t.Fatal("a token of a key the CA never published validates")
	}
	if ca.fetches != fetches {
		t.Errorf("a miss within 10 s of the last fetch asked the CA again (%d fetches, want %d)", ca.fetches, fetches)
	}

	// Bursts of misses 10 s apart: one fetch for each burst, whose
	// tokens of a key younger than the bundle all validate after it.
	burst := func(tok string) (validated int) {
		var (
			wg sync.WaitGroup
			mu sync.Mutex
		)
		start := make(chan struct{})
		for range 64 {
			wg.Go(func() {
				<-start
				if validate(tok) == nil {
					mu.Lock()
					validated++
					mu.Unlock()
				}
			})
		}
		close(start)
		wg.Wait()
		return validated
	}
	for _, tc := range []struct {
		name  string
		tok   func() string
		valid int
	}{
		{"a CA replica's new key", func() string { ca.rotate(); return mint() }, 64},
		{"a made-up key", func() string { return tok }, 0},
	} {
		clk.Advance(missRefreshEveryForTest)
		tok := tc.tok()
		fetches := ca.fetches
		if got := burst(tok); got != tc.valid {
			t.Errorf("%s: %d of 64 tokens validate at once, want %d", tc.name, got, tc.valid)
		}
		if ca.fetches != fetches+1 {
			t.Errorf("%s: 64 misses at once asked the CA %d times, want once", tc.name, ca.fetches-fetches)
		}
	}
}

// missRefreshEveryForTest is sds's rate limit of refreshes after a miss.
const missRefreshEveryForTest = 10 * time.Second

// gatedJWTCA holds JWTBundle, while hold is set, until gate is closed or
// the caller's context ends; started receives each held call.
type gatedJWTCA struct {
	*fakeJWTCA
	hold    atomic.Bool
	started chan struct{}
	gate    chan struct{}
}

func (g *gatedJWTCA) JWTBundle(ctx context.Context, td spiffeid.TrustDomain) (*jwtbundle.Bundle, error) {
	if g.hold.Load() {
		g.started <- struct{}{}
		select {
		case <-g.gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return g.fakeJWTCA.JWTBundle(ctx, td)
}

// TestRefreshAfterMissOutlivesItsCaller: the fetch that misses at the same
// moment share does not end when the caller that started it gives up; the
// others still get the new bundle.
func TestRefreshAfterMissOutlivesItsCaller(t *testing.T) {
	clk := clocktest.New(time.Now())
	ca := &gatedJWTCA{fakeJWTCA: newFakeJWTCA(t, clk), started: make(chan struct{}, 1), gate: make(chan struct{})}
	cache, err := sds.NewJWTCache(sds.JWTConfig{ID: jwtID, CA: ca, Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	tried, _, err := cache.Bundle(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	clk.Advance(missRefreshEveryForTest)
	ca.rotate()
	ca.hold.Store(true)

	first, cancel := context.WithCancel(context.Background())
	firstDone := make(chan bool, 1)
	go func() { firstDone <- cache.RefreshAfterMiss(first, tried) }()
	<-ca.started // the shared fetch is under way
	secondDone := make(chan bool, 1)
	go func() { secondDone <- cache.RefreshAfterMiss(context.Background(), tried) }()
	cancel()
	if <-firstDone {
		t.Error("the caller that gave up reports a new bundle")
	}
	close(ca.gate)
	if !<-secondDone {
		t.Error("the other caller lost the fetch when the first gave up")
	}
}
