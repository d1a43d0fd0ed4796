package ca_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"strings"
	"testing"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/clock/clocktest"
	"github.com/meshca/meshca/internal/storetest"
)

func TestKEKSealsKeysAtRest(t *testing.T) {
	ctx := context.Background()
	kek := make([]byte, 32)
	rand.Read(kek)
	st := storetest.NewMem()
	clk := clocktest.New(t0)
	a := newAuthority(t, st, clk, func(c *ca.Config) { c.KEK = kek })

	s, err := st.LoadCAState(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if s.Root.Key.Alg != "aes-256-gcm" || s.Active.Key.Alg != "aes-256-gcm" {
		t.Fatalf("keys sealed with %q/%q, want aes-256-gcm", s.Root.Key.Alg, s.Active.Key.Alg)
	}

	// Same KEK: loads the same root.
	b := newAuthority(t, st, clk, func(c *ca.Config) { c.KEK = kek })
	if !a.Bundle().Equal(b.Bundle()) {
		t.Error("root changed when reopened with the same KEK")
	}

	wrong := make([]byte, 32)
	rand.Read(wrong)
	for _, tc := range []struct {
		name string
		kek  []byte
		msg  string
	}{
		{"no KEK", nil, "configure the key-encryption key"},
		{"wrong KEK", wrong, "different key-encryption key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ca.New(ctx, ca.Config{TrustDomain: td, Store: st, Clock: clk, KEK: tc.kek})
			if err == nil || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("New = %v, want an error saying %q", err, tc.msg)
			}
		})
	}
}

func TestWithoutKEKKeysAreStoredInClear(t *testing.T) {
	st := storetest.NewMem()
	newAuthority(t, st, clocktest.New(t0), nil)
	s, _ := st.LoadCAState(context.Background())
	if s.Root.Key.Alg != "none" {
		t.Fatalf("alg %q, want none", s.Root.Key.Alg)
	}
}

func TestParseKEK(t *testing.T) {
	raw := bytes.Repeat([]byte{7}, 32)
	tests := []struct {
		name    string
		in      []byte
		wantErr bool
	}{
		{"raw bytes", raw, false},
		{"hex", []byte(hex.EncodeToString(raw) + "\n"), false},
		{"base64", []byte(base64.StdEncoding.EncodeToString(raw)), false},
		{"base64url raw", []byte(base64.RawURLEncoding.EncodeToString(raw)), false},
		{"too short", []byte(base64.StdEncoding.EncodeToString(raw[:16])), true},
		{"garbage", []byte("not a key"), true},
		{"empty", nil, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			k, err := ca.ParseKEK(tc.in)
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tc.wantErr)
			}
			if err == nil && !bytes.Equal(k, raw) {
				t.Fatal("decoded the wrong key")
			}
		})
	}
}

func TestCAKeyTypes(t *testing.T) {
	for _, kt := range []ca.KeyType{ca.KeyECDSAP384, ca.KeyRSA2048} {
		t.Run(string(kt), func(t *testing.T) {
			a := newAuthority(t, storetest.NewMem(), clocktest.New(t0), func(c *ca.Config) { c.KeyType = kt })
			if _, err := a.Sign(context.Background(), ca.SignRequest{CSR: csrPEM(t, p256(t), fooCSR()), Identity: identity(fooID)}); err != nil {
				t.Fatal(err)
			}
		})
	}
	if _, err := ca.ParseKeyType("dsa-1024"); err == nil {
		t.Error("unknown key type accepted")
	}
}

// TestKEKRefusesClearKeysUntilSealed: with a KEK configured, a store that
// holds CA keys in clear (from before the KEK, or planted by whoever can
// write the data file) is refused at start; SealStoredKeys, an explicit
// step, seals them, after which the same CA starts with the KEK only.
func TestKEKRefusesClearKeysUntilSealed(t *testing.T) {
	ctx := context.Background()
	st := storetest.NewMem()
	clk := clocktest.New(t0)
	a := newAuthority(t, st, clk, nil)
	kek := bytes.Repeat([]byte{1}, 32)
	if _, err := ca.New(ctx, ca.Config{TrustDomain: td, Store: st, Clock: clk, KEK: kek}); !errors.Is(err, ca.ErrClearKey) {
		t.Fatalf("New with a KEK over clear keys = %v, want ErrClearKey", err)
	}
	if _, err := ca.SealStoredKeys(ctx, st, nil, nil); err == nil {
		t.Fatal("SealStoredKeys without a KEK succeeded")
	}
	if n, err := ca.SealStoredKeys(ctx, st, kek, nil); err != nil || n != 3 {
		t.Fatalf("SealStoredKeys = %d, %v; want the root, the active intermediate and the JWT key", n, err)
	}
	s, _ := st.LoadCAState(ctx)
	if s.Root.Key.Alg != "aes-256-gcm" || s.Active.Key.Alg != "aes-256-gcm" {
		t.Fatalf("after SealStoredKeys keys are %q/%q", s.Root.Key.Alg, s.Active.Key.Alg)
	}
	if n, err := ca.SealStoredKeys(ctx, st, kek, nil); err != nil || n != 0 {
		t.Fatalf("second SealStoredKeys = %d, %v; want nothing left to seal", n, err)
	}
	b := newAuthority(t, st, clk, func(c *ca.Config) { c.KEK = kek })
	if !a.Bundle().Equal(b.Bundle()) || !a.SigningCertificate().Equal(b.SigningCertificate()) {
		t.Fatal("keys changed instead of being sealed")
	}
	if _, err := ca.New(ctx, ca.Config{TrustDomain: td, Store: st, Clock: clk}); err == nil {
		t.Fatal("started without the KEK after the keys were sealed")
	}
}
