package server_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/meshca/meshca/attestor"
	"github.com/meshca/meshca/attestor/jwks"
	"github.com/meshca/meshca/attestor/k8s"
	"github.com/meshca/meshca/internal/clock/clocktest"
	"github.com/meshca/meshca/internal/kubeenv"
)

// These tests run against a real kube-apiserver and etcd (make testenv).
func TestMain(m *testing.M) { kubeenv.Main(m) }

// countingClient returns a clientset whose TokenReview POSTs are counted at
// the HTTP transport, i.e. what the API server really receives.
func countingClient(t testing.TB, env *kubeenv.Env, n *atomic.Int64) kubernetes.Interface {
	cfg := rest.CopyConfig(env.Config)
	cfg.QPS, cfg.Burst = 1000, 1000
	cfg.WrapTransport = func(rt http.RoundTripper) http.RoundTripper {
		return roundTripFunc(func(r *http.Request) (*http.Response, error) {
			if r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "/tokenreviews") {
				n.Add(1)
			}
			return rt.RoundTrip(r)
		})
	}
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// k8sModes builds each attestation mode against env; clk drives the JWKS
// verifier's notion of now (the TokenReview mode asks the API server).
func k8sModes(t *testing.T, env *kubeenv.Env, reviews *atomic.Int64, clk *clocktest.Fake) map[string]attestor.Attestor {
	cfg := k8s.Config{TrustDomain: td}
	tr, err := k8s.NewTokenReview(k8s.TokenReviewConfig{Config: cfg, Reviewer: k8s.ClientReviewer{Client: countingClient(t, env, reviews)}, Cache: k8s.CacheConfig{}})
	if err != nil {
		t.Fatal(err)
	}
	fetch := func(ctx context.Context) ([]byte, error) {
		return env.Client.Discovery().RESTClient().Get().AbsPath("/openid/v1/jwks").DoRaw(ctx)
	}
	cfg.Clock = clk
	jw, err := k8s.NewJWKS(k8s.JWKSConfig{Config: cfg, Issuer: env.Issuer, Keys: jwks.NewKeySet(jwks.KeySetConfig{Fetch: fetch, Clock: clk})})
	if err != nil {
		t.Fatal(err)
	}
	return map[string]attestor.Attestor{"tokenreview": tr, "jwks": jw}
}

// forgedToken signs projected-token claims for ns/sa with a key the
// cluster never had.
func forgedToken(t *testing.T, issuer, ns, sa string) string {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	sig, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: key}, (&jose.SignerOptions{}).WithHeader("kid", "forged"))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	tok, err := jwt.Signed(sig).Claims(jwt.Claims{
		Issuer: issuer, Subject: "system:serviceaccount:" + ns + ":" + sa, Audience: jwt.Audience{"meshca"},
		Expiry: jwt.NewNumericDate(now.Add(time.Hour)), IssuedAt: jwt.NewNumericDate(now), NotBefore: jwt.NewNumericDate(now),
	}).Claims(map[string]any{"kubernetes.io": map[string]any{"namespace": ns, "serviceaccount": map[string]any{"name": sa, "uid": "x"}}}).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func TestKubernetesTokens(t *testing.T) {
	env := kubeenv.Get(t)
	ctx := context.Background()
	env.CreateServiceAccount(t, "foo", "bar")
	env.CreateServiceAccount(t, "foo", "other")
	env.CreateServiceAccount(t, "kube-system", "sys")
	barID := spiffeid.RequireFromPath(td, "/ns/foo/sa/bar")
	var reviews atomic.Int64
	clk := clocktest.New(time.Now())
	for mode, att := range k8sModes(t, env, &reviews, clk) {
		t.Run(mode, func(t *testing.T) {
			p := startPlane(t, filepath.Join(t.TempDir(), "meshca.db"), att)
			c := grpcClient(t, p, nil)
			csr := csrFor(t, newKey(t), barID)

			chain, err := c.Sign(ctx, csr, 0, env.Token(t, "foo", "bar", []string{"meshca"}, time.Hour))
			if err != nil {
				t.Fatalf("valid token: %v", err)
			}
			leaf := parseChain(t, chain)[0]
			if len(leaf.URIs) != 1 || leaf.URIs[0].String() != barID.String() {
				t.Fatalf("issued %v, want exactly %s", leaf.URIs, barID)
			}
			rec, err := p.store.Issuance(ctx, leaf.SerialNumber.Text(16))
			if err != nil || rec.CredentialKind != "k8s-"+mode || rec.Requester != "system:serviceaccount:foo:bar" {
				t.Fatalf("record %+v, %v", rec, err)
			}

			refusals := []struct {
				name  string
				token func(t *testing.T) string
				code  codes.Code
				msg   string
			}{
				{"token for another ServiceAccount", func(t *testing.T) string { return env.Token(t, "foo", "other", []string{"meshca"}, time.Hour) },
					codes.PermissionDenied, "credential proves spiffe://example.org/ns/foo/sa/other"},
				{"wrong audience", func(t *testing.T) string { return env.Token(t, "foo", "bar", []string{"someone-else"}, time.Hour) },
					codes.Unauthenticated, ""},
				{"signed by another key", func(t *testing.T) string { return forgedToken(t, env.Issuer, "foo", "bar") },
					codes.Unauthenticated, ""},
				{"malformed", func(*testing.T) string { return "aaa.bbb.ccc" }, codes.Unauthenticated, ""},
				{"empty", func(*testing.T) string { return "" }, codes.Unauthenticated, "no credential"},
				{"denied namespace", func(t *testing.T) string { return env.Token(t, "kube-system", "sys", []string{"meshca"}, time.Hour) },
					codes.PermissionDenied, "may not get certificates"},
			}
			for _, r := range refusals {
				t.Run(r.name, func(t *testing.T) {
					before := len(p.records(t))
					_, err := c.Sign(ctx, csr, 0, r.token(t))
					wantCode(t, err, r.code, r.msg)
					if len(p.records(t)) != before {
						t.Error("refused request was recorded")
					}
				})
			}
		})
	}
}

// TestKubernetesExpiredToken: a real token past its expiry, seen by the
// offline verifier whose clock is moved past it.
func TestKubernetesExpiredToken(t *testing.T) {
	env := kubeenv.Get(t)
	env.CreateServiceAccount(t, "expiry", "bar")
	var reviews atomic.Int64
	clk := clocktest.New(time.Now())
	att := k8sModes(t, env, &reviews, clk)["jwks"]
	p := startPlane(t, filepath.Join(t.TempDir(), "meshca.db"), att)
	tok := env.Token(t, "expiry", "bar", []string{"meshca"}, 10*time.Minute)
	clk.Advance(12 * time.Minute) // past exp and the 1m leeway
	_, err := grpcClient(t, p, nil).Sign(context.Background(), csrFor(t, newKey(t), spiffeid.RequireFromPath(td, "/ns/expiry/sa/bar")), 0, tok)
	wantCode(t, err, codes.Unauthenticated, "expired at")
}

// TestKubernetesDeletedServiceAccount: TokenReview mode refuses a token
// whose ServiceAccount was deleted after it was issued.
func TestKubernetesDeletedServiceAccount(t *testing.T) {
	env := kubeenv.Get(t)
	ctx := context.Background()
	env.CreateServiceAccount(t, "gone", "bar")
	tok := env.Token(t, "gone", "bar", []string{"meshca"}, time.Hour)
	if err := env.Client.CoreV1().ServiceAccounts("gone").Delete(ctx, "bar", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	var reviews atomic.Int64
	att := k8sModes(t, env, &reviews, clocktest.New(time.Now()))["tokenreview"]
	p := startPlane(t, filepath.Join(t.TempDir(), "meshca.db"), att)
	_, err := grpcClient(t, p, nil).Sign(ctx, csrFor(t, newKey(t), spiffeid.RequireFromPath(td, "/ns/gone/sa/bar")), 0, tok)
	wantCode(t, err, codes.Unauthenticated, "")
	if len(p.records(t)) != 0 {
		t.Fatal("a certificate was recorded for a deleted ServiceAccount")
	}
}

// TestTokenReviewCache: 1,000 CSRs with one token cost the API server at
// most a handful of TokenReviews.
func TestTokenReviewCache(t *testing.T) {
	env := kubeenv.Get(t)
	ctx := context.Background()
	env.CreateServiceAccount(t, "storm", "bar")
	var reviews atomic.Int64
	att := k8sModes(t, env, &reviews, clocktest.New(time.Now()))["tokenreview"]
	p := startPlane(t, filepath.Join(t.TempDir(), "meshca.db"), att)
	c := grpcClient(t, p, nil)
	tok := env.Token(t, "storm", "bar", []string{"meshca"}, time.Hour)
	csr := csrFor(t, newKey(t), spiffeid.RequireFromPath(td, "/ns/storm/sa/bar"))
	for i := range 1000 {
		if _, err := c.Sign(ctx, csr, 0, tok); err != nil {
			t.Fatalf("CSR %d: %v", i, err)
		}
	}
	if n := reviews.Load(); n < 1 || n > 3 {
		t.Fatalf("1,000 CSRs sent %d TokenReviews, want 1 to 3", n)
	}
	t.Logf("1,000 CSRs, %d TokenReview(s)", reviews.Load())
}

var benchSA atomic.Int64

// BenchmarkTokenReviewAPIServer measures one uncached TokenReview against the
// real API server (through client-go, unthrottled), cycling through
// pre-minted tokens with a one-entry cache so every op is a real review.
func BenchmarkTokenReviewAPIServer(b *testing.B) {
	env := kubeenv.Get(b)
	sa := fmt.Sprintf("bar-%d", benchSA.Add(1)) // the function runs several times
	env.CreateServiceAccount(b, "bench", sa)
	toks := make([]string, 64)
	for i := range toks {
		toks[i] = env.Token(b, "bench", sa, []string{"meshca"}, time.Hour)
	}
	var reviews atomic.Int64
	tr, err := k8s.NewTokenReview(k8s.TokenReviewConfig{Config: k8s.Config{TrustDomain: td}, Reviewer: k8s.ClientReviewer{Client: countingClient(b, env, &reviews)}, Cache: k8s.CacheConfig{Size: 1}})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	i := 0
	for b.Loop() {
		if _, err := tr.Attest(ctx, attestor.Credential{BearerToken: toks[i%len(toks)]}); err != nil {
			b.Fatal(err)
		}
		i++
	}
	b.ReportMetric(float64(reviews.Load())/float64(b.N), "reviews/op")
}

// TestKubernetesExpiredTokenSignedByTheCluster: a token with the cluster's
// own key and a real ServiceAccount's claims, but expired, is refused in
// both modes (TokenRequest cannot issue one already expired, so it is
// minted with the cluster's signing key).
func TestKubernetesExpiredTokenSignedByTheCluster(t *testing.T) {
	env := kubeenv.Get(t)
	ctx := context.Background()
	sa := env.CreateServiceAccount(t, "expired", "bar")
	keyPEM, err := os.ReadFile(env.SigningKeyFile)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(keyPEM)
	key, err := x509.ParseECPrivateKey(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := env.Client.Discovery().RESTClient().Get().AbsPath("/openid/v1/jwks").DoRaw(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var set jose.JSONWebKeySet
	if err := json.Unmarshal(raw, &set); err != nil || len(set.Keys) != 1 {
		t.Fatalf("JWKS: %v", err)
	}
	sig, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: key}, (&jose.SignerOptions{}).WithHeader("kid", set.Keys[0].KeyID))
	if err != nil {
		t.Fatal(err)
	}
	mint := func(issued time.Time) string {
		tok, err := jwt.Signed(sig).Claims(jwt.Claims{
			Issuer: env.Issuer, Subject: "system:serviceaccount:expired:bar", Audience: jwt.Audience{"meshca"},
			IssuedAt: jwt.NewNumericDate(issued), NotBefore: jwt.NewNumericDate(issued), Expiry: jwt.NewNumericDate(issued.Add(time.Hour)),
		}).Claims(map[string]any{"kubernetes.io": map[string]any{"namespace": "expired",
			"serviceaccount": map[string]any{"name": "bar", "uid": string(sa.UID)}}}).Serialize()
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	expired, fresh := mint(time.Now().Add(-2*time.Hour)), mint(time.Now())
	var reviews atomic.Int64
	for mode, att := range k8sModes(t, env, &reviews, clocktest.New(time.Now())) {
		t.Run(mode, func(t *testing.T) {
			p := startPlane(t, filepath.Join(t.TempDir(), "meshca.db"), att)
			c := grpcClient(t, p, nil)
			id := spiffeid.RequireFromPath(td, "/ns/expired/sa/bar")
			_, err := c.Sign(ctx, csrFor(t, newKey(t), id), 0, expired)
			wantCode(t, err, codes.Unauthenticated, "")
			if len(p.records(t)) != 0 {
				t.Fatal("an expired token got a certificate")
			}
			// Control: the same token, not expired, is accepted, so the
			// refusal above is about the expiry.
			if _, err := c.Sign(ctx, csrFor(t, newKey(t), id), 0, fresh); err != nil {
				t.Fatalf("the same token unexpired: %v", err)
			}
		})
	}
}
