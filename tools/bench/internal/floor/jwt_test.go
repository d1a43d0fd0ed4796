package floor

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"testing"
	"time"
)

// es256 signs claims with key as a JWT with key ID kid.
func es256(t *testing.T, key *ecdsa.PrivateKey, kid string, claims map[string]any) string {
	t.Helper()
	enc := func(v any) string {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return base64.RawURLEncoding.EncodeToString(b)
	}
	in := enc(map[string]string{"alg": "ES256", "kid": kid}) + "." + enc(claims)
	d := sha256.Sum256([]byte(in))
	r, s, err := ecdsa.Sign(rand.Reader, key, d[:])
	if err != nil {
		t.Fatal(err)
	}
	sig := make([]byte, 64)
	r.FillBytes(sig[:32])
	s.FillBytes(sig[32:])
	return in + "." + base64.RawURLEncoding.EncodeToString(sig)
}

func TestVerifier(t *testing.T) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	pt, err := key.PublicKey.Bytes() // 0x04 || x || y
	if err != nil {
		t.Fatal(err)
	}
	jwks := fmt.Sprintf(`{"keys":[{"kty":"EC","crv":"P-256","kid":"k1","x":%q,"y":%q}]}`,
		base64.RawURLEncoding.EncodeToString(pt[1:33]), base64.RawURLEncoding.EncodeToString(pt[33:]))
	keys, err := ParseJWKS([]byte(jwks))
	if err != nil {
		t.Fatal(err)
	}
	v := &Verifier{Keys: keys, Issuer: "https://iss", Audiences: []string{"meshca", "istio-ca"}}
	now := time.Now().Unix()
	claims := func(change func(map[string]any)) map[string]any {
		c := map[string]any{"iss": "https://iss", "aud": []string{"meshca"}, "exp": now + 60, "nbf": now - 1,
			"sub": "system:serviceaccount:ns1:sa1"}
		if change != nil {
			change(c)
		}
		return c
	}
	for _, tc := range []struct {
		name  string
		token string
		ok    bool
	}{
		{"valid", es256(t, key, "k1", claims(nil)), true},
		{"audience as a string", es256(t, key, "k1", claims(func(c map[string]any) { c["aud"] = "istio-ca" })), true},
		{"other audience", es256(t, key, "k1", claims(func(c map[string]any) { c["aud"] = "vault" })), false},
		{"other issuer", es256(t, key, "k1", claims(func(c map[string]any) { c["iss"] = "https://evil" })), false},
		{"expired", es256(t, key, "k1", claims(func(c map[string]any) { c["exp"] = now - 1 })), false},
		{"no exp", es256(t, key, "k1", claims(func(c map[string]any) { delete(c, "exp") })), false},
		{"not yet valid", es256(t, key, "k1", claims(func(c map[string]any) { c["nbf"] = now + 60 })), false},
		{"not a ServiceAccount", es256(t, key, "k1", claims(func(c map[string]any) { c["sub"] = "alice" })), false},
		{"signed by another key", es256(t, other, "k1", claims(nil)), false},
		{"unknown key ID", es256(t, key, "k2", claims(nil)), false},
		{"not a JWT", "a.b", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ns, sa, err := v.Verify(tc.token)
			if tc.ok && (err != nil || ns != "ns1" || sa != "sa1") {
				t.Fatalf("Verify = %q, %q, %v; want ns1, sa1", ns, sa, err)
			}
			if !tc.ok && err == nil {
				t.Fatalf("Verify accepted it: %q, %q", ns, sa)
			}
		})
	}
}
