package ca

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/asn1"
	"strings"
	"unicode/utf8"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
)

// The CSR fast path. Nearly every CSR a CA sees has one shape: a PEM
// "CERTIFICATE REQUEST", an ECDSA P-256 or P-384 key, an empty subject or
// a few plain strings, and one extensionRequest asking for the SPIFFE ID
// in a URI SAN. parseCSRFast reads that shape with cryptobyte, which costs
// a fifth of x509.ParseCertificateRequest's reflection-driven decoding,
// and checks what ParseCSR and CheckCSR would. It accepts a CSR only if
// they would; anything else, malformed or merely unusual, it leaves to
// them, which decide and word the error. It takes the DER from the PEM as
// ParseCSR does (csrDER). FuzzCSRFastPath and FuzzCSRFastPathSigned hold it
// to that.

// oidExtensionRequest is PKCS #9's extensionRequest (1.2.840.113549.1.9.14),
// and csrExtensions the extensions CheckCSR knows, DER-encoded contents as
// validate.go's: DER writes an OID one way, so the bytes compare as the
// OIDs would, without decoding them.
var (
	oidExtensionRequest = []byte{0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x0e}
	csrExtensions       = [extEKU + 1][]byte{extBC: oidExtBasicConstr, extSAN: oidExtSubjectAltName, extKU: oidExtKeyUsage, extEKU: oidExtExtKeyUsage}
)

// The indexes of csrExtensions.
const (
	extBC = iota
	extSAN
	extKU
	extEKU
)

// parseCSRFast returns the key of pemBytes, a CSR for want, and its DER
// SubjectPublicKeyInfo, with ok true only if ParseCSR and CheckCSR(want)
// accept the CSR and would return the same. With ok false the caller asks
// them.
func parseCSRFast(pemBytes []byte, want spiffeid.ID) (pub *ecdsa.PublicKey, spki []byte, ok bool) {
	if !plainTrustDomain(want.TrustDomain().Name()) {
		return nil, nil, false
	}
	der, err := csrDER(pemBytes)
	if err != nil {
		return nil, nil, false
	}
	in := cryptobyte.String(der)
	var csr, infoElem, sigAlg cryptobyte.String
	var sig asn1.BitString
	if !in.ReadASN1(&csr, cbasn1.SEQUENCE) || !in.Empty() ||
		!csr.ReadASN1Element(&infoElem, cbasn1.SEQUENCE) ||
		!csr.ReadASN1Element(&sigAlg, cbasn1.SEQUENCE) ||
		!csr.ReadASN1BitString(&sig) || !csr.Empty() || sig.BitLength%8 != 0 {
		return nil, nil, false
	}
	info := infoElem
	var version int64
	var subject, spkiElem, attrs cryptobyte.String
	if !info.ReadASN1(&info, cbasn1.SEQUENCE) ||
		!info.ReadASN1Integer(&version) || version != 0 ||
		!info.ReadASN1(&subject, cbasn1.SEQUENCE) || !plainSubject(subject) ||
		!info.ReadASN1Element(&spkiElem, cbasn1.SEQUENCE) ||
		!info.ReadASN1(&attrs, cbasn1.Tag(0).Constructed().ContextSpecific()) || !info.Empty() {
		return nil, nil, false
	}
	if pub, ok = parseECSPKI(spkiElem); !ok || !requestsOnly(attrs, want) {
		return nil, nil, false
	}
	// The algorithm identifiers the leaf encoder writes: ECDSA with
	// SHA-2, parameters absent. DER encodes each one way.
	var digest []byte
	switch {
	case bytes.Equal(sigAlg, algECDSAWithSHA256):
		sum := sha256.Sum256(infoElem)
		digest = sum[:]
	case bytes.Equal(sigAlg, algECDSAWithSHA384):
		sum := sha512.Sum384(infoElem)
		digest = sum[:]
	case bytes.Equal(sigAlg, algECDSAWithSHA512):
		sum := sha512.Sum512(infoElem)
		digest = sum[:]
	default:
		return nil, nil, false
	}
	if !ecdsa.VerifyASN1(pub, digest, sig.Bytes) {
		return nil, nil, false
	}
	return pub, spkiElem, true
}

// plainTrustDomain reports whether x509's URI checks, which look at the
// host (the trust domain), can refuse none of its SPIFFE IDs: labels of 1 to
// 63 characters separated by single dots, at most 253 in all.
func plainTrustDomain(name string) bool {
	if len(name) == 0 || len(name) > 253 {
		return false
	}
	for label := range strings.SplitSeq(name, ".") {
		if len(label) == 0 || len(label) > 63 {
			return false
		}
	}
	return true
}

// plainSubject reports whether subject, the contents of an RDNSequence, is
// well formed with every value a PrintableString of the strict set or a
// UTF8String, which x509 parses without complaint.
func plainSubject(subject cryptobyte.String) bool {
	for !subject.Empty() {
		var set cryptobyte.String
		if !subject.ReadASN1(&set, cbasn1.SET) || set.Empty() {
			return false
		}
		for !set.Empty() {
			var atv cryptobyte.String
			var oid asn1.ObjectIdentifier
			var value cryptobyte.String
			var tag cbasn1.Tag
			if !set.ReadASN1(&atv, cbasn1.SEQUENCE) || !atv.ReadASN1ObjectIdentifier(&oid) ||
				!atv.ReadAnyASN1(&value, &tag) || !atv.Empty() {
				return false
			}
			switch tag {
			case cbasn1.UTF8String:
				if !utf8.Valid(value) {
					return false
				}
			case cbasn1.PrintableString:
				for _, c := range value {
					if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
						strings.IndexByte("'()+,-./:=? ", c) >= 0) {
						return false
					}
				}
			default:
				return false
			}
		}
	}
	return true
}

// parseECSPKI parses a P-256 or P-384 SubjectPublicKeyInfo of the one form
// x509 writes: a prefix of ecSPKIs and the uncompressed point, which
// ParseUncompressedPublicKey checks is on the curve.
func parseECSPKI(spki []byte) (*ecdsa.PublicKey, bool) {
	for _, c := range ecSPKIs {
		if point, ok := bytes.CutPrefix(spki, c.prefix); ok {
			pub, err := ecdsa.ParseUncompressedPublicKey(c.curve, point)
			return pub, err == nil
		}
	}
	return nil, false
}

// requestsOnly reports whether attrs, a CSR's attributes, are one
// extensionRequest that CheckCSR accepts for want: a subjectAltName with
// want as its one name, no extension but those CheckCSR knows and each
// once, basicConstraints (if any) not asking for a CA, and at most
// maxCSRExtensionBytes of extension values.
func requestsOnly(attrs cryptobyte.String, want spiffeid.ID) bool {
	var attr, oid, values, exts cryptobyte.String
	if !attrs.ReadASN1(&attr, cbasn1.SEQUENCE) || !attrs.Empty() ||
		!attr.ReadASN1(&oid, cbasn1.OBJECT_IDENTIFIER) || !bytes.Equal(oid, oidExtensionRequest) ||
		!attr.ReadASN1(&values, cbasn1.SET) || !attr.Empty() ||
		!values.ReadASN1(&exts, cbasn1.SEQUENCE) || !values.Empty() {
		return false
	}
	var seen uint // a bit per csrExtensions index
	size := 0
	for !exts.Empty() {
		var ext, value cryptobyte.String
		var critical bool // the known ones may be critical
		if !exts.ReadASN1(&ext, cbasn1.SEQUENCE) || !ext.ReadASN1(&oid, cbasn1.OBJECT_IDENTIFIER) ||
			!readOptionalBool(&ext, &critical) ||
			!ext.ReadASN1(&value, cbasn1.OCTET_STRING) || !ext.Empty() {
			return false
		}
		size += len(value)
		known := -1
		for i, k := range csrExtensions {
			if bytes.Equal(oid, k) {
				known = i
			}
		}
		// Any other extension, even one CheckCSR would let pass, is left
		// to the full parse, as is a repeat (which x509 refuses).
		if known < 0 || seen&(1<<known) != 0 {
			return false
		}
		seen |= 1 << known
		switch known {
		case extBC:
			var bc cryptobyte.String
			var isCA bool
			var maxPathLen int64
			if !value.ReadASN1(&bc, cbasn1.SEQUENCE) || !value.Empty() ||
				!readOptionalBool(&bc, &isCA) || isCA ||
				(bc.PeekASN1Tag(cbasn1.INTEGER) && !bc.ReadASN1Integer(&maxPathLen)) || !bc.Empty() {
				return false
			}
		case extSAN:
			var names, uri cryptobyte.String
			if !value.ReadASN1(&names, cbasn1.SEQUENCE) || !value.Empty() ||
				!names.ReadASN1(&uri, cbasn1.Tag(6).ContextSpecific()) || !names.Empty() ||
				string(uri) != want.String() {
				return false
			}
		}
	}
	return seen&(1<<extSAN) != 0 && size <= maxCSRExtensionBytes
}
