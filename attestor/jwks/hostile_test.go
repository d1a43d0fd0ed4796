package jwks_test

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
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/meshca/meshca/attestor/jwks"
)

// hand builds a compact token from a header and claims, signed (or not) as
// sign says: the shapes go-jose refuses to make.
func hand(tb testing.TB, header map[string]any, claims any, sign func(input string) string) string {
	tb.Helper()
	enc := base64.RawURLEncoding.EncodeToString
	h, err := json.Marshal(header)
	if err != nil {
		tb.Fatal(err)
	}
	p, err := json.Marshal(claims)
	if err != nil {
		tb.Fatal(err)
	}
	input := enc(h) + "." + enc(p)
	sig := ""
	if sign != nil {
		sig = sign(input)
	}
	return input + "." + sig
}

// hmacWith signs with HS256 keyed by secret: the key-confusion attack uses
// the issuer's public key, which anyone can read, as the secret.
func hmacWith(tb testing.TB, secret []byte, kid string, claims any) string {
	tb.Helper()
	return mint(tb, jose.HS256, secret, kid, claims)
}

func publicPEM(tb testing.TB, key any) []byte {
	tb.Helper()
	der, err := x509.MarshalPKIXPublicKey(key)
	if err != nil {
		tb.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
}

// TestHostileTokens: tokens an attacker crafts, each refused with a clear
// error; the edges of the leeway say exactly where acceptance stops.
func TestHostileTokens(t *testing.T) {
	testKeys(t)
	now := epoch
	valid := std(now)
	with := func(mod func(*jwt.Claims)) jwt.Claims {
		c := std(now)
		mod(&c)
		return c
	}
	good := mint(t, jose.ES256, ecKey, "ec1", valid)
	parts := strings.Split(good, ".")
	rsaDER, _ := x509.MarshalPKIXPublicKey(rsaKey.Public())
	ecDER, _ := x509.MarshalPKIXPublicKey(ecKey.Public())
	big := strings.Repeat("A", 1<<20)
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		token   string
		keys    []jose.JSONWebKey // the issuer's key set; nil: ec1 and rsa1
		wantErr string            // "" means accepted
	}{
		{name: "alg none", token: noneToken(t, valid), wantErr: "accepted algorithm"},
		{name: "alg None", token: hand(t, map[string]any{"alg": "None", "kid": "ec1"}, valid, nil), wantErr: "accepted algorithm"},
		{name: "alg NONE", token: hand(t, map[string]any{"alg": "NONE", "kid": "ec1"}, valid, nil), wantErr: "accepted algorithm"},
		{name: "alg none with a signature", token: hand(t, map[string]any{"alg": "none", "kid": "ec1"}, valid, func(string) string { return parts[2] }), wantErr: "accepted algorithm"},
		{name: "alg missing", token: hand(t, map[string]any{"kid": "ec1"}, valid, func(string) string { return parts[2] }), wantErr: "accepted algorithm"},
		{name: "alg es256 in lower case", token: hand(t, map[string]any{"alg": "es256", "kid": "ec1"}, valid, func(string) string { return parts[2] }), wantErr: "accepted algorithm"},
		{name: "HS256 keyed with the RSA public key PEM", token: hmacWith(t, publicPEM(t, rsaKey.Public()), "rsa1", valid), wantErr: "accepted algorithm"},
		{name: "HS256 keyed with the RSA public key DER", token: hmacWith(t, rsaDER, "rsa1", valid), wantErr: "accepted algorithm"},
		{name: "HS256 keyed with the EC public key PEM", token: hmacWith(t, publicPEM(t, ecKey.Public()), "ec1", valid), wantErr: "accepted algorithm"},
		{name: "HS256 keyed with the EC public key DER, no kid", token: hmacWith(t, ecDER, "", valid), wantErr: "accepted algorithm"},
		{name: "unknown kid", token: mint(t, jose.ES256, ecKey, "nope", valid), wantErr: `unknown key ID "nope"`},
		{name: "kid missing with several keys", token: mint(t, jose.ES256, ecKey, "", valid),
			keys: []jose.JSONWebKey{pub("ec1", ecKey, jose.ES256), pub("ec2", ecKey2, jose.ES256)}, wantErr: "no key ID"},
		{name: "kid missing, several keys, one for the algorithm", token: mint(t, jose.ES256, ecKey, "", valid)},
		{name: "kid missing, no key for the algorithm", token: mint(t, jose.RS256, rsaKey, "", valid),
			keys: []jose.JSONWebKey{pub("ec1", ecKey, jose.ES256)}, wantErr: "no key in the key set is for signing with RS256"},
		{name: "ES256 header, P-384 key published", token: good,
			keys: []jose.JSONWebKey{{Key: p384.Public(), KeyID: "ec1"}}, wantErr: `key "ec1" is not for signing with ES256`},
		{name: "kid missing, one key", token: mint(t, jose.ES256, ecKey, "", valid), keys: []jose.JSONWebKey{pub("ec1", ecKey, jose.ES256)}},
		{name: "key published for encryption", token: good,
			keys: []jose.JSONWebKey{{Key: ecKey.Public(), KeyID: "ec1", Algorithm: string(jose.ES256), Use: "enc"}}, wantErr: `key "ec1" is not for signing with ES256`},
		{name: "key published for another algorithm", token: mint(t, jose.RS256, rsaKey, "rsa1", valid),
			keys: []jose.JSONWebKey{{Key: rsaKey.Public(), KeyID: "rsa1", Algorithm: string(jose.PS256), Use: "sig"}}, wantErr: `key "rsa1" is not for signing with RS256`},
		{name: "embedded jwk of the attacker's key", token: func() string {
			s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: ecKey2}, (&jose.SignerOptions{EmbedJWK: true}).WithType("JWT"))
			if err != nil {
				t.Fatal(err)
			}
			tok, err := jwt.Signed(s).Claims(valid).Serialize()
			if err != nil {
				t.Fatal(err)
			}
			return tok
		}(), keys: []jose.JSONWebKey{pub("ec1", ecKey, jose.ES256)}, wantErr: "signature does not verify"},
		{name: "jku naming the attacker's key set", token: hand(t, map[string]any{"alg": "ES256", "kid": "evil", "jku": "https://evil.example/jwks"}, valid, func(string) string { return parts[2] }),
			wantErr: `unknown key ID "evil"`},
		{name: "exp exactly at the leeway edge", token: mint(t, jose.ES256, ecKey, "ec1", with(func(c *jwt.Claims) { c.Expiry = jwt.NewNumericDate(now.Add(-time.Minute)) }))},
		{name: "exp one second past the leeway", token: mint(t, jose.ES256, ecKey, "ec1", with(func(c *jwt.Claims) { c.Expiry = jwt.NewNumericDate(now.Add(-time.Minute - time.Second)) })),
			wantErr: "expired at"},
		{name: "nbf exactly at the leeway edge", token: mint(t, jose.ES256, ecKey, "ec1", with(func(c *jwt.Claims) { c.NotBefore = jwt.NewNumericDate(now.Add(time.Minute)) }))},
		{name: "nbf one second past the leeway", token: mint(t, jose.ES256, ecKey, "ec1", with(func(c *jwt.Claims) { c.NotBefore = jwt.NewNumericDate(now.Add(time.Minute + time.Second)) })),
			wantErr: "not valid before"},
		{name: "iat exactly at the leeway edge", token: mint(t, jose.ES256, ecKey, "ec1", with(func(c *jwt.Claims) { c.NotBefore, c.IssuedAt = nil, jwt.NewNumericDate(now.Add(time.Minute)) }))},
		{name: "iat one second past the leeway", token: mint(t, jose.ES256, ecKey, "ec1", with(func(c *jwt.Claims) {
			c.NotBefore, c.IssuedAt = nil, jwt.NewNumericDate(now.Add(time.Minute+time.Second))
		})),
			wantErr: "issued in the future"},
		{name: "iat in the future", token: mint(t, jose.ES256, ecKey, "ec1", with(func(c *jwt.Claims) { c.NotBefore, c.IssuedAt = nil, jwt.NewNumericDate(now.Add(time.Hour)) })),
			wantErr: "issued in the future"},
		{name: "1 MiB header", token: hand(t, map[string]any{"alg": "ES256", "kid": "ec1", "x": big}, valid, func(string) string { return parts[2] }), wantErr: "larger than"},
		{name: "1 MiB claims", token: mint(t, jose.ES256, ecKey, "ec1", valid, map[string]any{"x": big}), wantErr: "larger than"},
		{name: "1 MiB signature", token: parts[0] + "." + parts[1] + "." + big, wantErr: "larger than"},
		{name: "extra dot at the end", token: good + ".", wantErr: "three"},
		{name: "extra part", token: good + ".e30", wantErr: "three"},
		{name: "double dot", token: parts[0] + ".." + parts[1] + "." + parts[2], wantErr: "three"},
		{name: "trailing newline", token: good + "\n", wantErr: "base64url"},
		{name: "trailing space", token: good + " ", wantErr: "base64url"},
		{name: "leading space", token: " " + good, wantErr: "base64url"},
		{name: "newline inside the signature", token: parts[0] + "." + parts[1] + "." + parts[2][:10] + "\r\n" + parts[2][10:], wantErr: "base64url"},
		{name: "padding", token: good + "==", wantErr: "base64url"},
		{name: "standard base64 alphabet", token: parts[0] + "." + parts[1] + "." + strings.NewReplacer("-", "+", "_", "/").Replace(parts[2]) + "+/", wantErr: "base64url"},
		{name: "non-ASCII", token: parts[0] + "." + parts[1] + "é." + parts[2], wantErr: "base64url"},
		{name: "NUL byte", token: good + "\x00", wantErr: "base64url"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, tc.keys...)
			start := time.Now()
			claims, err := f.v.Verify(context.Background(), tc.token, nil)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("Verify() = %v, want success", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Verify() accepted the token (claims %+v), want a refusal containing %q", claims, tc.wantErr)
			}
			if !errors.Is(err, jwks.ErrInvalid) || !strings.HasPrefix(err.Error(), "jwks: ") || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("Verify() error = %v, want ErrInvalid containing %q", err, tc.wantErr)
			}
			if len(tc.token) > 1<<20 {
				if n := f.src.fetches(); n != 0 {
					t.Errorf("an oversized token fetched the key set %d times", n)
				}
				if d := time.Since(start); d > time.Second {
					t.Errorf("refusing an oversized token took %v", d)
				}
			}
			if _, _, ok := jwks.Peek(tc.token); ok && (strings.Contains(tc.wantErr, "larger") || strings.Contains(tc.wantErr, "base64url") || strings.Contains(tc.wantErr, "three")) {
				t.Errorf("Peek() reads a token Verify calls malformed")
			}
		})
	}
}
