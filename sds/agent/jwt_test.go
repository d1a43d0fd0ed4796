package agent

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"path/filepath"
	"testing"
	"time"

	gojwtsvid "github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/meshca/meshca/internal/clock/clocktest"
	"github.com/meshca/meshca/internal/jwtsvid"
)

// TestJWTSVIDEndToEnd runs the CA plane and an agent as make run does, and
// uses the JWT profile of the Workload API through go-spiffe's own client,
// unchanged: FetchJWTSVID, then jwtsvid.ParseAndValidate with the bundles
// of FetchJWTBundles; ValidateJWTSVID accepts the token for its audience
// and refuses, with InvalidArgument, another audience, a token signed by
// a key not in the bundle, and the token once expired (the agent's clock
// moved past its exp).
func TestJWTSVIDEndToEnd(t *testing.T) {
	f := newCAFixture(t)
	id := f.id
	clk := clocktest.New(time.Now())
	ao := f.agentConfig()
	ao.WorkloadSocket, ao.Clock = filepath.Join(f.dir, "wl.sock"), clk
	a, err := Start(context.Background(), ao)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Stop()

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := workloadapi.New(ctx, workloadapi.WithAddr("unix://"+ao.WorkloadSocket))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	svid, err := c.FetchJWTSVID(ctx, gojwtsvid.Params{Audience: "db", ExtraAudiences: []string{"cache"}})
	if err != nil {
		t.Fatalf("FetchJWTSVID: %v", err)
	}
	if svid.ID != id {
		t.Fatalf("JWT-SVID for %s, want %s", svid.ID, id)
	}
	bundles, err := c.FetchJWTBundles(ctx)
	if err != nil {
		t.Fatalf("FetchJWTBundles: %v", err)
	}
	if _, err := gojwtsvid.ParseAndValidate(svid.Marshal(), bundles, []string{"cache"}); err != nil {
		t.Fatalf("go-spiffe ParseAndValidate with the Workload API's bundles: %v", err)
	}
	again, err := c.FetchJWTSVID(ctx, gojwtsvid.Params{Audience: "cache", ExtraAudiences: []string{"db"}})
	if err != nil || again.Marshal() != svid.Marshal() {
		t.Errorf("the same audiences in another order: a new token (%v)", err)
	}
	if got, err := c.ValidateJWTSVID(ctx, svid.Marshal(), "db"); err != nil || got.ID != id {
		t.Fatalf("ValidateJWTSVID: %v, %v", got, err)
	}

	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	foreign, err := jwtsvid.Sign(key, "not-in-the-bundle", jwtsvid.Claims{ID: id, Audience: []string{"db"}, IssuedAt: clk.Now(), ExpiresAt: clk.Now().Add(time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	refused := func(name, token, aud string) {
		t.Helper()
		if _, err := c.ValidateJWTSVID(ctx, token, aud); status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s: %v, want InvalidArgument", name, err)
		}
	}
	refused("wrong audience", svid.Marshal(), "other")
	refused("foreign key", foreign, "db")
	clk.Set(svid.Expiry)
	refused("expired", svid.Marshal(), "db")

	// Without an audience, FetchJWTSVID is refused as the spec says.
	if _, err := c.FetchJWTSVID(ctx, gojwtsvid.Params{}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("FetchJWTSVID without audience: %v, want InvalidArgument", err)
	}
}
