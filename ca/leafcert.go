package ca

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"math/big"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
)

// A leafSigner signs X509-SVIDs for one signing CA, encoding each
// certificate itself instead of through x509.CreateCertificate, whose
// reflection-driven ASN.1 encoding of a template was about a tenth of an
// issuance's CPU. What every leaf of the CA shares (the signature
// algorithm, the issuer's name, the authority key ID and the fixed
// extensions) is encoded once; a leaf adds its serial, validity, key, key
// ID and SPIFFE ID.
//
// The bytes are those x509.CreateCertificate writes for leafTemplate's
// template (the tests compare them for every key type), and it keeps that
// function's checks: the key must be the issuer certificate's, and each
// signature is verified with it before the certificate is returned, so a
// faulty signer cannot hand out a bad signature or leak its key through
// one. For an ECDSA key held in memory that check uses the private key
// (ownECDSACheck), at under half the cost of verifying with the public key.
// ValidateLeaf still re-reads every leaf independently.
type leafSigner struct {
	key    crypto.Signer
	own    *ownECDSACheck    // checks key's signatures; nil: cert.CheckSignature does
	cert   *x509.Certificate // the issuer, whose key key is
	opts   crypto.SignerOpts
	alg    x509.SignatureAlgorithm
	sigAlg []byte // DER AlgorithmIdentifier of the signatures: alg's
	issuer []byte // DER Name: the issuer certificate's subject
	akid   []byte // DER authorityKeyIdentifier extension; nil if the issuer has no key ID
}

// Signature AlgorithmIdentifiers, DER, as x509.CreateCertificate chooses
// them by the issuer's key: ECDSA with the hash its curve calls for, RSA
// PKCS #1 v1.5 with SHA-256, pure Ed25519.
var (
	algECDSAWithSHA256 = []byte{0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02}
	algECDSAWithSHA384 = []byte{0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03}
	algECDSAWithSHA512 = []byte{0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04}
	algSHA256WithRSA   = []byte{0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b, 0x05, 0x00}
	algEd25519         = []byte{0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70}
)

// The extensions every leaf carries with the same value, DER: keyUsage
// (critical; digitalSignature, and keyEncipherment for an RSA key),
// extKeyUsage (serverAuth, clientAuth) and basicConstraints (critical, not
// a CA).
var (
	extKeyUsageSign = []byte{0x30, 0x0e, 0x06, 0x03, 0x55, 0x1d, 0x0f, 0x01, 0x01, 0xff,
		0x04, 0x04, 0x03, 0x02, 0x07, 0x80}
	extKeyUsageSignEncipher = []byte{0x30, 0x0e, 0x06, 0x03, 0x55, 0x1d, 0x0f, 0x01, 0x01, 0xff,
		0x04, 0x04, 0x03, 0x02, 0x05, 0xa0}
	extExtKeyUsage = []byte{0x30, 0x1d, 0x06, 0x03, 0x55, 0x1d, 0x25,
		0x04, 0x16, 0x30, 0x14,
		0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x01,
		0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x02}
	extBasicConstraintsLeaf = []byte{0x30, 0x0c, 0x06, 0x03, 0x55, 0x1d, 0x13, 0x01, 0x01, 0xff,
		0x04, 0x02, 0x30, 0x00}
)

// ecSPKIs are the DER SubjectPublicKeyInfo prefixes, up to the
// uncompressed point, of the ECDSA keys a CSR may carry, as x509 writes
// them (DER encodes each one way).
var ecSPKIs = []struct {
	curve  elliptic.Curve
	prefix []byte
}{
	{elliptic.P256(), []byte{0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01,
		0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00}},
	{elliptic.P384(), []byte{0x30, 0x76, 0x30, 0x10, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01,
		0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22, 0x03, 0x62, 0x00}},
}

// newLeafSigner prepares to sign leaves under cert with key. It returns
// nil for a key it does not encode signatures for (anything but ECDSA
// P-256, P-384 or P-521, RSA, or Ed25519), for a key that is not cert's,
// and for a certificate not parsed from DER (no RawSubject): those leaves
// go through x509.CreateCertificate, which says what is wrong.
func newLeafSigner(cert *x509.Certificate, key crypto.Signer) *leafSigner {
	if len(cert.RawSubject) == 0 {
		return nil
	}
	l := &leafSigner{key: key, cert: cert, issuer: cert.RawSubject}
	pub := key.Public()
	switch pub := pub.(type) {
	case *ecdsa.PublicKey:
		if k, ok := key.(*ecdsa.PrivateKey); ok {
			l.own = newOwnECDSACheck(k)
		}
		switch pub.Curve {
		case elliptic.P256():
			l.sigAlg, l.alg, l.opts = algECDSAWithSHA256, x509.ECDSAWithSHA256, crypto.SHA256
		case elliptic.P384():
			l.sigAlg, l.alg, l.opts = algECDSAWithSHA384, x509.ECDSAWithSHA384, crypto.SHA384
		case elliptic.P521():
			l.sigAlg, l.alg, l.opts = algECDSAWithSHA512, x509.ECDSAWithSHA512, crypto.SHA512
		default:
			return nil
		}
	case *rsa.PublicKey:
		l.sigAlg, l.alg, l.opts = algSHA256WithRSA, x509.SHA256WithRSA, crypto.SHA256
	case ed25519.PublicKey:
		l.sigAlg, l.alg, l.opts = algEd25519, x509.PureEd25519, crypto.Hash(0)
	default:
		return nil
	}
	if eq, ok := cert.PublicKey.(interface{ Equal(crypto.PublicKey) bool }); !ok || !eq.Equal(pub) {
		return nil
	}
	// As x509.CreateCertificate: the issuer's key ID, unless the issuer
	// has none, or its subject is a leaf's (empty).
	if id := cert.SubjectKeyId; len(id) > 0 && !bytes.Equal(cert.RawSubject, emptyName) {
		// Extension { authorityKeyIdentifier, OCTET STRING {
		// AuthorityKeyIdentifier { [0] keyIdentifier } } }
		var b cryptobyte.Builder
		b.AddASN1(cbasn1.SEQUENCE, func(ext *cryptobyte.Builder) {
			ext.AddBytes(oidExtAuthorityKeyIDElement)
			ext.AddASN1(cbasn1.OCTET_STRING, func(v *cryptobyte.Builder) {
				v.AddASN1(cbasn1.SEQUENCE, func(aki *cryptobyte.Builder) {
					aki.AddASN1(cbasn1.Tag(0).ContextSpecific(), func(k *cryptobyte.Builder) { k.AddBytes(id) })
				})
			})
		})
		akid, err := b.Bytes()
		if err != nil {
			return nil
		}
		l.akid = akid
	}
	return l
}

// signLeaf signs the X509-SVID of id for pub (spki, its DER) with s, and
// returns it as DER with its serial.
func (s *signingCA) signLeaf(id spiffeid.ID, pub crypto.PublicKey, spki []byte, notBefore, notAfter time.Time) ([]byte, *big.Int, error) {
	f, err := newLeafFields(id, pub, spki, notBefore, notAfter)
	if err != nil {
		return nil, nil, err
	}
	// Timed by the machine's clock, not Config.Clock: this is the cost
	// of the work (see Authority.SigningCost), not a time of the CA's.
	start := time.Now()
	var der []byte
	if s.leaf == nil {
		if der, err = x509.CreateCertificate(rand.Reader, leafTemplate(f), s.cert, pub, s.key); err != nil {
			err = fmt.Errorf("ca: sign leaf: %w", err)
		}
	} else {
		der, err = s.leaf.sign(f)
	}
	if err != nil {
		return nil, nil, err
	}
	storeMin(&s.fastest, time.Since(start).Nanoseconds())
	return der, f.serial, nil
}

// storeMin stores x in v if x is positive and v is zero or greater than x.
func storeMin(v *atomic.Int64, x int64) {
	for old := v.Load(); x > 0 && (old == 0 || x < old); old = v.Load() {
		if v.CompareAndSwap(old, x) {
			return
		}
	}
}

// leafFields are what one leaf says: its serial, validity, SPIFFE ID, key
// and key ID.
type leafFields struct {
	serial              *big.Int
	notBefore, notAfter time.Time
	id                  spiffeid.ID
	pub                 crypto.PublicKey
	spki                []byte // the DER SubjectPublicKeyInfo of pub, as the CSR had it
	ski                 []byte
}

// newLeafFields draws the serial and derives the key ID of a new leaf.
func newLeafFields(id spiffeid.ID, pub crypto.PublicKey, spki []byte, notBefore, notAfter time.Time) (leafFields, error) {
	serial, err := newSerial(notBefore)
	if err != nil {
		return leafFields{}, err
	}
	ski, err := subjectKeyIDFromSPKI(spki)
	if err != nil {
		return leafFields{}, err
	}
	return leafFields{serial: serial, notBefore: notBefore, notAfter: notAfter, id: id, pub: pub, spki: spki, ski: ski}, nil
}

// sign encodes and signs the leaf f describes, and verifies the signature.
func (l *leafSigner) sign(f leafFields) ([]byte, error) {
	spki, err := canonicalSPKI(f.pub, f.spki)
	if err != nil {
		return nil, err
	}
	uri := f.id.String()
	ku := extKeyUsageSign
	if _, ok := f.pub.(*rsa.PublicKey); ok {
		ku = extKeyUsageSignEncipher // see leafTemplate
	}
	tbs, err := l.encodeTBS(f, spki, ku, uri)
	if err != nil {
		return nil, err
	}
	// As x509.CreateCertificate signs, and checks the signature after.
	sig, err := l.signAndCheck(tbs)
	if err != nil {
		return nil, err
	}
	// Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm,
	// signatureValue BIT STRING }
	sigLen := 1 + len(sig) // no unused bits
	der := make([]byte, 0, tlvLen(len(tbs)+len(l.sigAlg)+tlvLen(sigLen)))
	der = appendHeader(der, tagSequence, len(tbs)+len(l.sigAlg)+tlvLen(sigLen))
	der = append(der, tbs...)
	der = append(der, l.sigAlg...)
	der = appendHeader(der, tagBitString, sigLen)
	der = append(der, 0)
	return append(der, sig...), nil
}

// signAndCheck signs tbs and verifies the signature.
func (l *leafSigner) signAndCheck(tbs []byte) ([]byte, error) {
	if l.own == nil {
		sig, err := crypto.SignMessage(l.key, rand.Reader, tbs, l.opts)
		if err != nil {
			return nil, fmt.Errorf("ca: sign leaf: %w", err)
		}
		if err := l.cert.CheckSignature(l.alg, tbs, sig); err != nil {
			return nil, fmt.Errorf("ca: sign leaf: the signature does not verify: %w", err)
		}
		return sig, nil
	}
	h := l.opts.HashFunc().New()
	h.Write(tbs)
	digest := h.Sum(nil)
	sig, err := l.key.Sign(rand.Reader, digest, l.opts)
	if err != nil {
		return nil, fmt.Errorf("ca: sign leaf: %w", err)
	}
	if err := l.own.check(digest, sig); err != nil {
		return nil, fmt.Errorf("ca: sign leaf: the signature does not verify: %w", err)
	}
	return sig, nil
}

// DER tags the leaf encoder writes.
const (
	tagInteger         = 0x02
	tagBitString       = 0x03
	tagOctetString     = 0x04
	tagUTCTime         = 0x17
	tagGeneralizedTime = 0x18
	tagSequence        = 0x30
	tagExtensions      = 0xa3 // [3] EXPLICIT, constructed
	tagURI             = 0x86 // [6] IMPLICIT IA5String
)

// tbsVersion is a TBSCertificate's version field, v3: [0] EXPLICIT INTEGER 2.
var tbsVersion = []byte{0xa0, 0x03, 0x02, 0x01, 0x02}

// extCriticalTrue is an extension's critical field set.
var extCriticalTrue = []byte{0x01, 0x01, 0xff}

// encodeTBS writes f's TBSCertificate: the lengths of every element are
// worked out first, so that the DER is written once into a buffer of its
// size.
func (l *leafSigner) encodeTBS(f leafFields, spki, ku []byte, uri string) ([]byte, error) {
	if f.serial.Sign() <= 0 {
		return nil, errors.New("ca: encode leaf: serial number must be positive")
	}
	serial := f.serial.Bytes()
	serialLen := len(serial)
	if serial[0]&0x80 != 0 {
		serialLen++ // a leading zero keeps it positive
	}
	notBefore, err := asn1Time(f.notBefore)
	if err != nil {
		return nil, err
	}
	notAfter, err := asn1Time(f.notAfter)
	if err != nil {
		return nil, err
	}
	validityLen := tlvLen(len(notBefore.value)) + tlvLen(len(notAfter.value))
	skidLen := len(oidExtSubjectKeyIDElement) + tlvLen(tlvLen(len(f.ski)))
	namesLen := tlvLen(len(uri))
	sanLen := len(oidExtSubjectAltNameElement) + len(extCriticalTrue) + tlvLen(tlvLen(namesLen))
	extsLen := len(ku) + len(extExtKeyUsage) + len(extBasicConstraintsLeaf) + tlvLen(skidLen) + len(l.akid) + tlvLen(sanLen)
	tbsLen := len(tbsVersion) + tlvLen(serialLen) + len(l.sigAlg) + len(l.issuer) + tlvLen(validityLen) +
		len(emptyName) + len(spki) + tlvLen(tlvLen(extsLen))

	b := make([]byte, 0, tlvLen(tbsLen))
	b = appendHeader(b, tagSequence, tbsLen)
	b = append(b, tbsVersion...)
	b = appendHeader(b, tagInteger, serialLen)
	if serialLen > len(serial) {
		b = append(b, 0)
	}
	b = append(b, serial...)
	b = append(b, l.sigAlg...)
	b = append(b, l.issuer...)
	b = appendHeader(b, tagSequence, validityLen)
	b = append(appendHeader(b, notBefore.tag, len(notBefore.value)), notBefore.value...)
	b = append(appendHeader(b, notAfter.tag, len(notAfter.value)), notAfter.value...)
	b = append(b, emptyName...)
	b = append(b, spki...)
	b = appendHeader(b, tagExtensions, tlvLen(extsLen))
	b = appendHeader(b, tagSequence, extsLen)
	// In x509.CreateCertificate's order.
	b = append(b, ku...)
	b = append(b, extExtKeyUsage...)
	b = append(b, extBasicConstraintsLeaf...)
	b = appendHeader(b, tagSequence, skidLen)
	b = append(b, oidExtSubjectKeyIDElement...)
	b = appendHeader(b, tagOctetString, tlvLen(len(f.ski)))
	b = append(appendHeader(b, tagOctetString, len(f.ski)), f.ski...)
	b = append(b, l.akid...)
	b = appendHeader(b, tagSequence, sanLen)
	b = append(b, oidExtSubjectAltNameElement...)
	b = append(b, extCriticalTrue...) // the subject is empty (RFC 5280, 4.2.1.6)
	b = appendHeader(b, tagOctetString, tlvLen(namesLen))
	b = appendHeader(b, tagSequence, namesLen)
	b = append(appendHeader(b, tagURI, len(uri)), uri...)
	if len(b) != tlvLen(tbsLen) {
		return nil, fmt.Errorf("ca: encode leaf: %d bytes written for %d", len(b), tlvLen(tbsLen))
	}
	return b, nil
}

// tlvLen is the size of a DER element whose contents are n bytes long.
func tlvLen(n int) int {
	switch {
	case n < 0x80:
		return 2 + n
	case n < 0x100:
		return 3 + n
	case n < 0x10000:
		return 4 + n
	}
	return 5 + n // up to 16 MiB, far more than a certificate
}

// appendHeader appends a DER tag and the definite length n (under 16 MiB).
func appendHeader(b []byte, tag byte, n int) []byte {
	var l [4]byte
	binary.BigEndian.PutUint32(l[:], uint32(n)) //nolint:gosec // G115: a length, non-negative and far under 4 GiB
	switch {
	case n < 0x80:
		return append(b, tag, l[3])
	case n < 0x100:
		return append(b, tag, 0x81, l[3])
	case n < 0x10000:
		return append(b, tag, 0x82, l[2], l[3])
	}
	return append(b, tag, 0x83, l[1], l[2], l[3])
}

// derTime is a validity time's tag and contents.
type derTime struct {
	tag   byte
	value []byte
}

// asn1Time is t as x509.CreateCertificate encodes a validity time: UTCTime
// from 1950 to 2049, GeneralizedTime outside, in whole seconds, UTC.
func asn1Time(t time.Time) (derTime, error) {
	t = t.UTC()
	switch y := t.Year(); {
	case y >= 1950 && y < 2050:
		return derTime{tagUTCTime, t.AppendFormat(make([]byte, 0, 13), "060102150405Z")}, nil
	case y >= 0 && y <= 9999:
		return derTime{tagGeneralizedTime, t.AppendFormat(make([]byte, 0, 15), "20060102150405Z")}, nil
	}
	return derTime{}, fmt.Errorf("ca: encode leaf: time %s cannot be encoded", t)
}

// DER of the OIDs of the extensions built per leaf, tag and length
// included.
var (
	oidExtSubjectKeyIDElement   = append([]byte{0x06, byte(len(oidExtSubjectKeyID))}, oidExtSubjectKeyID...)
	oidExtSubjectAltNameElement = append([]byte{0x06, byte(len(oidExtSubjectAltName))}, oidExtSubjectAltName...)
	oidExtAuthorityKeyIDElement = append([]byte{0x06, byte(len(oidExtAuthorityKeyID))}, oidExtAuthorityKeyID...)
)

// canonicalSPKI returns pub as x509.MarshalPKIXPublicKey encodes it, which
// is what a certificate carries. spki, the CSR's encoding of pub, is that
// already whenever it is a P-256 or P-384 key in the usual form holding
// pub's uncompressed point (which encodes only one way), which spares
// encoding it again.
func canonicalSPKI(pub crypto.PublicKey, spki []byte) ([]byte, error) {
	if k, ok := pub.(*ecdsa.PublicKey); ok {
		for _, c := range ecSPKIs {
			// And it must be pub's point: the certificate carries spki,
			// so ValidateLeaf's comparison with it could not tell.
			if point, ok := bytes.CutPrefix(spki, c.prefix); ok && k.Curve == c.curve {
				if want, err := k.Bytes(); err == nil && bytes.Equal(point, want) {
					return spki, nil
				}
			}
		}
	}
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("ca: encode public key: %w", err)
	}
	return der, nil
}
