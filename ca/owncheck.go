package ca

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/subtle"
	"errors"
	"math/big"

	"filippo.io/bigmod"
	"filippo.io/nistec"
	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
)

// An ownECDSACheck verifies the ECDSA signatures the CA makes with its own
// private key, at under half the cost of verifying them with the public
// key (about 18 µs against 46 µs for P-256 on the machines of
// BENCHMARKS.md).
//
// ECDSA verification of (r, s) over the digest e under Q computes
// R = u1·G + u2·Q, with w = s⁻¹, u1 = e·w and u2 = r·w mod n, and accepts when
// R's x-coordinate, reduced mod n, is r. With the private scalar d, Q = d·G,
// so u2·Q = (u2·d)·G: the check computes R = u1·G + (u2·d)·G, two
// multiplications of the base point, which use precomputed tables, instead
// of one of those and one of Q, which cannot. It accepts exactly the
// signatures verification accepts, provided d·G is Q, which
// newOwnECDSACheck makes sure of.
//
// What it catches is what verification catches, with one difference: it
// trusts d·G = Q, checked once. It holds its own copy of d, so a fault in
// the signer's copy yields signatures it refuses; and it never multiplies
// the signer's nonce k (u1 + u2·d) itself, but two other scalars, with
// another copy of the curve code and tables (filippo.io/nistec, the
// standard library's crypto/internal/fips140/nistec exported, where the
// signer uses the standard library's own), so a fault that repeats in the
// signer's k·G is not repeated here.
//
// What involves d is constant-time: d and u2·d (which with the public u1
// gives the nonce, as secret as d) go only through filippo.io/bigmod's
// modular arithmetic (the standard library's, exported) and nistec's
// constant-time base-point multiplication. Everything else (r, s, e and the
// values derived from them alone) is public, and uses math/big.
type ownECDSACheck struct {
	n    *bigmod.Modulus
	nInt *big.Int
	d    *bigmod.Nat // the private scalar, reduced mod n; read only
	size int         // bytes of a scalar and of a coordinate
	bits int         // bit length of n
	// sumX is the x-coordinate of a·G + b·G, a and b scalars of size
	// bytes; an error for the point at infinity.
	sumX func(a, b []byte) ([]byte, error)
}

// nistPoint is what ownECDSACheck uses of a nistec point type.
type nistPoint[P any] interface {
	ScalarBaseMult(scalar []byte) (P, error)
	Add(p1, p2 P) P
	Bytes() []byte
	BytesX() ([]byte, error)
}

// curveOps returns, for the point type P, ownECDSACheck.sumX and d·G
// encoded uncompressed.
func curveOps[P nistPoint[P]](newPoint func() P, d []byte) (sumX func(a, b []byte) ([]byte, error), dG []byte, err error) {
	p, err := newPoint().ScalarBaseMult(d)
	if err != nil {
		return nil, nil, err
	}
	sumX = func(a, b []byte) ([]byte, error) {
		p, err := newPoint().ScalarBaseMult(a)
		if err != nil {
			return nil, err
		}
		q, err := newPoint().ScalarBaseMult(b)
		if err != nil {
			return nil, err
		}
		return p.Add(p, q).BytesX()
	}
	return sumX, p.Bytes(), nil
}

// newOwnECDSACheck prepares to check key's signatures, or returns nil when
// it cannot (a curve other than P-256, P-384 and P-521, or a private scalar
// whose point is not key's public key): those are verified with the
// public key.
func newOwnECDSACheck(key *ecdsa.PrivateKey) *ownECDSACheck {
	d, err := key.Bytes()
	if err != nil {
		return nil
	}
	c := &ownECDSACheck{size: len(d)}
	var dG []byte
	switch key.Curve {
	case elliptic.P256():
		c.sumX, dG, err = curveOps(nistec.NewP256Point, d)
	case elliptic.P384():
		c.sumX, dG, err = curveOps(nistec.NewP384Point, d)
	case elliptic.P521():
		c.sumX, dG, err = curveOps(nistec.NewP521Point, d)
	default:
		return nil
	}
	if err != nil {
		return nil
	}
	// d·G must be the public key the signatures are verified with.
	pub, err := key.PublicKey.Bytes()
	if err != nil || subtle.ConstantTimeCompare(dG, pub) != 1 {
		return nil
	}
	c.nInt = key.Curve.Params().N
	c.bits = c.nInt.BitLen()
	if c.n, err = bigmod.NewModulus(c.nInt.Bytes()); err != nil {
		return nil
	}
	if c.d, err = bigmod.NewNat().SetBytes(d, c.n); err != nil {
		return nil
	}
	return c
}

// errOwnSignature is what check returns for a signature that does not
// verify.
var errOwnSignature = errors.New("ECDSA verification failure")

// check reports whether sig, an ASN.1 ECDSA signature, verifies over digest
// under the key the check was made for, as ecdsa.VerifyASN1 would.
func (c *ownECDSACheck) check(digest, sig []byte) error {
	var r, s big.Int
	in := cryptobyte.String(sig)
	var inner cryptobyte.String
	if !in.ReadASN1(&inner, cbasn1.SEQUENCE) || !in.Empty() ||
		!inner.ReadASN1Integer(&r) || !inner.ReadASN1Integer(&s) || !inner.Empty() {
		return errOwnSignature
	}
	if r.Sign() <= 0 || s.Sign() <= 0 || r.Cmp(c.nInt) >= 0 || s.Cmp(c.nInt) >= 0 {
		return errOwnSignature
	}
	// e: the digest's leftmost bits, as many as n has (FIPS 186-5,
	// 6.4.2), reduced mod n.
	if len(digest) > c.size {
		digest = digest[:c.size]
	}
	e := new(big.Int).SetBytes(digest)
	if excess := len(digest)*8 - c.bits; excess > 0 {
		e.Rsh(e, uint(excess))
	}
	e.Mod(e, c.nInt)
	w := new(big.Int).ModInverse(&s, c.nInt) // n is prime and 0 < s < n
	u1 := e.Mul(e, w)
	u1.Mod(u1, c.nInt)
	u2 := w.Mul(w, &r)
	u2.Mod(u2, c.nInt)

	// R = u1·G + (u2·d)·G.
	t, err := bigmod.NewNat().SetBytes(u2.FillBytes(make([]byte, c.size)), c.n)
	if err != nil {
		return errOwnSignature
	}
	x, err := c.sumX(u1.FillBytes(make([]byte, c.size)), t.Mul(c.d, c.n).Bytes(c.n))
	if err != nil { // the point at infinity
		return errOwnSignature
	}
	v := new(big.Int).SetBytes(x)
	if v.Mod(v, c.nInt).Cmp(&r) != 0 {
		return errOwnSignature
	}
	return nil
}
