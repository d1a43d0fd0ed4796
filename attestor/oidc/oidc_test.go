package oidc_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
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
			wantErr: attestor.ErrPermissionDenied, msg: "no valid SPIFFE ID"},
		{name: "template leaves the trust domain", mod: func(c *oidc.IssuerConfig) { c.SPIFFEID = "spiffe://evil.org/{{.repository}}" },
			token: ti.token(t, issuer, []string{"meshca"}, good), wantErr: attestor.ErrPermissionDenied, msg: "outside trust domain"},
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
	for name, cfg := range map[string]oidc.IssuerConfig{
		"no issuer":       {Audiences: []string{"a"}, SPIFFEID: "x", JWKSFile: "f"},
		"no audiences":    {Issuer: issuer, SPIFFEID: "x", JWKSFile: "f"},
		"no template":     {Issuer: issuer, Audiences: []string{"a"}, JWKSFile: "f"},
		"no keys":         {Issuer: issuer, Audiences: []string{"a"}, SPIFFEID: "x"},
		"both keys":       {Issuer: issuer, Audiences: []string{"a"}, SPIFFEID: "x", JWKSFile: "f", JWKSURL: "u"},
		"broken template": {Issuer: issuer, Audiences: []string{"a"}, SPIFFEID: "{{", JWKSFile: "f"},
	} {
		if _, err := oidc.New(oidc.Config{Issuer: cfg, TrustDomain: td}); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	ok := oidc.IssuerConfig{Issuer: issuer, Audiences: []string{"a"}, SPIFFEID: "x", JWKSFile: "f"}
	if _, err := oidc.New(oidc.Config{Issuer: ok}); err == nil || !strings.HasPrefix(err.Error(), "oidc: ") {
		t.Errorf("no trust domain: New() = %v, want an oidc: error", err)
	}
	if _, err := oidc.New(oidc.Config{Issuer: ok, TrustDomain: td}); err != nil {
		t.Errorf("valid config: New() = %v", err)
	}
}
