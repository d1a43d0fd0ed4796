package kubeenv

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestMain(m *testing.M) { Main(m) }

// TestTokenReview starts its own Env, so it also measures the startup time.
func TestTokenReview(t *testing.T) {
	e := Start(t)
	t.Logf("startup time (etcd start to apiserver /readyz): %s", e.StartupTime.Round(time.Millisecond))

	e.CreateServiceAccount(t, "foo", "bar")
	tok := e.Token(t, "foo", "bar", []string{"meshca"}, 10*time.Minute)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tr, err := e.Client.AuthenticationV1().TokenReviews().Create(ctx, &authenticationv1.TokenReview{
		Spec: authenticationv1.TokenReviewSpec{Token: tok, Audiences: []string{"meshca"}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("TokenReview: %v", err)
	}
	if !tr.Status.Authenticated {
		t.Fatalf("token not authenticated: %q", tr.Status.Error)
	}
	if got, want := tr.Status.User.Username, "system:serviceaccount:foo:bar"; got != want {
		t.Errorf("username = %q, want %q", got, want)
	}
	if len(tr.Status.Audiences) != 1 || tr.Status.Audiences[0] != "meshca" {
		t.Errorf("audiences = %q, want [meshca]", tr.Status.Audiences)
	}

	// The same token must not pass for another audience.
	tr, err = e.Client.AuthenticationV1().TokenReviews().Create(ctx, &authenticationv1.TokenReview{
		Spec: authenticationv1.TokenReviewSpec{Token: tok, Audiences: []string{"someone-else"}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("TokenReview: %v", err)
	}
	if tr.Status.Authenticated {
		t.Errorf("token for audience meshca authenticated for audience someone-else")
	}
}

// TestDiscoveryShared uses the package's shared Env (Get).
func TestDiscoveryShared(t *testing.T) {
	e := Get(t)
	if e2 := Get(t); e2 != e {
		t.Fatal("Get returned two different Envs")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rc := e.Client.Discovery().RESTClient()

	raw, err := rc.Get().AbsPath("/.well-known/openid-configuration").DoRaw(ctx)
	if err != nil {
		t.Fatalf("OIDC discovery: %v", err)
	}
	var disc struct {
		Issuer  string   `json:"issuer"`
		JWKSURI string   `json:"jwks_uri"`
		Algs    []string `json:"id_token_signing_alg_values_supported"`
	}
	if err := json.Unmarshal(raw, &disc); err != nil {
		t.Fatalf("OIDC discovery %s: %v", raw, err)
	}
	if disc.Issuer != e.Issuer || disc.JWKSURI != e.JWKSURL {
		t.Errorf("discovery issuer %q jwks_uri %q, want %q %q", disc.Issuer, disc.JWKSURI, e.Issuer, e.JWKSURL)
	}
	if len(disc.Algs) != 1 || disc.Algs[0] != "ES256" {
		t.Errorf("signing algs = %q, want [ES256]", disc.Algs)
	}

	raw, err = rc.Get().AbsPath("/openid/v1/jwks").DoRaw(ctx)
	if err != nil {
		t.Fatalf("JWKS: %v", err)
	}
	var jwks struct {
		Keys []struct {
			Kty string `json:"kty"`
			Crv string `json:"crv"`
			Alg string `json:"alg"`
			Kid string `json:"kid"`
		} `json:"keys"`
	}
	if err := json.Unmarshal(raw, &jwks); err != nil {
		t.Fatalf("JWKS %s: %v", raw, err)
	}
	if len(jwks.Keys) != 1 {
		t.Fatalf("JWKS has %d keys, want 1: %s", len(jwks.Keys), raw)
	}
	if k := jwks.Keys[0]; k.Kty != "EC" || k.Crv != "P-256" || k.Alg != "ES256" || k.Kid == "" {
		t.Errorf("JWKS key = %+v, want an EC P-256 ES256 key with a kid", k)
	}
}
