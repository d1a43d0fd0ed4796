package server_test

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/meshca/meshca/ca/server"
	gojwtsvid "github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
)

// TestJWTService: a JWT-SVID minted with a bearer token and one minted
// over mTLS with the caller's X.509-SVID both validate with go-spiffe
// against the bundle FetchJWTBundle answers; requests without audience or
// credential are refused with the CSR API's codes.
func TestJWTService(t *testing.T) {
	p := startPlane(t, filepath.Join(t.TempDir(), "meshca.db"))
	ctx := context.Background()
	c := grpcClient(t, p, nil)
	bundle, err := c.JWTBundle(ctx, td)
	if err != nil {
		t.Fatal(err)
	}
	if !bundle.Equal(p.auth.JWTBundle()) {
		t.Fatal("FetchJWTBundle differs from the CA's JWT bundle")
	}
	tok, err := c.MintJWTSVID(ctx, []string{"db"}, fooToken)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := gojwtsvid.ParseAndValidate(tok, bundle, []string{"db"}); err != nil || got.ID != fooID {
		t.Fatalf("token with a bearer credential: %v %v", got, err)
	}

	key := newKey(t)
	chain, err := c.Sign(ctx, csrFor(t, key, fooID), 0, fooToken)
	if err != nil {
		t.Fatal(err)
	}
	mtls := grpcClient(t, p, svid(parseChain(t, chain), key))
	tok, err = mtls.MintJWTSVID(ctx, []string{"cache"}, "")
	if err != nil {
		t.Fatalf("over mTLS: %v", err)
	}
	if got, err := gojwtsvid.ParseAndValidate(tok, bundle, []string{"cache"}); err != nil || got.ID != fooID {
		t.Fatalf("token with the X.509-SVID as credential: %v %v", got, err)
	}

	// A lifetime asked for in the metadata, within --jwt-svid-max-ttl;
	// one out of the CA's bounds is refused, never cut to fit.
	withTTL := func(ttl string) context.Context {
		return metadata.AppendToOutgoingContext(ctx, server.JWTTTLMetadata, ttl)
	}
	tok, err = c.MintJWTSVID(withTTL("10m"), []string{"db"}, fooToken)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := gojwtsvid.ParseAndValidate(tok, bundle, []string{"db"}); err != nil || time.Until(got.Expiry) < 9*time.Minute || time.Until(got.Expiry) > 10*time.Minute {
		t.Fatalf("token asked for 10m: %v, expires %v", err, got.Expiry)
	}
	_, err = c.MintJWTSVID(withTTL("2h"), []string{"db"}, fooToken)
	wantCode(t, err, codes.InvalidArgument, "over the JWT-SVID maximum")
	_, err = c.MintJWTSVID(withTTL("10s"), []string{"db"}, fooToken)
	wantCode(t, err, codes.InvalidArgument, "under the JWT-SVID minimum")

	_, err = c.MintJWTSVID(ctx, nil, fooToken)
	wantCode(t, err, codes.InvalidArgument, "audience")
	_, err = c.MintJWTSVID(ctx, []string{"db"}, "")
	wantCode(t, err, codes.Unauthenticated, "")
	_, err = c.MintJWTSVID(ctx, []string{"db"}, "not-a-token")
	wantCode(t, err, codes.Unauthenticated, "")
}

// TestJWTServiceRefusesBadTTLMetadata: a meshca-jwt-ttl that is not one
// positive Go duration is InvalidArgument naming the key, never read as
// the default lifetime.
func TestJWTServiceRefusesBadTTLMetadata(t *testing.T) {
	p := startPlane(t, filepath.Join(t.TempDir(), "meshca.db"))
	c := grpcClient(t, p, nil)
	tests := []struct {
		name   string
		values []string
	}{
		{"not a duration", []string{"ten minutes"}},
		{"no unit", []string{"600"}},
		{"zero", []string{"0s"}},
		{"negative", []string{"-1m"}},
		{"empty", []string{""}},
		{"two values", []string{"5m", "5m"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := t.Context()
			for _, v := range tt.values {
				ctx = metadata.AppendToOutgoingContext(ctx, server.JWTTTLMetadata, v)
			}
			_, err := c.MintJWTSVID(ctx, []string{"db"}, fooToken)
			wantCode(t, err, codes.InvalidArgument, server.JWTTTLMetadata)
		})
	}
}
