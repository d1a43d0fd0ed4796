package jwtsvid_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"errors"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	gojwtsvid "github.com/spiffe/go-spiffe/v2/svid/jwtsvid"

	"github.com/meshca/meshca/internal/jwtsvid"
)

var (
	td  = spiffeid.RequireTrustDomainFromString("example.org")
	id  = spiffeid.RequireFromPath(td, "/ns/default/sa/web")
	now = time.Now().Truncate(time.Second)
)

func newKey(t testing.TB, kind string) crypto.Signer {
	t.Helper()
	var (
		k   crypto.Signer
		err error
	)
	switch kind {
	case "p384":
		k, err = ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	case "rsa":
		k, err = rsa.GenerateKey(rand.Reader, 2048)
	default:
		k, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	}
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func mint(t testing.TB, key crypto.Signer, c jwtsvid.Claims) (string, *jwtbundle.Bundle) {
	t.Helper()
	kid, err := jwtsvid.KeyID(key.Public())
	if err != nil {
		t.Fatal(err)
	}
	tok, err := jwtsvid.Sign(key, kid, c)
	if err != nil {
		t.Fatal(err)
	}
	return tok, jwtbundle.FromJWTAuthorities(td, map[string]crypto.PublicKey{kid: key.Public()})
}

func TestSignAndValidate(t *testing.T) {
	for _, kind := range []string{"p256", "p384", "rsa"} {
		t.Run(kind, func(t *testing.T) {
			tok, b := mint(t, newKey(t, kind), jwtsvid.Claims{ID: id, Audience: []string{"a", "b"}, IssuedAt: now, ExpiresAt: now.Add(5 * time.Minute)})
			got, claims, err := jwtsvid.Validate(tok, b, []string{"b"}, now)
			if err != nil {
				t.Fatal(err)
			}
			if got.ID != id || claims["sub"] != id.String() {
				t.Errorf("got %v, claims %v", got.ID, claims)
			}
			// go-spiffe reads the same token (with the wall clock).
			if _, err := gojwtsvid.ParseAndValidate(tok, b, []string{"a"}); err != nil {
				t.Errorf("go-spiffe: %v", err)
			}
		})
	}
}

func TestValidateRefuses(t *testing.T) {
	key := newKey(t, "p256")
	good := jwtsvid.Claims{ID: id, Audience: []string{"a"}, IssuedAt: now, ExpiresAt: now.Add(5 * time.Minute)}
	tok, b := mint(t, key, good)
	foreign, _ := mint(t, newKey(t, "p256"), good)
	otherTD, _ := mint(t, key, jwtsvid.Claims{ID: spiffeid.RequireFromString("spiffe://other.org/w"), Audience: []string{"a"}, IssuedAt: now, ExpiresAt: now.Add(time.Minute)})
	future, _ := mint(t, key, jwtsvid.Claims{ID: id, Audience: []string{"a"}, IssuedAt: now.Add(time.Hour), ExpiresAt: now.Add(2 * time.Hour)})
	for _, tc := range []struct {
		name  string
		token string
		aud   []string
		at    time.Time
		want  error
	}{
		{"expired at exp", tok, []string{"a"}, now.Add(5 * time.Minute), jwtsvid.ErrExpired},
		{"issued in the future", future, []string{"a"}, now, jwtsvid.ErrExpired},
		{"wrong audience", tok, []string{"b"}, now, jwtsvid.ErrAudience},
		{"foreign key", foreign, []string{"a"}, now, jwtsvid.ErrUntrusted},
		{"other trust domain", otherTD, []string{"a"}, now, jwtsvid.ErrUntrusted},
		{"not a JWT", "a.b.c", []string{"a"}, now, jwtsvid.ErrMalformed},
		{"tampered", tok[:len(tok)-4] + "AAAA", []string{"a"}, now, jwtsvid.ErrUntrusted},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, _, err := jwtsvid.Validate(tc.token, b, tc.aud, tc.at); !errors.Is(err, tc.want) {
				t.Errorf("got %v, want %v", err, tc.want)
			}
		})
	}
}

func TestSignRefusesEmptyAudience(t *testing.T) {
	if _, err := jwtsvid.Sign(newKey(t, "p256"), "k", jwtsvid.Claims{ID: id, Audience: []string{""}, ExpiresAt: now}); err == nil {
		t.Error("an empty audience was signed")
	}
}

// FuzzValidate checks that any input is refused or accepted without a
// panic, and that whatever is accepted carries a SPIFFE ID, an audience
// asked for, and an exp after now.
func FuzzValidate(f *testing.F) {
	key := newKey(f, "p256")
	tok, b := mint(f, key, jwtsvid.Claims{ID: id, Audience: []string{"a"}, IssuedAt: now, ExpiresAt: now.Add(time.Minute)})
	f.Add(tok)
	f.Add("eyJhbGciOiJub25lIn0.e30.")
	f.Add("")
	f.Fuzz(func(t *testing.T, s string) {
		got, _, err := jwtsvid.Validate(s, b, []string{"a"}, now)
		if err != nil {
			return
		}
		if got.ID.IsZero() || !now.Before(got.ExpiresAt) {
			t.Errorf("accepted %q: %+v", s, got)
		}
	})
}
