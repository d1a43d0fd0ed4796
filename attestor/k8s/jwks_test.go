package k8s_test

import (
	"context"
	"errors"
	"maps"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshca/meshca/attestor"
	"github.com/meshca/meshca/attestor/jwks"
	"github.com/meshca/meshca/attestor/k8s"
	"github.com/meshca/meshca/internal/clock/clocktest"
)

func TestJWKSAttest(t *testing.T) {
	fooBar := spiffeid.RequireFromPath(td, "/ns/foo/sa/bar")
	podDetails := map[string]string{"pod-name": "pod-1", "pod-uid": "pod-uid-1", "sa-uid": "sa-uid-1"}
	tests := []struct {
		name        string
		cfg         k8s.Config // TrustDomain, Clock and Metrics are filled in
		issuer      string     // NewJWKS's issuer argument
		token       func(t *testing.T) string
		wantErr     error
		wantMsg     string // substring of the error
		wantID      spiffeid.ID
		wantDetails map[string]string
		wantRefused string // metrics reason counted once
	}{
		{
			name:        "projected token",
			token:       func(t *testing.T) string { return mint(t, epoch, saToken{}) },
			wantID:      fooBar,
			wantDetails: podDetails,
		},
		{
			name:        "token without pod binding",
			token:       func(t *testing.T) string { return mint(t, epoch, saToken{noPod: true}) },
			wantID:      fooBar,
			wantDetails: map[string]string{"sa-uid": "sa-uid-1"},
		},
		{
			name:   "custom issuer",
			issuer: "https://oidc.example.org/cluster-1",
			token: func(t *testing.T) string {
				return mint(t, epoch, saToken{issuer: "https://oidc.example.org/cluster-1"})
			},
			wantID:      fooBar,
			wantDetails: podDetails,
		},
		{
			name: "default issuer refuses another",
			token: func(t *testing.T) string {
				return mint(t, epoch, saToken{issuer: "https://oidc.example.org/cluster-1"})
			},
			wantErr:     attestor.ErrUnauthenticated,
			wantMsg:     "issuer",
			wantRefused: "invalid",
		},
		{
			name:        "subject namespace differs from claims",
			token:       func(t *testing.T) string { return mint(t, epoch, saToken{subject: "system:serviceaccount:other:bar"}) },
			wantErr:     attestor.ErrUnauthenticated,
			wantMsg:     `subject "system:serviceaccount:other:bar" does not match its kubernetes.io claims`,
			wantRefused: "malformed",
		},
		{
			name:        "subject ServiceAccount differs from claims",
			token:       func(t *testing.T) string { return mint(t, epoch, saToken{subject: "system:serviceaccount:foo:admin"}) },
			wantErr:     attestor.ErrUnauthenticated,
			wantMsg:     "does not match its kubernetes.io claims",
			wantRefused: "malformed",
		},
		{
			name:    "subject not a ServiceAccount",
			token:   func(t *testing.T) string { return mint(t, epoch, saToken{subject: "alice"}) },
			wantErr: attestor.ErrUnauthenticated,
			wantMsg: `subject "alice"`,
		},
		{
			name: "subject with extra colon",
			token: func(t *testing.T) string {
				return mint(t, epoch, saToken{subject: "system:serviceaccount:foo:bar:baz"})
			},
			wantErr: attestor.ErrUnauthenticated,
		},
		{
			name:        "kube-system denied by default",
			token:       func(t *testing.T) string { return mint(t, epoch, saToken{namespace: "kube-system", sa: "coredns"}) },
			wantErr:     attestor.ErrPermissionDenied,
			wantMsg:     "ServiceAccount kube-system/coredns may not get certificates from this CA",
			wantRefused: "denied",
		},
		{
			name:        "empty non-nil Deny allows kube-system",
			cfg:         k8s.Config{Deny: []string{}},
			token:       func(t *testing.T) string { return mint(t, epoch, saToken{namespace: "kube-system", sa: "coredns"}) },
			wantID:      spiffeid.RequireFromPath(td, "/ns/kube-system/sa/coredns"),
			wantDetails: podDetails,
		},
		{
			name:        "Allow pattern matches namespace",
			cfg:         k8s.Config{Allow: []string{"team-*", "prod/api"}},
			token:       func(t *testing.T) string { return mint(t, epoch, saToken{namespace: "team-a", sa: "web"}) },
			wantID:      spiffeid.RequireFromPath(td, "/ns/team-a/sa/web"),
			wantDetails: podDetails,
		},
		{
			name:        "Allow ns/sa entry matches",
			cfg:         k8s.Config{Allow: []string{"team-*", "prod/api"}},
			token:       func(t *testing.T) string { return mint(t, epoch, saToken{namespace: "prod", sa: "api"}) },
			wantID:      spiffeid.RequireFromPath(td, "/ns/prod/sa/api"),
			wantDetails: podDetails,
		},
		{
			name:        "Allow ns/sa entry does not admit its namespace",
			cfg:         k8s.Config{Allow: []string{"team-*", "prod/api"}},
			token:       func(t *testing.T) string { return mint(t, epoch, saToken{namespace: "prod", sa: "worker"}) },
			wantErr:     attestor.ErrPermissionDenied,
			wantMsg:     "prod/worker",
			wantRefused: "denied",
		},
		{
			name:    "namespace outside Allow",
			cfg:     k8s.Config{Allow: []string{"team-*", "prod/api"}},
			token:   func(t *testing.T) string { return mint(t, epoch, saToken{}) },
			wantErr: attestor.ErrPermissionDenied,
			wantMsg: "foo/bar",
		},
		{
			name:    "pattern does not match a prefix only",
			cfg:     k8s.Config{Allow: []string{"team-*"}},
			token:   func(t *testing.T) string { return mint(t, epoch, saToken{namespace: "team", sa: "web"}) },
			wantErr: attestor.ErrPermissionDenied,
		},
		{
			name:    "Deny wins over Allow",
			cfg:     k8s.Config{Allow: []string{"team-*"}, Deny: []string{"team-b"}},
			token:   func(t *testing.T) string { return mint(t, epoch, saToken{namespace: "team-b", sa: "web"}) },
			wantErr: attestor.ErrPermissionDenied,
		},
		{
			name:    "Deny ns/sa entry",
			cfg:     k8s.Config{Deny: []string{"foo/bar"}},
			token:   func(t *testing.T) string { return mint(t, epoch, saToken{}) },
			wantErr: attestor.ErrPermissionDenied,
		},
		{
			name:        "Deny ns/sa entry leaves the namespace's other accounts",
			cfg:         k8s.Config{Deny: []string{"foo/admin"}},
			token:       func(t *testing.T) string { return mint(t, epoch, saToken{}) },
			wantID:      fooBar,
			wantDetails: podDetails,
		},
		{
			name:        "custom Deny replaces the default",
			cfg:         k8s.Config{Deny: []string{"secret"}},
			token:       func(t *testing.T) string { return mint(t, epoch, saToken{namespace: "kube-system", sa: "coredns"}) },
			wantID:      spiffeid.RequireFromPath(td, "/ns/kube-system/sa/coredns"),
			wantDetails: podDetails,
		},
		{
			name:        "istio-ca audience refused by default",
			token:       func(t *testing.T) string { return mint(t, epoch, saToken{audiences: []string{"istio-ca"}}) },
			wantErr:     attestor.ErrUnauthenticated,
			wantMsg:     "does not include meshca",
			wantRefused: "invalid",
		},
		{
			name:        "istio-ca audience accepted when configured",
			cfg:         k8s.Config{Audiences: []string{"meshca", "istio-ca"}},
			token:       func(t *testing.T) string { return mint(t, epoch, saToken{audiences: []string{"istio-ca"}}) },
			wantID:      fooBar,
			wantDetails: podDetails,
		},
		{
			name:    "meshca audience refused when only istio-ca configured",
			cfg:     k8s.Config{Audiences: []string{"istio-ca"}},
			token:   func(t *testing.T) string { return mint(t, epoch, saToken{}) },
			wantErr: attestor.ErrUnauthenticated,
			wantMsg: "does not include istio-ca",
		},
		{
			name:    "expired token",
			token:   func(t *testing.T) string { return mint(t, epoch.Add(-2*time.Hour), saToken{}) },
			wantErr: attestor.ErrUnauthenticated,
			wantMsg: "expired",
		},
		{
			name:    "token without exp",
			token:   func(t *testing.T) string { return mint(t, epoch, saToken{ttl: -1}) },
			wantErr: attestor.ErrUnauthenticated,
			wantMsg: "no expiry",
		},
		{
			name:    "JWT-shaped garbage",
			token:   func(*testing.T) string { return "aaa.bbb.ccc" },
			wantErr: attestor.ErrUnauthenticated,
		},
		{
			name:    "empty bearer",
			token:   func(*testing.T) string { return "" },
			wantErr: attestor.ErrNoCredential,
		},
		{
			name:    "opaque bearer",
			token:   func(*testing.T) string { return "s3cr3t-join-token" },
			wantErr: attestor.ErrNoCredential,
		},
		{
			name:    "bearer with four parts",
			token:   func(*testing.T) string { return "a.b.c.d" },
			wantErr: attestor.ErrNoCredential,
		},
		{
			name:    "bearer with spaces",
			token:   func(t *testing.T) string { return mint(t, epoch, saToken{}) + " x" },
			wantErr: attestor.ErrNoCredential,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			clk := clocktest.New(epoch)
			rec := newRecorder()
			cfg := tc.cfg
			cfg.TrustDomain, cfg.Clock, cfg.Metrics = td, clk, rec
			a, err := k8s.NewJWKS(k8s.JWKSConfig{Config: cfg, Issuer: tc.issuer, Keys: staticKeys(t, clk)})
			if err != nil {
				t.Fatalf("NewJWKS() = %v", err)
			}
			token := tc.token(t)
			id, err := a.Attest(context.Background(), attestor.Credential{BearerToken: token, Peer: "127.0.0.1:1234"})
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("Attest() error = %v, want %v", err, tc.wantErr)
				}
				if tc.wantMsg != "" && !strings.Contains(err.Error(), tc.wantMsg) {
					t.Errorf("Attest() error = %q, want it to contain %q", err, tc.wantMsg)
				}
				if token != "" && strings.Contains(err.Error(), token) {
					t.Errorf("Attest() error leaks the token: %v", err)
				}
				if !id.ID.IsZero() {
					t.Errorf("Attest() returned identity %v along with an error", id.ID)
				}
				if tc.wantRefused != "" && rec.refusals(tc.wantRefused) != 1 {
					t.Errorf("Refused(%q) counted %d times, want 1", tc.wantRefused, rec.refusals(tc.wantRefused))
				}
				return
			}
			if err != nil {
				t.Fatalf("Attest() = %v, want success", err)
			}
			if id.ID != tc.wantID {
				t.Errorf("Attest() ID = %v, want %v", id.ID, tc.wantID)
			}
			if id.Kind != "k8s-jwks" {
				t.Errorf("Attest() Kind = %q, want k8s-jwks", id.Kind)
			}
			wantSubject := "system:serviceaccount:" + strings.TrimPrefix(strings.ReplaceAll(tc.wantID.Path(), "/sa/", ":"), "/ns/")
			if id.Subject != wantSubject {
				t.Errorf("Attest() Subject = %q, want %q", id.Subject, wantSubject)
			}
			if !maps.Equal(id.Details, tc.wantDetails) {
				t.Errorf("Attest() Details = %v, want %v", id.Details, tc.wantDetails)
			}
		})
	}
}

func TestJWKSUnavailable(t *testing.T) {
	clk := clocktest.New(epoch)
	keys := jwks.NewKeySet(jwks.KeySetConfig{Fetch: func(context.Context) ([]byte, error) { return nil, errors.New("dial tcp: connection refused") }, Clock: clk})
	a, err := k8s.NewJWKS(k8s.JWKSConfig{Config: k8s.Config{TrustDomain: td, Clock: clk}, Issuer: "", Keys: keys})
	if err != nil {
		t.Fatal(err)
	}
	_, err = a.Attest(context.Background(), attestor.Credential{BearerToken: mint(t, epoch, saToken{})})
	if !errors.Is(err, attestor.ErrUnavailable) {
		t.Fatalf("Attest() error = %v, want ErrUnavailable", err)
	}
	if errors.Is(err, attestor.ErrUnauthenticated) {
		t.Errorf("Attest() error = %v is also ErrUnauthenticated", err)
	}
}

// TestJWKSInChain: a JWKS attestor passes non-JWT bearers to the next
// attestor and stops the chain on a bad JWT.
func TestJWKSInChain(t *testing.T) {
	clk := clocktest.New(epoch)
	a, err := k8s.NewJWKS(k8s.JWKSConfig{Config: k8s.Config{TrustDomain: td, Clock: clk}, Issuer: "", Keys: staticKeys(t, clk)})
	if err != nil {
		t.Fatal(err)
	}
	static := attestor.NewStaticTokens(map[string]spiffeid.ID{"opaque-token": spiffeid.RequireFromPath(td, "/static")})
	chain := attestor.Chain{a, static}
	tests := []struct {
		name    string
		token   string
		wantID  string
		wantErr error
	}{
		{name: "JWT proven by k8s", token: mint(t, epoch, saToken{}), wantID: "spiffe://example.org/ns/foo/sa/bar"},
		{name: "opaque token falls through", token: "opaque-token", wantID: "spiffe://example.org/static"},
		{name: "bad JWT stops the chain", token: mint(t, epoch, saToken{audiences: []string{"x"}}), wantErr: attestor.ErrUnauthenticated},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			id, err := chain.Attest(context.Background(), attestor.Credential{BearerToken: tc.token})
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("Attest() = %v, want %v", err, tc.wantErr)
				}
				return
			}
			if err != nil || id.ID.String() != tc.wantID {
				t.Fatalf("Attest() = %v, %v; want %s", id.ID, err, tc.wantID)
			}
		})
	}
}

func TestNewConfigErrors(t *testing.T) {
	clk := clocktest.New(epoch)
	tests := []struct {
		name    string
		cfg     k8s.Config
		wantMsg string
	}{
		{name: "no trust domain", cfg: k8s.Config{}, wantMsg: "k8s: trust domain is required"},
		{name: "bad Allow pattern", cfg: k8s.Config{TrustDomain: td, Allow: []string{"team-["}}, wantMsg: `k8s: bad allow/deny pattern "team-["`},
		{name: "bad Deny pattern", cfg: k8s.Config{TrustDomain: td, Deny: []string{`ns/\`}}, wantMsg: "k8s: bad allow/deny pattern"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := k8s.NewJWKS(k8s.JWKSConfig{Config: tc.cfg, Issuer: "", Keys: staticKeys(t, clk)}); err == nil || !strings.Contains(err.Error(), tc.wantMsg) {
				t.Errorf("NewJWKS() error = %v, want one containing %q", err, tc.wantMsg)
			}
			if _, err := k8s.NewTokenReview(k8s.TokenReviewConfig{Config: tc.cfg, Reviewer: &fakeReviewer{}, Cache: k8s.CacheConfig{}}); err == nil || !strings.Contains(err.Error(), tc.wantMsg) {
				t.Errorf("NewTokenReview() error = %v, want one containing %q", err, tc.wantMsg)
			}
		})
	}
}
