package ca

import (
	"bytes"
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
)

// errInvalidLeaf marks a certificate the validator refused. It is a CA bug,
// never the caller's fault, so it is not exported for status mapping.
var errInvalidLeaf = errors.New("issued certificate failed validation")

// emptyName is the DER of an empty Name (an empty SEQUENCE).
var emptyName = []byte{0x30, 0x00}

// Extension OIDs, DER-encoded contents.
var (
	oidExtSubjectKeyID   = []byte{0x55, 0x1d, 0x0e}
	oidExtKeyUsage       = []byte{0x55, 0x1d, 0x0f}
	oidExtSubjectAltName = []byte{0x55, 0x1d, 0x11}
	oidExtBasicConstr    = []byte{0x55, 0x1d, 0x13}
	oidExtAuthorityKeyID = []byte{0x55, 0x1d, 0x23}
	oidExtExtKeyUsage    = []byte{0x55, 0x1d, 0x25}
	oidEKUServerAuth     = []byte{0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x01}
	oidEKUClientAuth     = []byte{0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x02}
)

// ValidateLeaf re-checks an issued X509-SVID, as DER, against the SPIFFE
// X509-SVID rules and meshca's own policy, independently of the template and
// library that produced it: v3; a positive serial of at most 20 octets; the
// issuer name equal to the issuer's subject; an empty subject; validity inside the issuer's and
// covering now; the subject public key exactly spki (the CSR's); and exactly
// these extensions, each once: basicConstraints with CA false, keyUsage with
// digitalSignature and without certificate or CRL signing, extKeyUsage of
// serverAuth and/or clientAuth only, one URI SAN equal to id and no other
// name, a subject key ID, and an authority key ID equal to the issuer's.
//
// It does not verify the signature (signingCA.signLeaf verified it just
// before, in the leaf signer or in x509.CreateCertificate) and it
// allocates little: it reads the DER with cryptobyte rather than
// x509.ParseCertificate, which would double its cost per issuance.
func ValidateLeaf(der []byte, issuer *x509.Certificate, id spiffeid.ID, spki []byte, now time.Time) error {
	fail := func(format string, args ...any) error {
		return fmt.Errorf("ca: %w: %s", errInvalidLeaf, fmt.Sprintf(format, args...))
	}
	if !issuer.IsCA {
		return fail("issuer is not a CA")
	}
	input := cryptobyte.String(der)
	var cert, tbs, outerAlg, tbsAlg cryptobyte.String
	if !input.ReadASN1(&cert, cbasn1.SEQUENCE) || !input.Empty() ||
		!cert.ReadASN1(&tbs, cbasn1.SEQUENCE) || !cert.ReadASN1Element(&outerAlg, cbasn1.SEQUENCE) {
		return fail("malformed certificate")
	}
	var version int
	var serial, issuerName, validity, subject, pub cryptobyte.String
	if !tbs.ReadOptionalASN1Integer(&version, cbasn1.Tag(0).Constructed().ContextSpecific(), 0) || version != 2 {
		return fail("not an X.509 v3 certificate")
	}
	if !tbs.ReadASN1(&serial, cbasn1.INTEGER) || !tbs.ReadASN1Element(&tbsAlg, cbasn1.SEQUENCE) ||
		!tbs.ReadASN1Element(&issuerName, cbasn1.SEQUENCE) || !tbs.ReadASN1(&validity, cbasn1.SEQUENCE) ||
		!tbs.ReadASN1Element(&subject, cbasn1.SEQUENCE) || !tbs.ReadASN1Element(&pub, cbasn1.SEQUENCE) {
		return fail("malformed TBS certificate")
	}
	switch {
	case len(serial) == 0 || serial[0]&0x80 != 0 || (len(serial) == 1 && serial[0] == 0):
		return fail("serial number must be positive")
	case len(serial) > 21 || (len(serial) == 21 && serial[0] != 0):
		return fail("serial number over 20 octets")
	case !bytes.Equal(tbsAlg, outerAlg):
		return fail("signature algorithm fields differ")
	case !bytes.Equal(issuerName, issuer.RawSubject):
		return fail("issuer name does not match the signing certificate's subject")
	case !bytes.Equal(pub, spki):
		return fail("public key is not the CSR's")
	case !bytes.Equal(subject, emptyName):
		// meshca's leaves carry their identity in the SAN only; a subject
		// would be the first place CSR fields could leak in.
		return fail("subject is not empty")
	}
	notBefore, notAfter, ok := readValidity(validity)
	switch {
	case !ok:
		return fail("malformed validity")
	case !notBefore.Before(notAfter):
		return fail("NotBefore %s is not before NotAfter %s", notBefore, notAfter)
	case notAfter.After(issuer.NotAfter):
		return fail("outlives its issuer (%s > %s)", notAfter, issuer.NotAfter)
	case notBefore.Before(issuer.NotBefore):
		return fail("starts before its issuer")
	case now.Before(notBefore) || !now.Before(notAfter):
		return fail("not valid now")
	}
	var exts cryptobyte.String
	if !tbs.ReadASN1(&exts, cbasn1.Tag(3).Constructed().ContextSpecific()) || !tbs.Empty() ||
		!exts.ReadASN1(&exts, cbasn1.SEQUENCE) {
		return fail("no extensions, or unique identifiers present")
	}
	var seen [len(extChecks)]bool // in the order of extChecks
	for !exts.Empty() {
		var ext, oid, value cryptobyte.String
		var critical bool
		if !exts.ReadASN1(&ext, cbasn1.SEQUENCE) || !ext.ReadASN1(&oid, cbasn1.OBJECT_IDENTIFIER) ||
			!readOptionalBool(&ext, &critical) ||
			!ext.ReadASN1(&value, cbasn1.OCTET_STRING) || !ext.Empty() {
			return fail("malformed extension")
		}
		i := -1
		for j, c := range extChecks {
			if bytes.Equal(oid, c.oid) {
				i = j
				break
			}
		}
		if i < 0 {
			return fail("unexpected extension %x", []byte(oid))
		}
		if seen[i] { //nolint:gosec // G602: i indexes extChecks, and seen has its length
			return fail("duplicate %s extension", extChecks[i].name)
		}
		seen[i] = true //nolint:gosec // G602: as above
		if err := extChecks[i].check(value, issuer, id); err != "" {
			return fail("%s: %s", extChecks[i].name, err)
		}
	}
	for i, c := range extChecks {
		if !seen[i] {
			return fail("missing %s extension", c.name)
		}
	}
	return nil
}

// extChecks are the extensions a leaf must carry, and how each is checked.
// A check returns "" or what is wrong.
var extChecks = [...]struct {
	name  string
	oid   []byte
	check func(v cryptobyte.String, issuer *x509.Certificate, id spiffeid.ID) string
}{
	{"basicConstraints", oidExtBasicConstr, func(v cryptobyte.String, _ *x509.Certificate, _ spiffeid.ID) string {
		var seq cryptobyte.String
		var isCA bool
		if !v.ReadASN1(&seq, cbasn1.SEQUENCE) || !readOptionalBool(&seq, &isCA) {
			return "malformed"
		}
		if isCA {
			return "CA must be false"
		}
		return ""
	}},
	{"keyUsage", oidExtKeyUsage, func(v cryptobyte.String, _ *x509.Certificate, _ spiffeid.ID) string {
		var bits []byte
		var bs cryptobyte.String
		if !v.ReadASN1(&bs, cbasn1.BIT_STRING) || len(bs) < 2 {
			return "malformed"
		}
		bits = bs[1:] // first octet is the count of unused bits
		ku := x509.KeyUsage(0)
		for i := 0; i < 9 && i/8 < len(bits); i++ {
			if bits[i/8]&(0x80>>(i%8)) != 0 {
				ku |= 1 << i
			}
		}
		switch {
		case ku&x509.KeyUsageDigitalSignature == 0:
			return "lacks digitalSignature"
		case ku&(x509.KeyUsageCertSign|x509.KeyUsageCRLSign) != 0:
			return "allows certificate or CRL signing"
		}
		return ""
	}},
	{"extKeyUsage", oidExtExtKeyUsage, func(v cryptobyte.String, _ *x509.Certificate, _ spiffeid.ID) string {
		var seq cryptobyte.String
		if !v.ReadASN1(&seq, cbasn1.SEQUENCE) || seq.Empty() {
			return "malformed"
		}
		for !seq.Empty() {
			var oid cryptobyte.String
			if !seq.ReadASN1(&oid, cbasn1.OBJECT_IDENTIFIER) {
				return "malformed"
			}
			if !bytes.Equal(oid, oidEKUServerAuth) && !bytes.Equal(oid, oidEKUClientAuth) {
				return fmt.Sprintf("unexpected usage %x", []byte(oid))
			}
		}
		return ""
	}},
	{"subjectAltName", oidExtSubjectAltName, func(v cryptobyte.String, _ *x509.Certificate, id spiffeid.ID) string {
		var seq, uri cryptobyte.String
		if !v.ReadASN1(&seq, cbasn1.SEQUENCE) {
			return "malformed"
		}
		if !seq.ReadASN1(&uri, cbasn1.Tag(6).ContextSpecific()) {
			return "first name is not a URI"
		}
		if !seq.Empty() {
			return "more than one name: an X509-SVID has exactly one URI SAN"
		}
		if string(uri) != id.String() {
			return fmt.Sprintf("URI %q, want %s", string(uri), id)
		}
		return ""
	}},
	{"subjectKeyIdentifier", oidExtSubjectKeyID, func(v cryptobyte.String, _ *x509.Certificate, _ spiffeid.ID) string {
		var ski cryptobyte.String
		if !v.ReadASN1(&ski, cbasn1.OCTET_STRING) || len(ski) == 0 {
			return "malformed or empty"
		}
		return ""
	}},
	{"authorityKeyIdentifier", oidExtAuthorityKeyID, func(v cryptobyte.String, issuer *x509.Certificate, _ spiffeid.ID) string {
		var seq, aki cryptobyte.String
		if !v.ReadASN1(&seq, cbasn1.SEQUENCE) || !seq.ReadASN1(&aki, cbasn1.Tag(0).ContextSpecific()) {
			return "malformed"
		}
		if len(issuer.SubjectKeyId) > 0 && !bytes.Equal(aki, issuer.SubjectKeyId) {
			return "does not match the issuer's subject key ID"
		}
		return ""
	}},
}

// readValidity reads the Validity SEQUENCE's two times, each UTCTime or
// GeneralizedTime.
func readValidity(v cryptobyte.String) (notBefore, notAfter time.Time, ok bool) {
	read := func() (time.Time, bool) {
		var t time.Time
		switch {
		case v.PeekASN1Tag(cbasn1.UTCTime):
			return t, v.ReadASN1UTCTime(&t)
		case v.PeekASN1Tag(cbasn1.GeneralizedTime):
			return t, v.ReadASN1GeneralizedTime(&t)
		}
		return t, false
	}
	if notBefore, ok = read(); !ok {
		return
	}
	if notAfter, ok = read(); !ok {
		return
	}
	return notBefore, notAfter, v.Empty()
}

// readOptionalBool reads a BOOLEAN if one comes next (DEFAULT FALSE).
// cryptobyte's ReadOptionalASN1Boolean is for explicitly tagged ones.
func readOptionalBool(s *cryptobyte.String, out *bool) bool {
	*out = false
	if !s.PeekASN1Tag(cbasn1.BOOLEAN) {
		return true
	}
	return s.ReadASN1Boolean(out)
}
