package ca_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"errors"
	"testing"
	"time"

	gojwtsvid "github.com/spiffe/go-spiffe/v2/svid/jwtsvid"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/clock/clocktest"
	"github.com/meshca/meshca/internal/jwtsvid"
	"github.com/meshca/meshca/internal/storetest"
)

// TestMintJWTSVID: a token for the attested identity, its audiences and the
// default lifetime, that go-spiffe accepts with the CA's JWT bundle; the
// key follows Config.KeyType.
func TestMintJWTSVID(t *testing.T) {
	for _, tc := range []struct {
		kt    ca.KeyType
		check func(any) bool
	}{
		{ca.KeyECDSAP256, func(k any) bool { e, ok := k.(*ecdsa.PublicKey); return ok && e.Curve == elliptic.P256() }},
		{ca.KeyECDSAP384, func(k any) bool { e, ok := k.(*ecdsa.PublicKey); return ok && e.Curve == elliptic.P384() }},
		{ca.KeyRSA2048, func(k any) bool { _, ok := k.(*rsa.PublicKey); return ok }},
	} {
		t.Run(string(tc.kt), func(t *testing.T) {
			clk := clocktest.New(time.Now()) // go-spiffe checks exp with the wall clock
			a := newAuthority(t, storetest.NewMem(), clk, func(c *ca.Config) { c.KeyType = tc.kt })
			svid, err := a.MintJWTSVID(context.Background(), identity(fooID), []string{"db", "cache"}, 0)
			if err != nil {
				t.Fatal(err)
			}
			if got := svid.ExpiresAt.Sub(clk.Now().Truncate(time.Second)); got != ca.DefaultJWTSVIDTTL {
				t.Errorf("lifetime %s, want %s", got, ca.DefaultJWTSVIDTTL)
			}
			got, err := gojwtsvid.ParseAndValidate(svid.Token, a, []string{"cache"})
			if err != nil {
				t.Fatalf("go-spiffe ParseAndValidate: %v", err)
			}
			if got.ID != fooID || len(got.Audience) != 2 {
				t.Errorf("go-spiffe read %v %v", got.ID, got.Audience)
			}
			pub, ok := a.JWTBundle().FindJWTAuthority(svid.KeyID)
			if !ok || !tc.check(pub) {
				t.Errorf("JWT bundle key %q: %T", svid.KeyID, pub)
			}
		})
	}
}

func TestMintJWTSVIDRefuses(t *testing.T) {
	a := newAuthority(t, storetest.NewMem(), clocktest.New(t0), nil)
	long := make([]byte, ca.MaxJWTAudienceBytes+1)
	for i := range long {
		long[i] = 'a'
	}
	for _, tc := range []struct {
		name string
		id   string
		aud  []string
		ttl  time.Duration
		want error
	}{
		{"no audience", fooID.String(), nil, 0, ca.ErrInvalidJWTRequest},
		{"empty audience", fooID.String(), []string{""}, 0, ca.ErrInvalidJWTRequest},
		{"overlong audience", fooID.String(), []string{string(long)}, 0, ca.ErrInvalidJWTRequest},
		{"too many audiences", fooID.String(), make([]string, ca.MaxJWTAudiences+1), 0, ca.ErrInvalidJWTRequest},
		{"over the maximum TTL", fooID.String(), []string{"a"}, ca.DefaultJWTSVIDMaxTTL + time.Second, ca.ErrInvalidTTL},
		{"under the minimum TTL", fooID.String(), []string{"a"}, time.Second, ca.ErrInvalidTTL},
		{"negative TTL", fooID.String(), []string{"a"}, -time.Minute, ca.ErrInvalidTTL},
		{"other trust domain", "spiffe://other.org/w", []string{"a"}, 0, ca.ErrIdentityMismatch},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id := identity(fooID)
			id.ID = mustID(t, tc.id)
			if _, err := a.MintJWTSVID(context.Background(), id, tc.aud, tc.ttl); !errors.Is(err, tc.want) {
				t.Errorf("got %v, want %v", err, tc.want)
			}
		})
	}
}

// TestJWTKeyRotation: under a fake clock, the next key is published in
// the bundle at 40 % of the active key's life, before it signs at 50 %; a
// token signed by the old key just before the switch validates until it
// expires, and the old key leaves the bundle once it has.
func TestJWTKeyRotation(t *testing.T) {
	ctx := context.Background()
	clk := clocktest.New(t0)
	st := storetest.NewMem()
	a := newAuthority(t, st, clk, nil)
	mint := func(ttl time.Duration) *ca.JWTSVID {
		t.Helper()
		s, err := a.MintJWTSVID(ctx, identity(fooID), []string{"aud"}, ttl)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	state := func() (active, next string, retired int) {
		t.Helper()
		s, err := st.LoadCAState(ctx)
		if err != nil || s.JWTKeys == nil || s.JWTKeys.Active == nil {
			t.Fatalf("no JWT keys stored (%v)", err)
		}
		active = s.JWTKeys.Active.ID
		if s.JWTKeys.Next != nil {
			next = s.JWTKeys.Next.ID
		}
		return active, next, len(s.JWTKeys.Retired)
	}
	first, _, _ := state()
	if n := len(a.JWTBundle().JWTAuthorities()); n != 1 {
		t.Fatalf("bundle has %d keys at start, want 1", n)
	}
	s, _ := st.LoadCAState(ctx)
	prepare, activate := ca.JWTPrepareTime(s.JWTKeys.Active), ca.JWTActivateTime(s.JWTKeys.Active)

	clk.Set(prepare)
	if err := a.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	act, next, _ := state()
	if act != first || next == "" {
		t.Fatalf("at the prepare time: active %q next %q", act, next)
	}
	if !a.JWTBundle().HasJWTAuthority(next) {
		t.Fatal("the next key is not published before it signs")
	}
	if got := mint(0); got.KeyID != first {
		t.Fatalf("signed with %q before the switch", got.KeyID)
	}
	if got := a.NextRotation(); got.After(activate) {
		t.Errorf("NextRotation %s after the JWT key's switch %s", got, activate)
	}

	clk.Set(activate.Add(-time.Second))
	old := mint(ca.DefaultJWTSVIDMaxTTL)
	clk.Set(activate)
	if err := a.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	if act, _, retired := state(); act != next || retired != 1 {
		t.Fatalf("after the switch: active %q (want %q), %d retired", act, next, retired)
	}
	if got := mint(0); got.KeyID != next {
		t.Fatalf("signed with %q after the switch, want %q", got.KeyID, next)
	}
	// The old token stays valid until its exp, with the bundle of now.
	clk.Set(old.ExpiresAt.Add(-time.Second))
	if err := a.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	if _, _, err := jwtsvid.Validate(old.Token, a, []string{"aud"}, clk.Now()); err != nil {
		t.Fatalf("a token of the old key before its expiry: %v", err)
	}
	// Once it has expired (plus the backdate margin), the old key goes.
	clk.Set(old.ExpiresAt.Add(ca.DefaultBackdate + time.Second))
	if err := a.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	if a.JWTBundle().HasJWTAuthority(first) {
		t.Error("the old key is still published after its last token expired")
	}
	if _, _, err := jwtsvid.Validate(old.Token, a, []string{"aud"}, clk.Now()); err == nil {
		t.Error("expired token of the retired key validates")
	}
}

// TestJWTKeysSurviveRestart: a second Authority on the same store signs
// with the same key, sealed with the KEK.
func TestJWTKeysSurviveRestart(t *testing.T) {
	st := storetest.NewMem()
	clk := clocktest.New(t0)
	kek := make([]byte, ca.KEKSize)
	a := newAuthority(t, st, clk, func(c *ca.Config) { c.KEK = kek })
	b := newAuthority(t, st, clk, func(c *ca.Config) { c.KEK = kek })
	sa, err := a.MintJWTSVID(context.Background(), identity(fooID), []string{"x"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	sb, err := b.MintJWTSVID(context.Background(), identity(fooID), []string{"x"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	if sa.KeyID != sb.KeyID {
		t.Errorf("restart changed the JWT key: %q then %q", sa.KeyID, sb.KeyID)
	}
	s, _ := st.LoadCAState(context.Background())
	if s.JWTKeys.Active.Key.Alg != "aes-256-gcm" {
		t.Errorf("JWT key stored as %q, want sealed", s.JWTKeys.Active.Key.Alg)
	}
}
