package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509/pkix"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
)

// ecdsaSig encodes r and s as an ASN.1 ECDSA signature; a negative value is
// encoded as such.
func ecdsaSig(t testing.TB, r, s *big.Int) []byte {
	var b cryptobyte.Builder
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddASN1BigInt(r)
		b.AddASN1BigInt(s)
	})
	sig, err := b.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	return sig
}

// TestOwnECDSACheck: the check accepts exactly what ecdsa.VerifyASN1
// accepts, for a valid signature, its other valid form (r, n−s), and each
// way of breaking one.
func TestOwnECDSACheck(t *testing.T) {
	for _, curve := range []elliptic.Curve{elliptic.P256(), elliptic.P384(), elliptic.P521()} {
		t.Run(curve.Params().Name, func(t *testing.T) {
			key, err := ecdsa.GenerateKey(curve, rand.Reader)
			if err != nil {
				t.Fatal(err)
			}
			c := newOwnECDSACheck(key)
			if c == nil {
				t.Fatal("no check for the key")
			}
			n := curve.Params().N
			var digest []byte
			switch curve {
			case elliptic.P256():
				d := sha256.Sum256([]byte("tbs"))
				digest = d[:]
			case elliptic.P384():
				d := sha512.Sum384([]byte("tbs"))
				digest = d[:]
			default:
				d := sha512.Sum512([]byte("tbs"))
				digest = d[:]
			}
			r, s, err := ecdsa.Sign(rand.Reader, key, digest)
			if err != nil {
				t.Fatal(err)
			}
			long := sha512.Sum512([]byte("other")) // longer than P-256's n: truncated
			add := func(a *big.Int, b int64) *big.Int { return new(big.Int).Add(a, big.NewInt(b)) }
			cases := []struct {
				name   string
				digest []byte
				sig    []byte
				valid  bool
			}{
				{"valid", digest, ecdsaSig(t, r, s), true},
				{"s negated mod n, also valid", digest, ecdsaSig(t, r, new(big.Int).Sub(n, s)), true},
				{"r off by one", digest, ecdsaSig(t, add(r, 1), s), false},
				{"s off by one", digest, ecdsaSig(t, r, add(s, 1)), false},
				{"r and s swapped", digest, ecdsaSig(t, s, r), false},
				{"r zero", digest, ecdsaSig(t, big.NewInt(0), s), false},
				{"s zero", digest, ecdsaSig(t, r, big.NewInt(0)), false},
				{"r is n", digest, ecdsaSig(t, n, s), false},
				{"s is n", digest, ecdsaSig(t, r, n), false},
				{"r plus n", digest, ecdsaSig(t, new(big.Int).Add(r, n), s), false},
				{"s negative", digest, ecdsaSig(t, r, new(big.Int).Neg(s)), false},
				{"another digest", long[:len(digest)], ecdsaSig(t, r, s), false},
				{"a longer digest", long[:], ecdsaSig(t, r, s), false},
				{"an empty digest", nil, ecdsaSig(t, r, s), false},
				{"trailing byte", digest, append(ecdsaSig(t, r, s), 0), false},
				{"truncated", digest, ecdsaSig(t, r, s)[:10], false},
				{"empty", digest, nil, false},
			}
			for _, tc := range cases {
				t.Run(tc.name, func(t *testing.T) {
					got := c.check(tc.digest, tc.sig) == nil
					want := ecdsa.VerifyASN1(&key.PublicKey, tc.digest, tc.sig)
					if got != want || got != tc.valid {
						t.Errorf("check accepts: %v; VerifyASN1: %v; want %v", got, want, tc.valid)
					}
				})
			}
			// A signature of a longer digest, which both truncate to n's
			// length.
			r, s, err = ecdsa.Sign(rand.Reader, key, long[:])
			if err != nil {
				t.Fatal(err)
			}
			if err := c.check(long[:], ecdsaSig(t, r, s)); err != nil {
				t.Errorf("a signature of a 64-byte digest: %v", err)
			}
		})
	}
}

// TestOwnECDSACheckRefusesKey: no check is made for a private key whose
// point is not its public key, so its signatures are verified with the
// public key.
func TestOwnECDSACheckRefusesKey(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	other, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	mismatched := &ecdsa.PrivateKey{PublicKey: key.PublicKey, D: other.D}
	if c := newOwnECDSACheck(mismatched); c != nil {
		t.Fatal("made a check for a scalar that is not the public key's")
	}
	p224, err := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if c := newOwnECDSACheck(p224); c != nil {
		t.Fatal("made a check for P-224")
	}
}

// TestLeafSignerOwnCheckRefusesFaults: with the private-key check in use, a
// signer that returns a bad signature gets no certificate out.
func TestLeafSignerOwnCheckRefusesFaults(t *testing.T) {
	sub := testKey(t, "p256")
	spki := testSPKI(t, sub.Public())
	ski, err := subjectKeyIDFromSPKI(spki)
	if err != nil {
		t.Fatal(err)
	}
	id := spiffeid.RequireFromString("spiffe://td/ns/a/sa/b")
	now := time.Now().Truncate(time.Second)
	f := leafFields{serial: big.NewInt(1), notBefore: now, notAfter: now.Add(time.Hour), id: id, pub: sub.Public(), spki: spki, ski: ski}
	for _, kind := range []string{"p256", "p384", "p521"} {
		t.Run(kind, func(t *testing.T) {
			key := testKey(t, kind)
			issuer := testIssuer(t, key, pkix.Name{CommonName: "i"}, true)
			l := newLeafSigner(issuer, key)
			if l == nil || l.own == nil {
				t.Fatal("no private-key check for an in-memory ECDSA key")
			}
			if _, err := l.sign(f); err != nil {
				t.Fatalf("the good signer: %v", err)
			}
			l.key = faultySigner{key}
			if _, err := l.sign(f); err == nil || !strings.Contains(err.Error(), "does not verify") {
				t.Fatalf("err = %v, want the signature refused", err)
			}
		})
	}
}

// FuzzOwnECDSACheck: for any digest and signature bytes, the check and
// ecdsa.VerifyASN1 agree.
func FuzzOwnECDSACheck(f *testing.F) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		f.Fatal(err)
	}
	c := newOwnECDSACheck(key)
	if c == nil {
		f.Fatal("no check")
	}
	for i := range 4 {
		d := sha256.Sum256([]byte{byte(i)})
		sig, err := key.Sign(rand.Reader, d[:], crypto.SHA256)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(d[:], sig)
	}
	f.Fuzz(func(t *testing.T, digest, sig []byte) {
		got := c.check(digest, sig) == nil
		if want := ecdsa.VerifyASN1(&key.PublicKey, digest, sig); got != want {
			t.Fatalf("check accepts %v, VerifyASN1 %v", got, want)
		}
	})
}

// BenchmarkLeafSignatureCheck: checking a leaf's signature with the
// private key against with the public key, as the check before it did.
func BenchmarkLeafSignatureCheck(b *testing.B) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	digest := sha256.Sum256([]byte("tbs"))
	sig, err := key.Sign(rand.Reader, digest[:], crypto.SHA256)
	if err != nil {
		b.Fatal(err)
	}
	b.Run("private", func(b *testing.B) {
		c := newOwnECDSACheck(key)
		for b.Loop() {
			if err := c.check(digest[:], sig); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("public", func(b *testing.B) {
		for b.Loop() {
			if !ecdsa.VerifyASN1(&key.PublicKey, digest[:], sig) {
				b.Fatal("does not verify")
			}
		}
	})
}
