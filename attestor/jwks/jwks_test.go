package jwks_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/meshca/meshca/attestor/jwks"
	"github.com/meshca/meshca/internal/clock/clocktest"
)

const (
	testIssuer   = "https://issuer.example.org"
	testAudience = "meshca"
)

// epoch is the fake "now" of every test.
var epoch = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)

// Keys are generated once: RSA generation is slow and the tests only need
// distinct keys, not fresh ones.
var (
	keysOnce            sync.Once
	ecKey, ecKey2       *ecdsa.PrivateKey
	rsaKey              *rsa.PrivateKey
	hmacKey             = []byte("0123456789abcdef0123456789abcdef")
	errKeyGenerationBad error
)

func testKeys(tb testing.TB) {
	tb.Helper()
	keysOnce.Do(func() {
		var err error
		if ecKey, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
			errKeyGenerationBad = err
			return
		}
		if ecKey2, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
			errKeyGenerationBad = err
			return
		}
		if rsaKey, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
			errKeyGenerationBad = err
		}
	})
	if errKeyGenerationBad != nil {
		tb.Fatalf("generate keys: %v", errKeyGenerationBad)
	}
}

// mint signs claims (any number of JSON-marshalable values merged into the
// payload) with key under alg, naming kid in the header when not empty.
func mint(tb testing.TB, alg jose.SignatureAlgorithm, key any, kid string, claims ...any) string {
	tb.Helper()
	opts := (&jose.SignerOptions{}).WithType("JWT")
	if kid != "" {
		opts = opts.WithHeader(jose.HeaderKey("kid"), kid)
	}
	sig, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: key}, opts)
	if err != nil {
		tb.Fatalf("NewSigner(%s): %v", alg, err)
	}
	b := jwt.Signed(sig)
	for _, c := range claims {
		b = b.Claims(c)
	}
	tok, err := b.Serialize()
	if err != nil {
		tb.Fatalf("Serialize: %v", err)
	}
	return tok
}

// std returns valid registered claims relative to now.
func std(now time.Time) jwt.Claims {
	return jwt.Claims{
		Issuer:    testIssuer,
		Subject:   "system:serviceaccount:foo:bar",
		Audience:  jwt.Audience{testAudience},
		Expiry:    jwt.NewNumericDate(now.Add(time.Hour)),
		NotBefore: jwt.NewNumericDate(now.Add(-time.Minute)),
		IssuedAt:  jwt.NewNumericDate(now.Add(-time.Minute)),
	}
}

// pub returns the public JWK of key under kid.
func pub(kid string, key crypto.Signer, alg jose.SignatureAlgorithm) jose.JSONWebKey {
	return jose.JSONWebKey{Key: key.Public(), KeyID: kid, Algorithm: string(alg), Use: "sig"}
}

func jwksDoc(tb testing.TB, keys ...jose.JSONWebKey) []byte {
	tb.Helper()
	b, err := json.Marshal(jose.JSONWebKeySet{Keys: keys})
	if err != nil {
		tb.Fatalf("marshal JWKS: %v", err)
	}
	return b
}

// source is a Fetcher whose document or error tests change at will. It
// counts the fetches.
type source struct {
	mu    sync.Mutex
	doc   []byte
	err   error
	gate  chan struct{} // when not nil, fetch waits for it to close
	calls int
}

func (s *source) set(doc []byte, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.doc, s.err = doc, err
}

func (s *source) fetch(context.Context) ([]byte, error) {
	s.mu.Lock()
	s.calls++
	gate := s.gate
	s.mu.Unlock()
	if gate != nil {
		<-gate
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.doc, s.err
}

func (s *source) fetches() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls
}

// fixture is a verifier over a mutable key set at a fake time.
type fixture struct {
	clk *clocktest.Fake
	src *source
	ks  *jwks.KeySet
	v   *jwks.Verifier
}

const minRefresh = 30 * time.Second

func newFixture(tb testing.TB, keys ...jose.JSONWebKey) *fixture {
	tb.Helper()
	testKeys(tb)
	if keys == nil {
		keys = []jose.JSONWebKey{pub("ec1", ecKey, jose.ES256), pub("rsa1", rsaKey, jose.RS256)}
	}
	f := &fixture{clk: clocktest.New(epoch), src: &source{}}
	f.src.set(jwksDoc(tb, keys...), nil)
	f.ks = jwks.NewKeySet(jwks.KeySetConfig{Fetch: f.src.fetch, Clock: f.clk, MinRefresh: minRefresh})
	f.v = &jwks.Verifier{Issuer: testIssuer, Audiences: []string{testAudience}, Keys: f.ks, Clock: f.clk}
	return f
}

// noneToken builds an unsigned token by hand: go-jose refuses to make one.
func noneToken(tb testing.TB, claims any) string {
	tb.Helper()
	enc := base64.RawURLEncoding.EncodeToString
	payload, err := json.Marshal(claims)
	if err != nil {
		tb.Fatal(err)
	}
	return enc([]byte(`{"alg":"none","typ":"JWT","kid":"ec1"}`)) + "." + enc(payload) + "."
}

func TestVerify(t *testing.T) {
	testKeys(t)
	now := epoch
	with := func(mod func(*jwt.Claims)) jwt.Claims {
		c := std(now)
		mod(&c)
		return c
	}
	valid := std(now)
	tests := []struct {
		name    string
		token   func(t *testing.T) string
		leeway  time.Duration
		wantErr string // substring of the error; "" means success
	}{
		{name: "ES256", token: func(t *testing.T) string { return mint(t, jose.ES256, ecKey, "ec1", valid) }},
		{name: "RS256", token: func(t *testing.T) string { return mint(t, jose.RS256, rsaKey, "rsa1", valid) }},
		{name: "no kid tries every key", token: func(t *testing.T) string { return mint(t, jose.RS256, rsaKey, "", valid) }},
		{
			name: "one of several audiences",
			token: func(t *testing.T) string {
				return mint(t, jose.ES256, ecKey, "ec1", with(func(c *jwt.Claims) { c.Audience = jwt.Audience{"other", testAudience} }))
			},
		},
		{
			name: "no nbf and no iat",
			token: func(t *testing.T) string {
				return mint(t, jose.ES256, ecKey, "ec1", with(func(c *jwt.Claims) { c.NotBefore, c.IssuedAt = nil, nil }))
			},
		},
		{
			name: "wrong issuer",
			token: func(t *testing.T) string {
				return mint(t, jose.ES256, ecKey, "ec1", with(func(c *jwt.Claims) { c.Issuer = "https://evil.example.org" }))
			},
			wantErr: `issuer "https://evil.example.org" is not "https://issuer.example.org"`,
		},
		{
			name: "no issuer",
			token: func(t *testing.T) string {
				return mint(t, jose.ES256, ecKey, "ec1", with(func(c *jwt.Claims) { c.Issuer = "" }))
			},
			wantErr: "issuer",
		},
		{
			name: "audience missing",
			token: func(t *testing.T) string {
				return mint(t, jose.ES256, ecKey, "ec1", with(func(c *jwt.Claims) { c.Audience = nil }))
			},
			wantErr: "does not include meshca",
		},
		{
			name: "audience not matching",
			token: func(t *testing.T) string {
				return mint(t, jose.ES256, ecKey, "ec1", with(func(c *jwt.Claims) { c.Audience = jwt.Audience{"istio-ca", "api"} }))
			},
			wantErr: "audience [istio-ca api] does not include meshca",
		},
		{
			name: "expired beyond leeway",
			token: func(t *testing.T) string {
				return mint(t, jose.ES256, ecKey, "ec1", with(func(c *jwt.Claims) { c.Expiry = jwt.NewNumericDate(now.Add(-61 * time.Second)) }))
			},
			wantErr: "expired at " + now.Add(-61*time.Second).Format(time.RFC3339),
		},
		{
			name: "expired within default leeway",
			token: func(t *testing.T) string {
				return mint(t, jose.ES256, ecKey, "ec1", with(func(c *jwt.Claims) { c.Expiry = jwt.NewNumericDate(now.Add(-59 * time.Second)) }))
			},
		},
		{
			name: "expired exactly at the leeway",
			token: func(t *testing.T) string {
				return mint(t, jose.ES256, ecKey, "ec1", with(func(c *jwt.Claims) { c.Expiry = jwt.NewNumericDate(now.Add(-time.Minute)) }))
			},
		},
		{
			name:   "expired beyond a custom leeway",
			leeway: 5 * time.Second,
			token: func(t *testing.T) string {
				return mint(t, jose.ES256, ecKey, "ec1", with(func(c *jwt.Claims) { c.Expiry = jwt.NewNumericDate(now.Add(-10 * time.Second)) }))
			},
			wantErr: "expired at",
		},
		{
			name: "missing exp refused",
			token: func(t *testing.T) string {
				return mint(t, jose.ES256, ecKey, "ec1", with(func(c *jwt.Claims) { c.Expiry = nil }))
			},
			wantErr: "no expiry (exp)",
		},
		{
			name: "nbf in the future",
			token: func(t *testing.T) string {
				return mint(t, jose.ES256, ecKey, "ec1", with(func(c *jwt.Claims) { c.NotBefore = jwt.NewNumericDate(now.Add(2 * time.Minute)) }))
			},
			wantErr: "not valid before " + now.Add(2*time.Minute).Format(time.RFC3339),
		},
		{
			name: "nbf in the future within leeway",
			token: func(t *testing.T) string {
				return mint(t, jose.ES256, ecKey, "ec1", with(func(c *jwt.Claims) { c.NotBefore = jwt.NewNumericDate(now.Add(30 * time.Second)) }))
			},
		},
		{
			name: "iat in the future",
			token: func(t *testing.T) string {
				return mint(t, jose.ES256, ecKey, "ec1", with(func(c *jwt.Claims) {
					c.NotBefore = nil
					c.IssuedAt = jwt.NewNumericDate(now.Add(2 * time.Minute))
				}))
			},
			wantErr: "issued in the future",
		},
		{
			name: "HS256 refused",
			token: func(t *testing.T) string {
				return mint(t, jose.HS256, hmacKey, "ec1", valid)
			},
			wantErr: "not a signed JWT with an accepted algorithm",
		},
		{
			name:    "alg none refused",
			token:   func(t *testing.T) string { return noneToken(t, valid) },
			wantErr: "not a signed JWT with an accepted algorithm",
		},
		{
			name: "ES384 refused",
			token: func(t *testing.T) string {
				k, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
				if err != nil {
					t.Fatal(err)
				}
				return mint(t, jose.ES384, k, "ec1", valid)
			},
			wantErr: "not a signed JWT with an accepted algorithm",
		},
		{
			name: "signed by another key under a known kid",
			token: func(t *testing.T) string {
				return mint(t, jose.ES256, ecKey2, "ec1", valid)
			},
			wantErr: "signature does not verify",
		},
		{
			name: "RS256 header naming an EC key",
			token: func(t *testing.T) string {
				return mint(t, jose.RS256, rsaKey, "ec1", valid)
			},
			wantErr: `key "ec1" is not for signing with RS256`,
		},
		{
			name: "payload tampered with",
			token: func(t *testing.T) string {
				tok := mint(t, jose.ES256, ecKey, "ec1", valid)
				parts := strings.Split(tok, ".")
				evil := with(func(c *jwt.Claims) { c.Subject = "system:serviceaccount:kube-system:admin" })
				p, err := json.Marshal(evil)
				if err != nil {
					t.Fatal(err)
				}
				parts[1] = base64.RawURLEncoding.EncodeToString(p)
				return strings.Join(parts, ".")
			},
			wantErr: "signature does not verify",
		},
		{
			name: "signature stripped",
			token: func(t *testing.T) string {
				tok := mint(t, jose.ES256, ecKey, "ec1", valid)
				return tok[:strings.LastIndex(tok, ".")+1]
			},
			wantErr: "invalid token",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			f.v.Leeway = tc.leeway
			claims, err := f.v.Verify(context.Background(), tc.token(t), nil)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("Verify() = %v, want success", err)
				}
				if claims.Subject != "system:serviceaccount:foo:bar" {
					t.Errorf("Verify() subject = %q", claims.Subject)
				}
				return
			}
			if !errors.Is(err, jwks.ErrInvalid) {
				t.Fatalf("Verify() error = %v, want ErrInvalid", err)
			}
			if !strings.HasPrefix(err.Error(), "jwks: ") {
				t.Errorf("Verify() error = %q, want the package prefix", err)
			}
			if !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("Verify() error = %q, want it to contain %q", err, tc.wantErr)
			}
			if claims != nil {
				t.Errorf("Verify() returned claims along with an error")
			}
		})
	}
}

func TestVerifyAudienceMessageNamesAll(t *testing.T) {
	f := newFixture(t)
	f.v.Audiences = []string{"meshca", "istio-ca"}
	c := std(epoch)
	c.Audience = jwt.Audience{"api"}
	_, err := f.v.Verify(context.Background(), mint(t, jose.ES256, ecKey, "ec1", c), nil)
	if !errors.Is(err, jwks.ErrInvalid) || !strings.Contains(err.Error(), "does not include meshca or istio-ca") {
		t.Fatalf("Verify() error = %v, want one naming both audiences", err)
	}
	c.Audience = jwt.Audience{"istio-ca"}
	if _, err := f.v.Verify(context.Background(), mint(t, jose.ES256, ecKey, "ec1", c), nil); err != nil {
		t.Fatalf("Verify(aud istio-ca) = %v, want success", err)
	}
}

func TestVerifyDecodesExtraClaims(t *testing.T) {
	f := newFixture(t)
	type extra struct {
		K8s struct {
			Namespace string `json:"namespace"`
		} `json:"kubernetes.io"`
	}
	tok := mint(t, jose.ES256, ecKey, "ec1", std(epoch), map[string]any{"kubernetes.io": map[string]any{"namespace": "foo"}})
	var e extra
	if _, err := f.v.Verify(context.Background(), tok, &e); err != nil {
		t.Fatalf("Verify() = %v", err)
	}
	if e.K8s.Namespace != "foo" {
		t.Errorf("extra namespace = %q, want foo", e.K8s.Namespace)
	}
}

func TestVerifyMalformed(t *testing.T) {
	testKeys(t)
	valid := mint(t, jose.ES256, ecKey, "ec1", std(epoch))
	parts := strings.Split(valid, ".")
	tests := []struct {
		name  string
		token string
	}{
		{name: "empty", token: ""},
		{name: "garbage", token: "not a jwt"},
		{name: "three empty parts", token: ".."},
		{name: "bad base64 header", token: "!!!." + parts[1] + "." + parts[2]},
		{name: "header not JSON", token: base64.RawURLEncoding.EncodeToString([]byte("nope")) + "." + parts[1] + "." + parts[2]},
		{name: "two parts", token: parts[0] + "." + parts[1]},
		{name: "four parts", token: valid + ".x"},
		{name: "JSON serialization", token: `{"payload":"` + parts[1] + `","protected":"` + parts[0] + `","signature":"` + parts[2] + `"}`},
		{name: "JWE shaped", token: strings.Join([]string{parts[0], "a", "b", "c", "d"}, ".")},
		{name: "payload not JSON", token: parts[0] + "." + base64.RawURLEncoding.EncodeToString([]byte("[1,2")) + "." + parts[2]},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			_, err := f.v.Verify(context.Background(), tc.token, nil)
			if !errors.Is(err, jwks.ErrInvalid) {
				t.Fatalf("Verify(%q) error = %v, want ErrInvalid", tc.token, err)
			}
		})
	}
	t.Run("unparseable tokens never fetch", func(t *testing.T) {
		f := newFixture(t)
		for _, tok := range []string{"", "not a jwt", "..", "a.b.c"} {
			_, _ = f.v.Verify(context.Background(), tok, nil)
		}
		if n := f.src.fetches(); n != 0 {
			t.Errorf("fetches = %d after unparseable tokens, want 0", n)
		}
	})
}

// TestRefetch walks a key set through unknown key IDs and rotation, step by
// step on one fake clock.
func TestRefetch(t *testing.T) {
	testKeys(t)
	type step struct {
		name        string
		advance     time.Duration
		publish     []jose.JSONWebKey // when not nil, the issuer now serves these keys
		kid         string
		key         crypto.Signer
		wantErr     string
		wantFetches int
	}
	ec1, ec2, rsa1 := pub("ec1", ecKey, jose.ES256), pub("ec2", ecKey2, jose.ES256), pub("rsa1", rsaKey, jose.RS256)
	tests := []struct {
		name  string
		steps []step
	}{
		{
			name: "unknown kid refetches once per MinRefresh",
			steps: []step{
				{name: "first token fetches", kid: "ec1", key: ecKey, wantFetches: 1},
				{name: "known kid does not fetch", advance: 2 * minRefresh, kid: "ec1", key: ecKey, wantFetches: 1},
				{name: "unknown kid refetches exactly once", kid: "nope", key: ecKey, wantErr: `signed by an unknown key`, wantFetches: 2},
				{name: "second unknown kid within MinRefresh does not refetch", advance: minRefresh - time.Second, kid: "nope2", key: ecKey, wantErr: `unknown key ID "nope2"`, wantFetches: 2},
				{name: "known kid still fine", kid: "ec1", key: ecKey, wantFetches: 2},
				{name: "unknown kid after MinRefresh refetches", advance: time.Second, kid: "nope2", key: ecKey, wantErr: `unknown key ID "nope2"`, wantFetches: 3},
			},
		},
		{
			name: "first fetch knows no kid yet",
			steps: []step{
				{name: "unknown kid on an empty set fetches", kid: "nope", key: ecKey, wantErr: "unknown key", wantFetches: 1},
				{name: "then a known kid within MinRefresh needs no fetch", kid: "ec1", key: ecKey, wantFetches: 1},
			},
		},
		{
			name: "rotation to a new kid",
			steps: []step{
				{name: "old key", kid: "ec1", key: ecKey, wantFetches: 1},
				{name: "new kid published but not yet refetchable", publish: []jose.JSONWebKey{ec1, ec2, rsa1}, kid: "ec2", key: ecKey2, wantErr: "unknown key", wantFetches: 1},
				{name: "accepted after MinRefresh", advance: minRefresh, kid: "ec2", key: ecKey2, wantFetches: 2},
				{name: "old key still accepted", kid: "ec1", key: ecKey, wantFetches: 2},
				{name: "old key retired", advance: minRefresh, publish: []jose.JSONWebKey{ec2}, kid: "ec2", key: ecKey2, wantFetches: 2},
			},
		},
		{
			name: "rotation published before the first token",
			steps: []step{
				{name: "warm up", kid: "ec1", key: ecKey, wantFetches: 1},
				{name: "publish and wait", advance: time.Minute, publish: []jose.JSONWebKey{ec2}, kid: "ec2", key: ecKey2, wantFetches: 2},
				{name: "retired kid refused after refetch window", advance: time.Minute, kid: "ec1", key: ecKey, wantErr: "unknown key", wantFetches: 3},
			},
		},
		{
			name: "same kid, different key",
			steps: []step{
				{name: "old key", kid: "ec1", key: ecKey, wantFetches: 1},
				{name: "issuer swaps the key behind ec1", publish: []jose.JSONWebKey{pub("ec1", ecKey2, jose.ES256)}, kid: "ec1", key: ecKey2, wantErr: "signature does not verify", wantFetches: 1},
				// A known kid does not trigger a refetch, even when its
				// signature fails: the cache keeps the old key until the
				// set is RefreshInterval old.
				{name: "still the cached key after MinRefresh", advance: minRefresh, kid: "ec1", key: ecKey2, wantErr: "signature does not verify", wantFetches: 1},
				{name: "the new key after RefreshInterval", advance: jwks.DefaultRefreshInterval - minRefresh, kid: "ec1", key: ecKey2, wantFetches: 2},
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, ec1, rsa1)
			for _, s := range tc.steps {
				f.clk.Advance(s.advance)
				if s.publish != nil {
					f.src.set(jwksDoc(t, s.publish...), nil)
				}
				alg := jose.ES256
				if _, ok := s.key.(*rsa.PrivateKey); ok {
					alg = jose.RS256
				}
				_, err := f.v.Verify(context.Background(), mint(t, alg, s.key, s.kid, std(f.clk.Now())), nil)
				switch {
				case s.wantErr == "" && err != nil:
					t.Errorf("%s: Verify() = %v, want success", s.name, err)
				case s.wantErr != "" && (!errors.Is(err, jwks.ErrInvalid) || !strings.Contains(err.Error(), s.wantErr)):
					t.Errorf("%s: Verify() error = %v, want ErrInvalid containing %q", s.name, err, s.wantErr)
				}
				if got := f.src.fetches(); got != s.wantFetches {
					t.Errorf("%s: fetches = %d, want %d", s.name, got, s.wantFetches)
				}
			}
		})
	}
}

func TestUnavailable(t *testing.T) {
	testKeys(t)
	tests := []struct {
		name string
		doc  []byte
		err  error
	}{
		{name: "fetch fails", err: errors.New("connection refused")},
		{name: "not JSON", doc: []byte("<html>oops</html>")},
		{name: "empty body", doc: []byte{}},
		{name: "JSON but bad key", doc: []byte(`{"keys":[{"kty":"EC","crv":"P-256","x":"AA","y":"AA","kid":"ec1"}]}`)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			f.src.set(tc.doc, tc.err)
			_, err := f.v.Verify(context.Background(), mint(t, jose.ES256, ecKey, "ec1", std(epoch)), nil)
			if !errors.Is(err, jwks.ErrUnavailable) {
				t.Fatalf("Verify() error = %v, want ErrUnavailable", err)
			}
			if !strings.HasPrefix(err.Error(), "jwks: ") {
				t.Errorf("Verify() error = %q, want the package prefix", err)
			}
			if errors.Is(err, jwks.ErrInvalid) {
				t.Errorf("Verify() error = %v is also ErrInvalid", err)
			}
			if tc.err != nil && !strings.Contains(err.Error(), tc.err.Error()) {
				t.Errorf("Verify() error = %v, want it to carry the fetch error", err)
			}
		})
	}
}

// TestBadRefetchKeepsKeys: a refetch that fails leaves the cached keys in
// place for the kids they hold.
func TestBadRefetchKeepsKeys(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	if _, err := f.v.Verify(ctx, mint(t, jose.ES256, ecKey, "ec1", std(epoch)), nil); err != nil {
		t.Fatalf("first Verify() = %v", err)
	}
	f.clk.Advance(time.Minute)
	f.src.set([]byte("garbage"), nil)
	if _, err := f.v.Verify(ctx, mint(t, jose.ES256, ecKey2, "ec2", std(f.clk.Now())), nil); !errors.Is(err, jwks.ErrUnavailable) {
		t.Fatalf("Verify(new kid, garbage JWKS) = %v, want ErrUnavailable", err)
	}
	if _, err := f.v.Verify(ctx, mint(t, jose.ES256, ecKey, "ec1", std(f.clk.Now())), nil); err != nil {
		t.Fatalf("Verify(known kid) after bad refetch = %v, want success", err)
	}
	if got := f.src.fetches(); got != 2 {
		t.Errorf("fetches = %d, want 2", got)
	}
}

func TestURLFetcher(t *testing.T) {
	testKeys(t)
	doc := jwksDoc(t, pub("ec1", ecKey, jose.ES256))
	big := strings.Repeat(" ", 2<<20) // whitespace: still JSON if not cut
	tests := []struct {
		name    string
		handler http.HandlerFunc
		wantErr string
		wantLen int
	}{
		{
			name: "ok",
			handler: func(w http.ResponseWriter, r *http.Request) {
				if r.Method != http.MethodGet {
					http.Error(w, "method", http.StatusMethodNotAllowed)
					return
				}
				_, _ = w.Write(doc)
			},
			wantLen: len(doc),
		},
		{
			name:    "not found",
			handler: func(w http.ResponseWriter, r *http.Request) { http.NotFound(w, r) },
			wantErr: "404 Not Found",
		},
		{
			name:    "server error",
			handler: func(w http.ResponseWriter, r *http.Request) { http.Error(w, "boom", http.StatusInternalServerError) },
			wantErr: "500 Internal Server Error",
		},
		{
			name: "redirect followed",
			handler: func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path != "/moved" {
					http.Redirect(w, r, "/moved", http.StatusFound)
					return
				}
				_, _ = w.Write(doc)
			},
			wantLen: len(doc),
		},
		{
			name: "body over 1 MiB refused",
			handler: func(w http.ResponseWriter, r *http.Request) {
				_, _ = w.Write(doc)
				_, _ = w.Write([]byte(big))
			},
			wantErr: "larger than 1048576 bytes",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewServer(tc.handler)
			defer srv.Close()
			fetch := jwks.URLFetcher(srv.Client(), srv.URL+"/keys")
			got, err := fetch(context.Background())
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("fetch() error = %v, want one containing %q", err, tc.wantErr)
				}
				// Through a KeySet, the failure is ErrUnavailable.
				ks := jwks.NewKeySet(jwks.KeySetConfig{Fetch: fetch, Clock: clocktest.New(epoch)})
				v := &jwks.Verifier{Issuer: testIssuer, Audiences: []string{testAudience}, Keys: ks, Clock: clocktest.New(epoch)}
				if _, err := v.Verify(context.Background(), mint(t, jose.ES256, ecKey, "ec1", std(epoch)), nil); !errors.Is(err, jwks.ErrUnavailable) {
					t.Errorf("Verify() through failing URL = %v, want ErrUnavailable", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("fetch() = %v", err)
			}
			if len(got) != tc.wantLen {
				t.Errorf("fetch() returned %d bytes, want %d", len(got), tc.wantLen)
			}
		})
	}
}

func TestURLFetcherEndToEnd(t *testing.T) {
	testKeys(t)
	var mu sync.Mutex
	hits := 0
	doc := jwksDoc(t, pub("ec1", ecKey, jose.ES256))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		hits++
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(doc)
	}))
	defer srv.Close()
	clk := clocktest.New(epoch)
	// nil client: the default one; the server is on the loopback.
	ks := jwks.NewKeySet(jwks.KeySetConfig{Fetch: jwks.URLFetcher(nil, srv.URL), Clock: clk})
	v := &jwks.Verifier{Issuer: testIssuer, Audiences: []string{testAudience}, Keys: ks, Clock: clk}
	for i := range 3 {
		if _, err := v.Verify(context.Background(), mint(t, jose.ES256, ecKey, "ec1", std(epoch)), nil); err != nil {
			t.Fatalf("Verify() #%d = %v", i, err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if hits != 1 {
		t.Errorf("server hits = %d, want 1", hits)
	}
}

func TestURLFetcherHonoursContext(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer srv.Close()
	defer close(release)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := jwks.URLFetcher(srv.Client(), srv.URL)(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("fetch(cancelled ctx) = %v, want context.Canceled", err)
	}
}

func TestFileFetcher(t *testing.T) {
	testKeys(t)
	dir := t.TempDir()
	good := filepath.Join(dir, "jwks.json")
	if err := os.WriteFile(good, jwksDoc(t, pub("ec1", ecKey, jose.ES256)), 0o600); err != nil {
		t.Fatal(err)
	}
	bad := filepath.Join(dir, "bad.json")
	if err := os.WriteFile(bad, []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		path    string
		wantErr error
	}{
		{name: "valid file", path: good},
		{name: "missing file", path: filepath.Join(dir, "absent.json"), wantErr: jwks.ErrUnavailable},
		{name: "not a JWKS", path: bad, wantErr: jwks.ErrUnavailable},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			clk := clocktest.New(epoch)
			v := &jwks.Verifier{Issuer: testIssuer, Audiences: []string{testAudience}, Keys: jwks.NewKeySet(jwks.KeySetConfig{Fetch: jwks.FileFetcher(tc.path), Clock: clk}), Clock: clk}
			_, err := v.Verify(context.Background(), mint(t, jose.ES256, ecKey, "ec1", std(epoch)), nil)
			if tc.wantErr == nil && err != nil {
				t.Fatalf("Verify() = %v, want success", err)
			}
			if tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Fatalf("Verify() = %v, want %v", err, tc.wantErr)
			}
		})
	}

	t.Run("reads the file again on every fetch", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "jwks.json")
		if err := os.WriteFile(path, jwksDoc(t, pub("ec1", ecKey, jose.ES256)), 0o600); err != nil {
			t.Fatal(err)
		}
		clk := clocktest.New(epoch)
		ks := jwks.NewKeySet(jwks.KeySetConfig{Fetch: jwks.FileFetcher(path), Clock: clk})
		v := &jwks.Verifier{Issuer: testIssuer, Audiences: []string{testAudience}, Keys: ks, Clock: clk}
		if _, err := v.Verify(context.Background(), mint(t, jose.ES256, ecKey, "ec1", std(epoch)), nil); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, jwksDoc(t, pub("ec2", ecKey2, jose.ES256)), 0o600); err != nil {
			t.Fatal(err)
		}
		clk.Advance(jwks.DefaultMinRefresh)
		if _, err := v.Verify(context.Background(), mint(t, jose.ES256, ecKey2, "ec2", std(clk.Now())), nil); err != nil {
			t.Fatalf("Verify(rotated kid from file) = %v", err)
		}
	})
}

func TestDefaultMinRefresh(t *testing.T) {
	f := newFixture(t)
	f.ks = jwks.NewKeySet(jwks.KeySetConfig{Fetch: f.src.fetch, Clock: f.clk})
	f.v.Keys = f.ks
	verify := func(kid string) {
		_, _ = f.v.Verify(context.Background(), mint(t, jose.ES256, ecKey, kid, std(f.clk.Now())), nil)
	}
	verify("ec1")
	verify("x")
	f.clk.Advance(jwks.DefaultMinRefresh - time.Nanosecond)
	verify("y")
	if got := f.src.fetches(); got != 1 {
		t.Fatalf("fetches = %d before DefaultMinRefresh, want 1", got)
	}
	f.clk.Advance(time.Nanosecond)
	verify("y")
	if got := f.src.fetches(); got != 2 {
		t.Fatalf("fetches = %d at DefaultMinRefresh, want 2", got)
	}
}

// TestConcurrentVerify exercises the key set under -race.
func TestConcurrentVerify(t *testing.T) {
	f := newFixture(t)
	tokens := []string{
		mint(t, jose.ES256, ecKey, "ec1", std(epoch)),
		mint(t, jose.RS256, rsaKey, "rsa1", std(epoch)),
	}
	// Warm the cache so no goroutine races the first fetch.
	if _, err := f.v.Verify(context.Background(), tokens[0], nil); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for i := range 64 {
		wg.Go(func() {
			if _, err := f.v.Verify(context.Background(), tokens[i%2], nil); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("concurrent Verify() = %v", err)
	}
	if got := f.src.fetches(); got != 1 {
		t.Errorf("fetches = %d, want 1", got)
	}
}

// TestSharedFetch: lookups that need the key set at the same time share one
// fetch; synctest.Wait proves every caller is parked before it is let
// through.
func TestSharedFetch(t *testing.T) {
	tests := []struct {
		name    string
		err     error  // the fetch's error
		wantErr string // in every caller's error; "" means success
	}{
		{name: "success shared"},
		// The caller that fetched sees why it failed; those that waited
		// find that the fetch failed moments ago.
		{name: "failure shared", err: errors.New("connection refused"), wantErr: "key set"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				f := newFixture(t)
				if tc.err != nil {
					f.src.set(nil, tc.err)
				}
				f.src.gate = make(chan struct{})
				tok := mint(t, jose.ES256, ecKey, "ec1", std(epoch))
				errs := make([]error, 20)
				var wg sync.WaitGroup
				for i := range errs {
					wg.Go(func() { _, errs[i] = f.v.Verify(context.Background(), tok, nil) })
				}
				synctest.Wait()
				if got := f.src.fetches(); got != 1 {
					t.Errorf("fetches in flight = %d, want 1", got)
				}
				close(f.src.gate)
				wg.Wait()
				sawCause := false
				for i, err := range errs {
					switch {
					case tc.wantErr == "" && err != nil:
						t.Errorf("Verify() #%d = %v, want success", i, err)
					case tc.wantErr != "" && (!errors.Is(err, jwks.ErrUnavailable) || !strings.Contains(err.Error(), tc.wantErr)):
						t.Errorf("Verify() #%d = %v, want ErrUnavailable containing %q", i, err, tc.wantErr)
					}
					sawCause = sawCause || (tc.err != nil && strings.Contains(err.Error(), tc.err.Error()))
				}
				if tc.err != nil && !sawCause {
					t.Errorf("no caller was told the fetch failed with %q", tc.err)
				}
				if got := f.src.fetches(); got != 1 {
					t.Errorf("fetches = %d, want 1", got)
				}
			})
		})
	}
}

// TestSharedFetchCallerGivesUp: a caller giving up on a fetch, the one
// that started it or one waiting on it, fails only itself.
func TestSharedFetchCallerGivesUp(t *testing.T) {
	for _, first := range []bool{true, false} {
		name := map[bool]string{true: "caller that started the fetch", false: "caller waiting on it"}[first]
		t.Run(name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				f := newFixture(t)
				f.src.gate = make(chan struct{})
				tok := mint(t, jose.ES256, ecKey, "ec1", std(epoch))
				ctx, cancel := context.WithCancel(context.Background())
				var quitterErr, otherErr error
				quit := func() { _, quitterErr = f.v.Verify(ctx, tok, nil) }
				other := func() { _, otherErr = f.v.Verify(context.Background(), tok, nil) }
				start, join := other, quit
				if first {
					start, join = quit, other
				}
				var wg sync.WaitGroup
				wg.Go(start)
				synctest.Wait() // the fetch is in flight
				wg.Go(join)
				synctest.Wait() // the second caller is parked
				cancel()
				synctest.Wait()
				close(f.src.gate)
				wg.Wait()
				if !errors.Is(quitterErr, jwks.ErrUnavailable) || !strings.Contains(quitterErr.Error(), context.Canceled.Error()) {
					t.Errorf("Verify() of the caller giving up = %v, want ErrUnavailable: context canceled", quitterErr)
				}
				if otherErr != nil {
					t.Errorf("Verify() of the other caller = %v, want success", otherErr)
				}
				if got := f.src.fetches(); got != 1 {
					t.Errorf("fetches = %d, want 1", got)
				}
			})
		})
	}
}

func TestPeek(t *testing.T) {
	testKeys(t)
	noExp := std(epoch)
	noExp.Expiry = nil
	tests := []struct {
		name       string
		token      string
		wantIssuer string
		wantExp    time.Time
		wantOK     bool
	}{
		{name: "ES256", token: mint(t, jose.ES256, ecKey, "ec1", std(epoch)), wantIssuer: testIssuer, wantExp: epoch.Add(time.Hour), wantOK: true},
		{name: "RS256", token: mint(t, jose.RS256, rsaKey, "rsa1", std(epoch)), wantIssuer: testIssuer, wantExp: epoch.Add(time.Hour), wantOK: true},
		{name: "unverified signature is fine for Peek", token: mint(t, jose.ES256, ecKey2, "unknown", std(epoch)), wantIssuer: testIssuer, wantExp: epoch.Add(time.Hour), wantOK: true},
		{name: "no exp", token: mint(t, jose.ES256, ecKey, "ec1", noExp), wantIssuer: testIssuer, wantOK: true},
		{name: "garbage", token: "garbage"},
		{name: "empty", token: ""},
		{name: "three dots of nothing", token: "a.b.c"},
		{name: "HS256", token: mint(t, jose.HS256, hmacKey, "", std(epoch))},
		{name: "none", token: noneToken(t, std(epoch))},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			iss, exp, ok := jwks.Peek(tc.token)
			if ok != tc.wantOK || iss != tc.wantIssuer || !exp.Equal(tc.wantExp) {
				t.Errorf("Peek() = (%q, %v, %v), want (%q, %v, %v)", iss, exp, ok, tc.wantIssuer, tc.wantExp, tc.wantOK)
			}
		})
	}
}

// FuzzVerify checks that Verify never panics and accepts only tokens whose
// signature verifies with the one key it knows and whose claims hold.
func FuzzVerify(f *testing.F) {
	testKeys(f)
	clk := clocktest.New(epoch)
	doc := jwksDoc(f, pub("ec1", ecKey, jose.ES256))
	ks := jwks.NewKeySet(jwks.KeySetConfig{Fetch: func(context.Context) ([]byte, error) { return doc, nil }, Clock: clk})
	v := &jwks.Verifier{Issuer: testIssuer, Audiences: []string{testAudience}, Keys: ks, Clock: clk}

	valid := mint(f, jose.ES256, ecKey, "ec1", std(epoch))
	f.Add(valid)
	f.Add(mint(f, jose.ES256, ecKey, "", std(epoch)))
	f.Add(mint(f, jose.ES256, ecKey2, "ec1", std(epoch)))
	f.Add(mint(f, jose.RS256, rsaKey, "ec1", std(epoch)))
	f.Add(mint(f, jose.HS256, hmacKey, "ec1", std(epoch)))
	f.Add(noneToken(f, std(epoch)))
	f.Add(valid[:len(valid)-2])
	f.Add(strings.Replace(valid, ".", "..", 1))
	f.Add("")
	f.Add("..")
	f.Add("e30.e30.")

	pubKey := ecKey.Public()
	f.Fuzz(func(t *testing.T, token string) {
		claims, err := v.Verify(context.Background(), token, nil)
		if err != nil {
			if !errors.Is(err, jwks.ErrInvalid) {
				t.Fatalf("Verify() error = %v, want ErrInvalid (the key set is always available)", err)
			}
			if claims != nil {
				t.Fatalf("Verify() returned claims with error %v", err)
			}
			return
		}
		sig, perr := jose.ParseSignedCompact(token, []jose.SignatureAlgorithm{jose.ES256})
		if perr != nil {
			t.Fatalf("Verify() accepted %q, which is not a compact ES256 JWS: %v", token, perr)
		}
		if _, verr := sig.Verify(pubKey); verr != nil {
			t.Fatalf("Verify() accepted %q, whose signature does not verify: %v", token, verr)
		}
		if claims.Issuer != testIssuer || !claims.Audience.Contains(testAudience) || claims.Expiry == nil {
			t.Fatalf("Verify() accepted claims %+v", claims)
		}
		if epoch.After(claims.Expiry.Time().Add(jwks.DefaultLeeway)) {
			t.Fatalf("Verify() accepted an expired token: exp %v", claims.Expiry.Time())
		}
	})
}

// TestFailedFetchIsNotAnUnknownKey: while the issuer is failing tokens are
// "unavailable" (retryable), never "unknown key"; once it is back, a valid
// token verifies without waiting out MinRefresh.
func TestFailedFetchIsNotAnUnknownKey(t *testing.T) {
	f := newFixture(t)
	good := f.src.doc
	f.src.set(nil, errors.New("connection refused"))
	tok := mint(t, jose.ES256, ecKey, "ec1", std(epoch))
	for i := range 2 {
		if _, err := f.v.Verify(context.Background(), tok, nil); !errors.Is(err, jwks.ErrUnavailable) {
			t.Fatalf("attempt %d while the issuer fails: %v, want ErrUnavailable", i, err)
		}
	}
	f.src.set(good, nil)
	f.clk.Advance(2 * time.Second) // past the retry back-off, well within MinRefresh
	if _, err := f.v.Verify(context.Background(), tok, nil); err != nil {
		t.Fatalf("after the issuer recovered: %v", err)
	}
}

// TestNewKeySetWithoutFetch: a key set that could never load is refused
// when built, not on the first token.
func TestNewKeySetWithoutFetch(t *testing.T) {
	defer func() {
		if r := recover(); r == nil {
			t.Error("NewKeySet without a Fetch did not panic")
		}
	}()
	jwks.NewKeySet(jwks.KeySetConfig{})
}
