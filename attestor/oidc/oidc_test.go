package oidc_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshca/meshca/attestor"
	"github.com/meshca/meshca/attestor/jwks"
	"github.com/meshca/meshca/attestor/oidc"
	"github.com/meshca/meshca/internal/clock/clocktest"
)

const issuer = "https://token.actions.example.com"

var (
	td  = spiffeid.RequireTrustDomainFromString("example.org")
	now = time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)
)

type testIssuer struct {
	key  *ecdsa.PrivateKey
	sig  jose.Signer
	jwks []byte
}

func newIssuer(t *testing.T) *testIssuer {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	sig, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: key}, (&jose.SignerOptions{}).WithHeader("kid", "k1"))
	if err != nil {
		t.Fatal(err)
	}
	set, _ := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: key.Public(), KeyID: "k1", Algorithm: "ES256", Use: "sig"}}})
	return &testIssuer{key: key, sig: sig, jwks: set}
}

func (ti *testIssuer) token(t *testing.T, iss string, aud []string, extra map[string]any) string {
	tok, err := jwt.Signed(ti.sig).Claims(jwt.Claims{
		Issuer: iss, Subject: "repo:my-org/web:ref:refs/heads/main", Audience: aud,
		Expiry: jwt.NewNumericDate(now.Add(10 * time.Minute)), IssuedAt: jwt.NewNumericDate(now),
	}).Claims(extra).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func newAttestor(t *testing.T, ti *testIssuer, mod func(*oidc.IssuerConfig)) *oidc.Attestor {
	cfg := oidc.IssuerConfig{
		Issuer: issuer, JWKSURL: "unused", Audiences: []string{"meshca"},
		SPIFFEID:       "spiffe://{{td}}/gh/{{.repository}}",
		RequiredClaims: map[string]string{"repository_owner": "my-org"},
		PathClaims:     []string{"repository"},
	}
	if mod != nil {
		mod(&cfg)
	}
	clk := clocktest.New(now)
	keys := jwks.NewKeySet(jwks.KeySetConfig{Fetch: func(context.Context) ([]byte, error) { return ti.jwks, nil }, Clock: clk})
	a, err := oidc.New(oidc.Config{Issuer: cfg, TrustDomain: td, Keys: keys, Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestOIDC(t *testing.T) {
	ti := newIssuer(t)
	good := map[string]any{"repository": "my-org/web", "repository_owner": "my-org"}
	tests := []struct {
		name    string
		mod     func(*oidc.IssuerConfig)
		token   string
		wantID  string
		wantErr error
		msg     string
	}{
		{name: "valid", token: ti.token(t, issuer, []string{"meshca"}, good), wantID: "spiffe://example.org/gh/my-org/web"},
		{name: "another issuer is not ours", token: ti.token(t, "https://other.example", []string{"meshca"}, good), wantErr: attestor.ErrNoCredential},
		{name: "not a JWT", token: "meshca-jt.abc", wantErr: attestor.ErrNoCredential},
		{name: "wrong audience", token: ti.token(t, issuer, []string{"sts.amazonaws.com"}, good), wantErr: attestor.ErrUnauthenticated, msg: "does not include meshca"},
		{name: "required claim differs", token: ti.token(t, issuer, []string{"meshca"}, map[string]any{"repository": "evil/web", "repository_owner": "evil"}),
			wantErr: attestor.ErrPermissionDenied, msg: `claim "repository_owner" must be "my-org"`},
		{name: "claim for the ID missing", token: ti.token(t, issuer, []string{"meshca"}, map[string]any{"repository_owner": "my-org"}),
			wantErr: attestor.ErrPermissionDenied, msg: "lacks a claim"},
		{name: "claims make a path traversal", token: ti.token(t, issuer, []string{"meshca"}, map[string]any{"repository": "../../ns/kube-system/sa/admin", "repository_owner": "my-org"}),
			wantErr: attestor.ErrPermissionDenied, msg: `claim "repository" is not a SPIFFE path`},
		{name: "forged signature", token: newIssuer(t).token(t, issuer, []string{"meshca"}, good), wantErr: attestor.ErrUnauthenticated, msg: "signature does not verify"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			id, err := newAttestor(t, ti, tc.mod).Attest(context.Background(), attestor.Credential{BearerToken: tc.token})
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) || !strings.Contains(err.Error(), tc.msg) {
					t.Fatalf("err = %v, want %v saying %q", err, tc.wantErr, tc.msg)
				}
				return
			}
			if err != nil || id.ID.String() != tc.wantID || id.Kind != oidc.Kind || id.Subject != issuer+"#repo:my-org/web:ref:refs/heads/main" {
				t.Fatalf("Attest = %+v, %v", id, err)
			}
		})
	}
}

func TestOIDCConfig(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte(body), 0o600)
		return p
	}
	good := write("good.yaml", "issuers:\n- issuer: "+issuer+"\n  jwks_file: /x\n  audiences: [meshca]\n  spiffe_id: 'spiffe://{{td}}/gh/{{.repository}}'\n")
	iss, err := oidc.LoadFile(good)
	if err != nil || len(iss) != 1 || iss[0].JWKSFile != "/x" {
		t.Fatalf("LoadFile = %+v, %v", iss, err)
	}
	if _, err := oidc.LoadFile(write("typo.yaml", "issuers:\n- issuer: x\n  audience: [meshca]\n")); err == nil || !strings.Contains(err.Error(), "audience") {
		t.Fatalf("misspelled field = %v", err)
	}
	tmpl := func(spiffeID string, pathClaims ...string) oidc.IssuerConfig {
		return oidc.IssuerConfig{Issuer: issuer, Audiences: []string{"a"}, SPIFFEID: spiffeID, JWKSFile: "f", PathClaims: pathClaims}
	}
	for name, cfg := range map[string]oidc.IssuerConfig{
		"no issuer":                    {Audiences: []string{"a"}, SPIFFEID: "spiffe://{{td}}/x", JWKSFile: "f"},
		"no audiences":                 {Issuer: issuer, SPIFFEID: "spiffe://{{td}}/x", JWKSFile: "f"},
		"no template":                  {Issuer: issuer, Audiences: []string{"a"}, JWKSFile: "f"},
		"no keys":                      {Issuer: issuer, Audiences: []string{"a"}, SPIFFEID: "spiffe://{{td}}/x"},
		"both keys":                    {Issuer: issuer, Audiences: []string{"a"}, SPIFFEID: "spiffe://{{td}}/x", JWKSFile: "f", JWKSURL: "u"},
		"broken template":              tmpl("{{"),
		"not a SPIFFE ID":              tmpl("x"),
		"template leaves the domain":   tmpl("spiffe://evil.org/{{.repository}}"),
		"claim in the trust domain":    tmpl("spiffe://{{.org}}.org/x"),
		"empty segment in fixed text":  tmpl("spiffe://{{td}}//{{.repository}}"),
		"function call":                tmpl(`spiffe://{{td}}/{{printf "%s" .ref}}`),
		"pipeline":                     tmpl("spiffe://{{td}}/{{.ref | html}}"),
		"condition":                    tmpl("spiffe://{{td}}/{{if .ref}}{{.ref}}{{end}}"),
		"range":                        tmpl("spiffe://{{td}}/{{range .refs}}{{.}}{{end}}"),
		"variable":                     tmpl("spiffe://{{td}}/{{$r := .ref}}{{$r}}"),
		"the whole claims object":      tmpl("spiffe://{{td}}/{{.}}"),
		"index with a computed key":    tmpl("spiffe://{{td}}/{{index . .k}}"),
		"path_claims names an unused":  tmpl("spiffe://{{td}}/gh/{{.repository}}", "repo"),
		"path_claims names td":         tmpl("spiffe://{{td}}/gh/{{.repository}}", "td"),
		"string constant is not fixed": tmpl(`spiffe://{{td}}/{{"ns"}}/x/sa/{{.y}}`),
	} {
		if _, err := oidc.New(oidc.Config{Issuer: cfg, TrustDomain: td}); err == nil || !strings.HasPrefix(err.Error(), "oidc: ") {
			t.Errorf("%s: New() = %v, want an oidc: error", name, err)
		}
	}
	for name, cfg := range map[string]oidc.IssuerConfig{
		"claim":              tmpl("spiffe://{{td}}/gh/{{.repository}}"),
		"path claim":         tmpl("spiffe://{{td}}/gh/{{.repository}}", "repository"),
		"nested path claim":  tmpl("spiffe://{{td}}/gcp/{{.google.project}}", "google.project"),
		"index":              tmpl(`spiffe://{{td}}/k/{{index . "kubernetes.io" "namespace"}}`),
		"trimmed spaces":     tmpl("spiffe://{{td}}/gh/{{- .repository -}}"),
		"literal k8s shape":  tmpl("spiffe://{{td}}/ns/ci/sa/{{.sub}}"),
		"claim in a segment": tmpl("spiffe://{{td}}/ci/run-{{.run_id}}-{{.attempt}}"),
	} {
		if _, err := oidc.New(oidc.Config{Issuer: cfg, TrustDomain: td}); err != nil {
			t.Errorf("%s: New() = %v", name, err)
		}
	}
	if _, err := oidc.LoadFile(write("path.yaml", "issuers:\n- issuer: "+issuer+"\n  jwks_file: /x\n  audiences: [meshca]\n  spiffe_id: 'spiffe://{{td}}/gh/{{.repository}}'\n  path_claims: [repository]\n")); err != nil {
		t.Errorf("LoadFile(path_claims) = %v", err)
	}
	ok := tmpl("spiffe://{{td}}/x")
	if _, err := oidc.New(oidc.Config{Issuer: ok}); err == nil || !strings.HasPrefix(err.Error(), "oidc: ") {
		t.Errorf("no trust domain: New() = %v, want an oidc: error", err)
	}
	if _, err := oidc.New(oidc.Config{Issuer: ok, TrustDomain: td}); err != nil {
		t.Errorf("valid config: New() = %v", err)
	}
}

// TestClaimValuesStayInTheirSegment is finding 1 of the security hardening
// issue: a substituted claim value must never add SPIFFE path segments, and
// an OIDC-minted ID never takes the Kubernetes shape /ns/<ns>/sa/<sa> unless
// the template spells it out in its fixed text.
func TestClaimValuesStayInTheirSegment(t *testing.T) {
	ti := newIssuer(t)
	const ciRef = "spiffe://{{td}}/ci/{{.repository_owner}}/{{.ref}}"
	tests := []struct {
		name       string
		template   string
		pathClaims []string
		claims     map[string]any
		wantID     string // "" means refused
		msg        string // in the refusal
	}{
		{name: "ref without slashes", template: ciRef, claims: map[string]any{"ref": "main"}, wantID: "spiffe://example.org/ci/my-org/main"},
		{name: "ref with slashes", template: ciRef, claims: map[string]any{"ref": "feature/ns/prod/sa/payments"},
			msg: `claim "ref" holds a "/"`},
		{name: "ref is ..", template: ciRef, claims: map[string]any{"ref": ".."}, msg: `claim "ref" is not a SPIFFE path segment`},
		{name: "ref is .", template: ciRef, claims: map[string]any{"ref": "."}, msg: `claim "ref" is not a SPIFFE path segment`},
		{name: ".. inside a segment", template: "spiffe://{{td}}/ci/v{{.ref}}", claims: map[string]any{"ref": ".."}, msg: `claim "ref" is not a SPIFFE path segment`},
		{name: "empty claim", template: ciRef, claims: map[string]any{"ref": ""}, msg: `claim "ref" is empty`},
		{name: "empty claim inside a segment", template: "spiffe://{{td}}/ci/run-{{.ref}}", claims: map[string]any{"ref": ""}, msg: `claim "ref" is empty`},
		{name: "character SPIFFE forbids", template: ciRef, claims: map[string]any{"ref": "refs:heads"}, msg: `claim "ref" is not a SPIFFE path segment`},
		{name: "percent-encoded slash", template: ciRef, claims: map[string]any{"ref": "a%2Fb"}, msg: `claim "ref" is not a SPIFFE path segment`},
		{name: "not a string", template: ciRef, claims: map[string]any{"ref": 42}, msg: `claim "ref" is not a string`},
		{name: "path claim opted in", template: "spiffe://{{td}}/gh/{{.repository}}", pathClaims: []string{"repository"},
			claims: map[string]any{"repository": "my-org/web"}, wantID: "spiffe://example.org/gh/my-org/web"},
		{name: "path claim not opted in", template: "spiffe://{{td}}/gh/{{.repository}}",
			claims: map[string]any{"repository": "my-org/web"}, msg: `claim "repository" holds a "/"`},
		{name: "path claim with .. segment", template: "spiffe://{{td}}/gh/{{.repository}}", pathClaims: []string{"repository"},
			claims: map[string]any{"repository": "my-org/../../ns/prod/sa/payments"}, msg: `claim "repository" is not a SPIFFE path`},
		{name: "path claim with empty segment", template: "spiffe://{{td}}/gh/{{.repository}}", pathClaims: []string{"repository"},
			claims: map[string]any{"repository": "my-org//web"}, msg: `claim "repository" is not a SPIFFE path`},
		{name: "path claim with a leading slash", template: "spiffe://{{td}}/gh{{.repository}}", pathClaims: []string{"repository"},
			claims: map[string]any{"repository": "/my-org/web"}, msg: `claim "repository" is not a SPIFFE path`},
		{name: "path claim forms /ns/x/sa/y", template: ciRef, pathClaims: []string{"ref"},
			claims: map[string]any{"ref": "feature/ns/prod/sa/payments"}, msg: "Kubernetes shape"},
		{name: "single values form /ns/x/sa/y", template: "spiffe://{{td}}/{{.kind}}/{{.team}}/sa/{{.job}}",
			claims: map[string]any{"kind": "ns", "team": "prod", "job": "payments"}, msg: "Kubernetes shape"},
		{name: "the whole path is /ns/x/sa/y", template: "spiffe://{{td}}/{{.a}}/{{.b}}/{{.c}}/{{.d}}",
			claims: map[string]any{"a": "ns", "b": "prod", "c": "sa", "d": "payments"}, msg: "Kubernetes shape"},
		{name: "shape in another case", template: "spiffe://{{td}}/ci/{{.a}}/prod/{{.c}}/payments",
			claims: map[string]any{"a": "NS", "c": "Sa"}, msg: "Kubernetes shape"},
		{name: "half literal shape", template: "spiffe://{{td}}/ci/ns/{{.team}}/{{.kind}}/{{.job}}",
			claims: map[string]any{"team": "prod", "kind": "sa", "job": "payments"}, msg: "Kubernetes shape"},
		{name: "template spells the shape literally", template: "spiffe://{{td}}/ns/ci/sa/{{.repository_owner}}",
			wantID: "spiffe://example.org/ns/ci/sa/my-org"},
		{name: "template spells the shape literally around claims", template: "spiffe://{{td}}/ci/ns/{{.team}}/sa/{{.job}}",
			claims: map[string]any{"team": "prod", "job": "payments"}, wantID: "spiffe://example.org/ci/ns/prod/sa/payments"},
		{name: "ns and sa too far apart", template: "spiffe://{{td}}/ci/{{.a}}/x/y/{{.b}}/z",
			claims: map[string]any{"a": "ns", "b": "sa"}, wantID: "spiffe://example.org/ci/ns/x/y/sa/z"},
		{name: "nested claim", template: "spiffe://{{td}}/gcp/{{.google.project}}",
			claims: map[string]any{"google": map[string]any{"project": "a/b"}}, msg: `claim "google.project" holds a "/"`},
		{name: "claim named by index", template: `spiffe://{{td}}/k/{{index . "kubernetes.io" "namespace"}}`,
			claims: map[string]any{"kubernetes.io": map[string]any{"namespace": "prod"}}, wantID: "spiffe://example.org/k/prod"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a := newAttestor(t, ti, func(c *oidc.IssuerConfig) { c.SPIFFEID, c.PathClaims = tc.template, tc.pathClaims })
			claims := map[string]any{"repository_owner": "my-org"}
			for k, v := range tc.claims {
				claims[k] = v
			}
			id, err := a.Attest(context.Background(), attestor.Credential{BearerToken: ti.token(t, issuer, []string{"meshca"}, claims)})
			if tc.wantID != "" {
				if err != nil || id.ID.String() != tc.wantID {
					t.Fatalf("Attest = %v, %v; want %s", id.ID, err, tc.wantID)
				}
				return
			}
			if err == nil {
				t.Fatalf("Attest = %v, want a refusal saying %q", id.ID, tc.msg)
			}
			if !errors.Is(err, attestor.ErrPermissionDenied) || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("Attest error = %v, want ErrPermissionDenied saying %q", err, tc.msg)
			}
		})
	}
}

// TestHostileTokens: tokens naming our issuer that an attacker crafts never
// prove an identity. Those the verifier cannot even read are not this
// attestor's kind (the chain's next attestor refuses them too); the others
// are refused as unauthenticated.
func TestHostileTokens(t *testing.T) {
	ti := newIssuer(t)
	claims := jwt.Claims{Issuer: issuer, Audience: []string{"meshca"}, Expiry: jwt.NewNumericDate(now.Add(10 * time.Minute))}
	extra := map[string]any{"repository": "my-org/web", "repository_owner": "my-org"}
	enc := base64.RawURLEncoding.EncodeToString
	payload, _ := json.Marshal(map[string]any{"iss": issuer, "aud": "meshca", "exp": now.Add(time.Hour).Unix(), "repository": "my-org/web", "repository_owner": "my-org"})
	pubDER, _ := x509.MarshalPKIXPublicKey(ti.key.Public())
	pubPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER})
	hs := func(secret []byte, kid string) string {
		sig, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.HS256, Key: secret}, (&jose.SignerOptions{}).WithHeader("kid", kid))
		if err != nil {
			t.Fatal(err)
		}
		tok, err := jwt.Signed(sig).Claims(claims).Claims(extra).Serialize()
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	unknownKid, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: other}, (&jose.SignerOptions{}).WithHeader("kid", "k2"))
	if err != nil {
		t.Fatal(err)
	}
	good := ti.token(t, issuer, []string{"meshca"}, extra)
	tests := []struct {
		name    string
		token   string
		wantErr error
		msg     string
	}{
		{name: "alg none", token: enc([]byte(`{"alg":"none","kid":"k1"}`)) + "." + enc(payload) + ".", wantErr: attestor.ErrNoCredential},
		{name: "alg None", token: enc([]byte(`{"alg":"None","kid":"k1"}`)) + "." + enc(payload) + ".", wantErr: attestor.ErrNoCredential},
		{name: "HS256 keyed with the issuer's public key PEM", token: hs(pubPEM, "k1"), wantErr: attestor.ErrNoCredential},
		{name: "HS256 keyed with the issuer's public key DER", token: hs(pubDER, "k1"), wantErr: attestor.ErrNoCredential},
		{name: "unknown kid", token: func() string {
			tok, err := jwt.Signed(unknownKid).Claims(claims).Claims(extra).Serialize()
			if err != nil {
				t.Fatal(err)
			}
			return tok
		}(), wantErr: attestor.ErrUnauthenticated, msg: `unknown key ID "k2"`},
		{name: "1 MiB of claims", token: ti.token(t, issuer, []string{"meshca"}, map[string]any{"repository": "my-org/web", "repository_owner": "my-org", "x": strings.Repeat("A", 1<<20)}),
			wantErr: attestor.ErrNoCredential},
		{name: "trailing newline", token: good + "\n", wantErr: attestor.ErrNoCredential},
		{name: "extra dot", token: good + ".", wantErr: attestor.ErrNoCredential},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			id, err := newAttestor(t, ti, nil).Attest(context.Background(), attestor.Credential{BearerToken: tc.token})
			if err == nil {
				t.Fatalf("Attest = %v, want a refusal", id.ID)
			}
			if !errors.Is(err, tc.wantErr) || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("Attest error = %v, want %v saying %q", err, tc.wantErr, tc.msg)
			}
		})
	}
}
