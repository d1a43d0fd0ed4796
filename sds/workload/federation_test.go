package workload

import (
	"context"
	"crypto"
	"crypto/x509"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	workloadpb "github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"

	"github.com/meshca/meshca/internal/clock/clocktest"
	"github.com/meshca/meshca/internal/jwtsvid"
	"github.com/meshca/meshca/internal/testca"
	"github.com/meshca/meshca/sds"
)

var partner = spiffeid.RequireTrustDomainFromString("partner.example")

// withFederated is svid, one version on, carrying b as partner's bundle.
func withFederated(svid *sds.SVID, b *spiffebundle.Bundle) *sds.SVID {
	next := *svid
	next.Version++
	next.Federated = map[spiffeid.TrustDomain]*spiffebundle.Bundle{partner: b}
	return &next
}

// TestFederatedX509Bundles: the federated bundles an SVID carries reach
// X509SVIDResponse.federated_bundles and FetchX509Bundles, keyed by trust
// domain ID, pushed on open streams when they change; a leaf rotation
// under the same bundles pushes no bundles.
func TestFederatedX509Bundles(t *testing.T) {
	h := newHarness(t, true)
	sv, bu := h.x509Streams()
	if got := next(t, sv); len(got.GetFederatedBundles()) != 0 {
		t.Fatalf("federated bundles before any: %v", got.GetFederatedBundles())
	}
	if got := next(t, bu); len(got.GetBundles()) != 1 {
		t.Fatalf("%d bundles before any federated, want 1", len(got.GetBundles()))
	}

	partnerCA := testca.New(t)
	h.set(withFederated(h.svid, spiffebundle.FromX509Authorities(partner, []*x509.Certificate{partnerCA.Root})))
	checkPartner := func(what string, der []byte) {
		t.Helper()
		roots, err := x509.ParseCertificates(der)
		if err != nil || len(roots) != 1 || !roots[0].Equal(partnerCA.Root) {
			t.Fatalf("%s: partner.example's bundle is not its DER root (%v)", what, err)
		}
	}
	got := next(t, sv)
	if len(got.GetFederatedBundles()) != 1 {
		t.Fatalf("federated_bundles %v, want partner.example's", got.GetFederatedBundles())
	}
	checkPartner("federated_bundles", got.GetFederatedBundles()[partner.IDString()])
	b := next(t, bu).GetBundles()
	if len(b) != 2 {
		t.Fatalf("FetchX509Bundles sent %d bundles, want ours and partner.example's", len(b))
	}
	checkPartner("FetchX509Bundles", b[partner.IDString()])

	// A leaf rotation keeping the bundles: a new SVID, no new bundles.
	rotated := h.ca.Issue(t, h.svid.Version+1)
	rotated.Federated = h.svid.Federated
	h.set(rotated)
	next(t, sv)
	none(t, bu)
}

// TestFederatedJWTBundles: FetchJWTBundles serves the JWT authorities of
// the federated trust domains beside ours, again when they change, and
// ValidateJWTSVID accepts a federated trust domain's token by its keys
// (and refuses one whose key it does not publish).
func TestFederatedJWTBundles(t *testing.T) {
	clk := clocktest.New(time.Now())
	ca := newFakeJWTCA(t, clk)
	src := sds.NewStaticSource(testca.New(t).Issue(t, 1))
	cache, err := sds.NewJWTCache(sds.JWTConfig{ID: jwtID, CA: ca, Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := New(Config{Source: src, JWT: cache})
	if err != nil {
		t.Fatal(err)
	}
	_, _, ctx := newJWTServer(t, ca) // a context with the security header

	partnerCA := testca.New(t)
	partnerKey := testca.NewKey(t)
	kid, _ := jwtsvid.KeyID(partnerKey.Public())
	fb := spiffebundle.FromX509Authorities(partner, []*x509.Certificate{partnerCA.Root})
	fb.AddJWTAuthority(kid, partnerKey.Public())

	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	sent := make(chan *workloadpb.JWTBundlesResponse, 4)
	done := make(chan error, 1)
	go func() {
		done <- srv.FetchJWTBundles(&workloadpb.JWTBundlesRequest{}, &chanStream{ctx: sctx, sent: sent})
	}()
	recvBundles := func() map[string][]byte {
		t.Helper()
		select {
		case r := <-sent:
			return r.GetBundles()
		case <-time.After(waitFor):
			t.Fatal("no JWT bundles sent")
			return nil
		}
	}
	if got := recvBundles(); len(got) != 1 {
		t.Fatalf("%d JWT bundles before any federated, want ours", len(got))
	}
	src.Set(withFederated(src.Current(), fb))
	got := recvBundles()
	pb, err := jwtbundle.Parse(partner, got[partner.IDString()])
	if len(got) != 2 || err != nil || !pb.Equal(fb.JWTBundle()) {
		t.Fatalf("JWT bundles %d (partner.example's: %v), want ours and partner.example's", len(got), err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}

	validate := func(key crypto.Signer, kid string) error {
		now := clk.Now()
		tok, err := jwtsvid.Sign(key, kid, jwtsvid.Claims{ID: spiffeid.RequireFromPath(partner, "/client"), Audience: []string{"aud"},
			IssuedAt: now, ExpiresAt: now.Add(time.Minute)})
		if err != nil {
			t.Fatal(err)
		}
		_, err = srv.ValidateJWTSVID(ctx, &workloadpb.ValidateJWTSVIDRequest{Audience: "aud", Svid: tok})
		return err
	}
	if err := validate(partnerKey, kid); err != nil {
		t.Errorf("partner.example's token refused: %v", err)
	}
	other := testca.NewKey(t)
	otherKID, _ := jwtsvid.KeyID(other.Public())
	if err := validate(other, otherKID); err == nil {
		t.Error("a partner.example token of an unpublished key validates")
	}
}

// chanStream sends each response on sent.
type chanStream struct {
	grpc.ServerStream // nil: only Context and Send are used
	ctx               context.Context
	sent              chan *workloadpb.JWTBundlesResponse
}

func (s *chanStream) Context() context.Context { return s.ctx }
func (s *chanStream) Send(r *workloadpb.JWTBundlesResponse) error {
	s.sent <- r
	return nil
}
