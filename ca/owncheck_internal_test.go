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

// longDigest is 80 bytes, longer than the order of every curve.
func longDigest() []byte {
	a, b := sha512.Sum512([]byte("other")), sha256.Sum256([]byte("other"))
	return append(a[:], b[:16]...)
}

// infinityDigest is a digest e of key's size with e = −r·d mod n, so that
// e + r·d = 0 and verification's R is the point at infinity, whatever s.
// The curve's order must have a whole number of bytes (P-256, P-384).
func infinityDigest(t testing.TB, key *ecdsa.PrivateKey, r *big.Int) []byte {
	n := key.Curve.Params().N
	if n.BitLen()%8 != 0 {
		return nil // P-521: the digest would be shifted; an empty one is refused anyway
	}
	db, err := key.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	e := new(big.Int).Mul(r, new(big.Int).SetBytes(db))
	e.Neg(e).Mod(e, n)
	return e.FillBytes(make([]byte, n.BitLen()/8))
}

// intContent is the minimal DER content of a positive INTEGER.
func intContent(v *big.Int) []byte {
	b := v.Bytes()
	if len(b) == 0 || b[0]&0x80 != 0 {
		b = append([]byte{0}, b...)
	}
	return b
}

// highBit is v's bytes with the high bit set and no leading zero: the
// content of a negative INTEGER.
func highBit(v *big.Int) []byte {
	b := v.Bytes()
	b[0] |= 0x80
	return b
}

// derTLV is a DER element with a short-form length (contents under 128
// bytes) or a one-byte long form.
func derTLV(tag byte, content []byte) []byte {
	if len(content) < 128 {
		return append([]byte{tag, byte(len(content))}, content...)
	}
	return append([]byte{tag, 0x81, byte(len(content))}, content...)
}

// derSig is a signature SEQUENCE (or another tag) of two INTEGERs with the
// contents given, written as is.
func derSig(tag byte, r, s []byte) []byte {
	return derTLV(tag, append(derTLV(0x02, r), derTLV(0x02, s)...))
}

// derSigExtra is a signature with a third INTEGER.
func derSigExtra(r, s *big.Int) []byte {
	inner := append(derTLV(0x02, intContent(r)), derTLV(0x02, intContent(s))...)
	return derTLV(0x30, append(inner, derTLV(0x02, []byte{1})...))
}

// longForm rewrites a short-form outer length as the long form 0x81 n,
// which DER forbids under 128.
func longForm(sig []byte) []byte {
	if sig[1] >= 0x80 {
		return append([]byte{sig[0], 0x82, 0, sig[2]}, sig[3:]...)
	}
	return append([]byte{sig[0], 0x81, sig[1]}, sig[2:]...)
}

// indefinite rewrites the outer length as indefinite (BER), with the
// end-of-contents octets.
func indefinite(sig []byte) []byte {
	body := sig[2:]
	if sig[1] >= 0x80 {
		body = sig[2+int(sig[1]&0x7f):]
	}
	return append(append([]byte{sig[0], 0x80}, body...), 0, 0)
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
			long := longDigest() // longer than every curve's n: truncated
			add := func(a *big.Int, b int64) *big.Int { return new(big.Int).Add(a, big.NewInt(b)) }
			cases := []struct {
				name   string
				digest []byte
				sig    []byte
				valid  bool
			}{
				{"valid", digest, ecdsaSig(t, r, s), true},
				{"s negated mod n, also valid", digest, ecdsaSig(t, r, new(big.Int).Sub(n, s)), true},
				{"R at infinity: e = -r·d", infinityDigest(t, key, r), ecdsaSig(t, r, s), false},
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
				{"a longer digest", long, ecdsaSig(t, r, s), false},
				{"an empty digest", nil, ecdsaSig(t, r, s), false},
				{"trailing byte", digest, append(ecdsaSig(t, r, s), 0), false},
				{"truncated", digest, ecdsaSig(t, r, s)[:10], false},
				{"empty", digest, nil, false},
				{"r with a redundant leading zero", digest, derSig(0x30, append([]byte{0}, intContent(r)...), intContent(s)), false},
				{"r with its high bit set and no zero (negative)", digest, derSig(0x30, highBit(r), intContent(s)), false},
				{"r empty", digest, derSig(0x30, []byte{}, intContent(s)), false},
				{"a third integer", digest, append(ecdsaSig(t, r, s)[:0:0], derSigExtra(r, s)...), false},
				{"a SET, not a SEQUENCE", digest, derSig(0x31, intContent(r), intContent(s)), false},
				{"a long-form length for a short sequence", digest, longForm(ecdsaSig(t, r, s)), false},
				{"an indefinite length", digest, indefinite(ecdsaSig(t, r, s)), false},
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
			// length (for P-521, to 521 bits of its first 66 bytes).
			r, s, err = ecdsa.Sign(rand.Reader, key, long)
			if err != nil {
				t.Fatal(err)
			}
			if err := c.check(long, ecdsaSig(t, r, s)); err != nil {
				t.Errorf("a signature of an 80-byte digest: %v", err)
			}
			if c.check(append([]byte{long[0] ^ 1}, long[1:]...), ecdsaSig(t, r, s)) == nil {
				t.Error("accepted the signature of an 80-byte digest for another one")
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
	//lint:ignore SA1019 only D builds a key whose scalar is not its public key's
	mismatched := &ecdsa.PrivateKey{PublicKey: key.PublicKey, D: other.D} //nolint:staticcheck // as above
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
				t.Fatalf("a flipped bit: err = %v, want the signature refused", err)
			}
			// The signer's scalar changed under it (the standard library
			// signs with a D that is not the public key's without a word):
			// the check's own copy of d refuses what it signs.
			pk := key.(*ecdsa.PrivateKey)
			other, err := ecdsa.GenerateKey(pk.Curve, rand.Reader)
			if err != nil {
				t.Fatal(err)
			}
			//lint:ignore SA1019 only D builds a key whose scalar is not its public key's
			l.key = &ecdsa.PrivateKey{PublicKey: pk.PublicKey, D: other.D} //nolint:staticcheck // as above
			if _, err := l.sign(f); err == nil || !strings.Contains(err.Error(), "does not verify") {
				t.Fatalf("another scalar: err = %v, want the signature refused", err)
			}
		})
	}
}

// FuzzOwnECDSACheck: for any digest and signature bytes, on each curve,
// the check and ecdsa.VerifyASN1 agree. The keys are fixed, so that a
// failing input reproduces.
func FuzzOwnECDSACheck(f *testing.F) {
	curves := []elliptic.Curve{elliptic.P256(), elliptic.P384(), elliptic.P521()}
	keys := make([]*ecdsa.PrivateKey, len(curves))
	checks := make([]*ownECDSACheck, len(curves))
	for i, curve := range curves {
		size := (curve.Params().N.BitLen() + 7) / 8
		seed := sha256.Sum256([]byte(curve.Params().Name))
		seed[0] &= 0x7f // under 2²⁵⁵, below n on every curve
		d := make([]byte, size)
		copy(d[size-len(seed):], seed[:])
		key, err := ecdsa.ParseRawPrivateKey(curve, d)
		if err != nil {
			f.Fatal(err)
		}
		if keys[i], checks[i] = key, newOwnECDSACheck(key); checks[i] == nil {
			f.Fatal("no check")
		}
		digest := sha512.Sum512([]byte{byte(i)})
		sig, err := key.Sign(rand.Reader, digest[:], crypto.Hash(0))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(uint8(i), digest[:], sig)
	}
	f.Fuzz(func(t *testing.T, curve uint8, digest, sig []byte) {
		i := int(curve) % len(curves)
		got := checks[i].check(digest, sig) == nil
		if want := ecdsa.VerifyASN1(&keys[i].PublicKey, digest, sig); got != want {
			t.Fatalf("%s: check accepts %v, VerifyASN1 %v", curves[i].Params().Name, got, want)
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
