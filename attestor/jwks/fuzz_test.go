package jwks_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/meshca/meshca/attestor/jwks"
	"github.com/meshca/meshca/internal/clock/clocktest"
)

// es256 signs the header and payload bytes as they are (no JSON checks) with
// key: a token any header and claims parser must cope with, and whose
// signature verifies.
func es256(tb testing.TB, key *ecdsa.PrivateKey, header, payload []byte) string {
	tb.Helper()
	enc := base64.RawURLEncoding.EncodeToString
	input := enc(header) + "." + enc(payload)
	sum := sha256.Sum256([]byte(input))
	r, s, err := ecdsa.Sign(rand.Reader, key, sum[:])
	if err != nil {
		tb.Fatal(err)
	}
	sig := make([]byte, 64)
	r.FillBytes(sig[:32])
	s.FillBytes(sig[32:])
	return input + "." + enc(sig)
}

// FuzzClaims signs arbitrary header and claims bytes with the key the
// verifier trusts, so that the signature always verifies and only the
// header and claims checks stand between the input and acceptance. What
// Verify accepts has a header naming ES256, the issuer, an audience and an
// exp within the leeway, no nbf or iat in the future; and Peek, which
// routes tokens, reads the same issuer and expiry from it.
func FuzzClaims(f *testing.F) {
	testKeys(f)
	clk := clocktest.New(epoch)
	doc := jwksDoc(f, pub("ec1", ecKey, jose.ES256))
	ks := jwks.NewKeySet(jwks.KeySetConfig{Fetch: func(context.Context) ([]byte, error) { return doc, nil }, Clock: clk})
	v := &jwks.Verifier{Issuer: testIssuer, Audiences: []string{testAudience}, Keys: ks, Clock: clk}

	claims, _ := json.Marshal(std(epoch))
	hdr := []byte(`{"alg":"ES256","kid":"ec1","typ":"JWT"}`)
	f.Add(hdr, claims)
	f.Add([]byte(`{"alg":"ES256"}`), claims)
	f.Add([]byte(`{"alg":"none","kid":"ec1"}`), claims)
	f.Add([]byte(`{"alg":"HS256","kid":"ec1"}`), claims)
	f.Add([]byte(`{"alg":"ES256","kid":"ec1","crit":["exp"]}`), claims)
	f.Add(hdr, []byte(`{"iss":"https://issuer.example.org","aud":"meshca","exp":1e300}`))
	f.Add(hdr, []byte(`{"iss":"https://issuer.example.org","aud":["x","meshca"],"exp":1893553445,"nbf":-1,"iat":"1"}`))
	f.Add(hdr, []byte(`{"iss":"https://issuer.example.org","aud":"meshca","exp":1893553445,"iss":"evil"}`))
	f.Add(hdr, []byte(`null`))
	f.Fuzz(func(t *testing.T, header, payload []byte) {
		tok := es256(t, ecKey, header, payload)
		got, kid, err := v.VerifyKeyID(context.Background(), tok, nil)
		if err != nil {
			if !errors.Is(err, jwks.ErrInvalid) {
				t.Fatalf("Verify: %v, want ErrInvalid", err)
			}
			return
		}
		var h struct {
			Alg string `json:"alg"`
		}
		if json.Unmarshal(header, &h) != nil || h.Alg != string(jose.ES256) {
			t.Fatalf("accepted header %q", header)
		}
		// The key ID reported is the one the JWS library read, which chose
		// the key: a verified-token cache rechecks that key.
		if parsed, err := jwt.ParseSigned(tok, jwks.Algorithms); err != nil || len(parsed.Headers) != 1 || parsed.Headers[0].KeyID != kid || (kid != "" && kid != "ec1") {
			t.Fatalf("VerifyKeyID reported kid %q for header %q (%v)", kid, header, err)
		}
		now := clk.Now()
		switch {
		case got.Issuer != testIssuer, !got.Audience.Contains(testAudience), got.Expiry == nil:
			t.Fatalf("accepted claims %+v", got)
		case now.After(got.Expiry.Time().Add(jwks.DefaultLeeway)):
			t.Fatalf("accepted an expired token: exp %v", got.Expiry.Time())
		case got.NotBefore != nil && now.Add(jwks.DefaultLeeway).Before(got.NotBefore.Time()):
			t.Fatalf("accepted a token not valid before %v", got.NotBefore.Time())
		case got.IssuedAt != nil && now.Add(jwks.DefaultLeeway).Before(got.IssuedAt.Time()):
			t.Fatalf("accepted a token issued at %v", got.IssuedAt.Time())
		}
		iss, exp, ok := jwks.Peek(tok)
		if !ok || iss != got.Issuer || !exp.Equal(got.Expiry.Time()) {
			t.Fatalf("Peek = (%q, %v, %v) on a token verified as (%q, %v)", iss, exp, ok, got.Issuer, got.Expiry.Time())
		}
	})
}

// FuzzPeek checks that Peek never panics on arbitrary strings and reads
// only what the JWT library reads: when it says ok, the token parses as a
// compact JWS with an accepted algorithm and carries the issuer it
// reports.
func FuzzPeek(f *testing.F) {
	testKeys(f)
	valid := mint(f, jose.ES256, ecKey, "ec1", std(epoch))
	f.Add(valid)
	f.Add(mint(f, jose.RS256, rsaKey, "", std(epoch)))
	f.Add(mint(f, jose.HS256, hmacKey, "", std(epoch)))
	f.Add(noneToken(f, std(epoch)))
	f.Add(strings.Replace(valid, ".", "..", 1))
	f.Add("e30.e30.e30")
	f.Add("a.b.c")
	f.Fuzz(func(t *testing.T, token string) {
		iss, exp, ok := jwks.Peek(token)
		if !ok {
			if iss != "" || !exp.IsZero() {
				t.Fatalf("Peek refused %q yet returned (%q, %v)", token, iss, exp)
			}
			return
		}
		tok, err := jwt.ParseSigned(token, jwks.Algorithms)
		if err != nil {
			t.Fatalf("Peek accepted %q, which does not parse: %v", token, err)
		}
		var c jwt.Claims
		if err := tok.UnsafeClaimsWithoutVerification(&c); err != nil || c.Issuer != iss {
			t.Fatalf("Peek read issuer %q from %q; the claims say %q (%v)", iss, token, c.Issuer, err)
		}
	})
}

// FuzzKeySet serves an arbitrary document as the JWKS and checks that
// tokens verify only against keys the document really holds: an ES256 or
// RS256 token only when its key ID names its signer's public key; an HS256
// token (keyed with a secret the document may publish as an "oct" key) or
// an unsigned one never. A document that is not a key set makes the key
// set unavailable, never a verified token.
func FuzzKeySet(f *testing.F) {
	testKeys(f)
	oct := jose.JSONWebKey{Key: hmacKey, KeyID: "h", Algorithm: string(jose.HS256), Use: "sig"}
	f.Add(jwksDoc(f, pub("ec1", ecKey, jose.ES256), pub("rsa1", rsaKey, jose.RS256)))
	f.Add(jwksDoc(f, pub("ec1", ecKey2, jose.ES256), pub("rsa1", ecKey, jose.ES256)))
	f.Add(jwksDoc(f, oct, pub("ec1", ecKey, jose.RS256)))
	f.Add(jwksDoc(f, jose.JSONWebKey{Key: ecKey, KeyID: "ec1", Algorithm: string(jose.ES256)}))
	f.Add([]byte(`{"keys":[{"kty":"EC","crv":"P-256","kid":"ec1","x":"AA","y":"AA"}]}`))
	f.Add([]byte(`{"keys":[]}`))
	f.Add([]byte(`[]`))

	claims := std(epoch)
	tokens := []struct {
		name, tok, kid string
		signer         any // public key that verifies it; nil: must never verify
	}{
		{"ES256", mint(f, jose.ES256, ecKey, "ec1", claims), "ec1", ecKey.Public()},
		{"RS256", mint(f, jose.RS256, rsaKey, "rsa1", claims), "rsa1", rsaKey.Public()},
		{"HS256", mint(f, jose.HS256, hmacKey, "h", claims), "h", nil},
		{"none", noneToken(f, claims), "ec1", nil},
	}
	f.Fuzz(func(t *testing.T, doc []byte) {
		clk := clocktest.New(epoch)
		ks := jwks.NewKeySet(jwks.KeySetConfig{Fetch: func(context.Context) ([]byte, error) { return doc, nil }, Clock: clk})
		v := &jwks.Verifier{Issuer: testIssuer, Audiences: []string{testAudience}, Keys: ks, Clock: clk}
		var set jose.JSONWebKeySet
		parsed := json.Unmarshal(doc, &set) == nil
		for _, tc := range tokens {
			clk.Advance(time.Minute) // past MinRefresh: each token may fetch; still within the leeway
			_, err := v.Verify(context.Background(), tc.tok, nil)
			if err != nil {
				if !errors.Is(err, jwks.ErrInvalid) && !errors.Is(err, jwks.ErrUnavailable) {
					t.Fatalf("%s: %v", tc.name, err)
				}
				continue
			}
			if tc.signer == nil || !parsed {
				t.Fatalf("%s token verified against %q", tc.name, doc)
			}
			holds := false
			for _, k := range set.Key(tc.kid) {
				if pk, ok := k.Key.(interface{ Equal(crypto.PublicKey) bool }); ok && pk.Equal(tc.signer) {
					holds = true
				}
				if pk, ok := k.Key.(crypto.Signer); ok && pk.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(tc.signer) {
					holds = true
				}
			}
			if !holds {
				t.Fatalf("%s token verified though %q holds no key %q of its signer", tc.name, doc, tc.kid)
			}
		}
	})
}
