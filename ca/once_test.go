package ca_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/ca/store"
	"github.com/meshca/meshca/internal/clock/clocktest"
	"github.com/meshca/meshca/internal/storetest"
)

func spki(t testing.TB, pub any) []byte {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// TestSignPublicKey: a key whose possession someone else checked is
// certified as a CSR's would be; keys the CA does not certify, malformed
// keys and a request with both or neither of CSR and key are refused.
func TestSignPublicKey(t *testing.T) {
	clk := clocktest.New(t0)
	a := newAuthority(t, storetest.NewMem(), clk, nil)
	key := p256(t)
	iss, err := a.Sign(context.Background(), ca.SignRequest{PublicKey: spki(t, key.Public()), Identity: identity(fooID)})
	if err != nil {
		t.Fatalf("Sign: %v", err)
	}
	leaf := leafOf(t, iss)
	if !key.Public().(*ecdsa.PublicKey).Equal(leaf.PublicKey) || len(leaf.URIs) != 1 || leaf.URIs[0].String() != fooID.String() {
		t.Fatalf("leaf for %v with URIs %v", leaf.PublicKey, leaf.URIs)
	}
	p521, err := ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	edPub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		req  ca.SignRequest
	}{
		{"Ed25519", ca.SignRequest{PublicKey: spki(t, edPub)}},
		{"P-521", ca.SignRequest{PublicKey: spki(t, &p521.PublicKey)}},
		{"not a key", ca.SignRequest{PublicKey: []byte{0x30, 0x00}}},
		{"both a CSR and a key", ca.SignRequest{PublicKey: spki(t, key.Public()), CSR: csrPEM(t, key, fooCSR())}},
		{"neither", ca.SignRequest{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.req.Identity = identity(fooID)
			if _, err := a.Sign(context.Background(), tc.req); !errors.Is(err, ca.ErrInvalidCSR) {
				t.Fatalf("Sign: %v, want ErrInvalidCSR", err)
			}
		})
	}
}

// TestSignWholeLifetime: with WholeLifetime, NotAfter−NotBefore is the
// TTL, backdating included; without, the TTL counts from now.
func TestSignWholeLifetime(t *testing.T) {
	clk := clocktest.New(t0.Add(123456789 * time.Nanosecond)) // not on a whole second
	a := newAuthority(t, storetest.NewMem(), clk, nil)
	pub := spki(t, p256(t).Public())
	for _, whole := range []bool{true, false} {
		iss, err := a.Sign(context.Background(), ca.SignRequest{PublicKey: pub, TTL: time.Hour, WholeLifetime: whole, Identity: identity(fooID)})
		if err != nil {
			t.Fatal(err)
		}
		leaf := leafOf(t, iss)
		want := time.Hour
		if !whole {
			want += ca.DefaultBackdate
		}
		if got := leaf.NotAfter.Sub(leaf.NotBefore); got != want {
			t.Errorf("WholeLifetime %t: validity %s, want %s", whole, got, want)
		}
		if got := clk.Now().Sub(leaf.NotBefore); got < ca.DefaultBackdate || got > ca.DefaultBackdate+time.Second {
			t.Errorf("WholeLifetime %t: backdated by %s", whole, got)
		}
	}
}

// TestSignOnce: a request key gets one certificate: asked again (a retry, a
// restart: a second Authority on the same store) it gets the same one, and
// nothing more is recorded; asked with another key or identity, nothing; concurrent askers on two Authorities sharing a
// store get one certificate between them.
func TestSignOnce(t *testing.T) {
	ctx := context.Background()
	st := storetest.NewMem()
	clk := clocktest.New(t0)
	a := newAuthority(t, st, clk, nil)
	req := ca.SignRequest{PublicKey: spki(t, p256(t).Public()), TTL: time.Hour, Identity: identity(fooID)}
	first, resent, err := a.SignOnce(ctx, "pcr/1", req)
	if err != nil || resent {
		t.Fatalf("SignOnce: resent %t, %v", resent, err)
	}
	clk.Advance(time.Minute)
	restarted := newAuthority(t, st, clk, nil)
	for _, auth := range []*ca.Authority{a, restarted} {
		again, resent, err := auth.SignOnce(ctx, "pcr/1", req)
		if err != nil || !resent {
			t.Fatalf("SignOnce again: resent %t, %v", resent, err)
		}
		if !reflect.DeepEqual(again.ChainPEM, first.ChainPEM) || !reflect.DeepEqual(again.DER, first.DER) || !reflect.DeepEqual(again.Record, first.Record) {
			t.Fatal("a second answer differs from the first")
		}
	}
	if n := numRecords(t, st); n != 1 {
		t.Fatalf("%d records, want 1", n)
	}
	if ans, err := st.IssuedRequest(ctx, "pcr/1"); err != nil || ans.Serial != first.Record.Serial {
		t.Fatalf("stored answer (%+v, %v)", ans, err)
	}
	// The same request key for another request: its answer is not sent.
	for name, other := range map[string]ca.SignRequest{
		"another key":      {PublicKey: spki(t, p256(t).Public()), TTL: time.Hour, Identity: identity(fooID)},
		"another identity": {PublicKey: req.PublicKey, TTL: time.Hour, Identity: identity(otherID)},
	} {
		if iss, _, err := a.SignOnce(ctx, "pcr/1", other); !errors.Is(err, ca.ErrInvalidCSR) || iss != nil {
			t.Errorf("SignOnce of %s under an answered key: (%v, %v), want ErrInvalidCSR", name, iss != nil, err)
		}
	}

	const askers = 20
	chains := make([][]string, askers)
	var wg sync.WaitGroup
	for i := range askers {
		auth := a
		if i%2 == 1 {
			auth = restarted
		}
		wg.Go(func() {
			iss, _, err := auth.SignOnce(ctx, "pcr/2", req)
			if err != nil {
				t.Errorf("asker %d: %v", i, err)
				return
			}
			chains[i] = iss.ChainPEM
		})
	}
	wg.Wait()
	for i := range chains {
		if !reflect.DeepEqual(chains[i], chains[0]) {
			t.Fatalf("asker %d got another certificate", i)
		}
	}
	if n := numRecords(t, st); n != 2 {
		t.Fatalf("%d records after the race, want 2", n)
	}

	if _, _, err := a.SignOnce(ctx, "pcr/3", ca.SignRequest{Identity: identity(fooID)}); !errors.Is(err, ca.ErrInvalidCSR) {
		t.Errorf("a refused request: %v", err)
	}
	if _, err := st.IssuedRequest(ctx, "pcr/3"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("a refused request has an answer: %v", err)
	}
	if _, _, err := a.SignOnce(ctx, "", req); err == nil {
		t.Error("SignOnce signed for an empty request key")
	}
	if n := numRecords(t, st); n != 2 {
		t.Errorf("%d records after the refusals, want 2", n)
	}
}
