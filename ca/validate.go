package ca

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// errInvalidLeaf marks a certificate the validator refused. It is a CA bug,
// never the caller's fault, so it is not exported for status mapping.
var errInvalidLeaf = errors.New("issued certificate failed validation")

// ValidateLeaf re-checks an issued X509-SVID against the SPIFFE X509-SVID
// rules and meshca's own policy, independently of the template that produced
// it: no CA bit, signing-only key usage, exactly one URI SAN equal to id and
// no other SANs, the subject's key is pub, validity inside the issuer's, and
// the issuer names and key identifiers line up. It does not verify the
// signature: x509.CreateCertificate verified it just before.
func ValidateLeaf(leaf, issuer *x509.Certificate, id spiffeid.ID, pub crypto.PublicKey, now time.Time) error {
	fail := func(format string, args ...any) error {
		return fmt.Errorf("ca: %w: %s", errInvalidLeaf, fmt.Sprintf(format, args...))
	}
	switch {
	case !leaf.BasicConstraintsValid || leaf.IsCA:
		return fail("must carry basicConstraints with CA false")
	case leaf.KeyUsage&x509.KeyUsageDigitalSignature == 0:
		return fail("key usage lacks digitalSignature")
	case leaf.KeyUsage&(x509.KeyUsageCertSign|x509.KeyUsageCRLSign) != 0:
		return fail("key usage allows certificate or CRL signing")
	case len(leaf.URIs) != 1:
		return fail("has %d URI SANs, want 1", len(leaf.URIs))
	case len(leaf.DNSNames)+len(leaf.IPAddresses)+len(leaf.EmailAddresses) != 0:
		return fail("has SANs other than the SPIFFE ID")
	case leaf.SerialNumber == nil || leaf.SerialNumber.Sign() <= 0 || len(leaf.SerialNumber.Bytes()) > 20:
		return fail("serial number must be positive and at most 20 bytes")
	case !leaf.NotBefore.Before(leaf.NotAfter):
		return fail("NotBefore %s is not before NotAfter %s", leaf.NotBefore, leaf.NotAfter)
	case leaf.NotAfter.After(issuer.NotAfter):
		return fail("outlives its issuer (%s > %s)", leaf.NotAfter, issuer.NotAfter)
	case leaf.NotBefore.Before(issuer.NotBefore):
		return fail("starts before its issuer")
	case now.Before(leaf.NotBefore) || !now.Before(leaf.NotAfter):
		return fail("not valid now")
	case !issuer.IsCA:
		return fail("issuer is not a CA")
	case !bytes.Equal(leaf.RawIssuer, issuer.RawSubject):
		return fail("issuer name does not match the signing certificate's subject")
	case len(issuer.SubjectKeyId) > 0 && !bytes.Equal(leaf.AuthorityKeyId, issuer.SubjectKeyId):
		return fail("authority key ID does not match the issuer's subject key ID")
	case len(leaf.SubjectKeyId) == 0:
		return fail("no subject key ID")
	case !publicKeysEqual(leaf.PublicKey, pub):
		return fail("public key is not the CSR's")
	}
	for _, eku := range leaf.ExtKeyUsage {
		if eku != x509.ExtKeyUsageServerAuth && eku != x509.ExtKeyUsageClientAuth {
			return fail("unexpected extended key usage %v", eku)
		}
	}
	if len(leaf.UnknownExtKeyUsage) > 0 {
		return fail("unexpected extended key usage %v", leaf.UnknownExtKeyUsage)
	}
	got, err := spiffeid.FromURI(leaf.URIs[0])
	if err != nil {
		return fail("URI SAN is not a SPIFFE ID: %v", err)
	}
	if got != id {
		return fail("SPIFFE ID %s, want %s", got, id)
	}
	return nil
}
