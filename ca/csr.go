package ca

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/asn1"
	"encoding/pem"
	"fmt"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// MaxCSRSize bounds the PEM CSR the CA will parse. A P-256 CSR is under
// 1 KiB and an RSA 8192 one under 3 KiB.
const MaxCSRSize = 32 << 10

// RSA key sizes accepted in CSRs. Below 2048 is weak; above 8192 only makes
// every handshake slow.
const (
	minRSABits = 2048
	maxRSABits = 8192
)

// maxCSRExtensionBytes bounds the extensions of a CSR together. The CA
// copies none of them (the certificate is built from its own template), so
// anything beyond a SAN with one SPIFFE ID (at most 2 KiB) and a few usage
// bits is padding that costs parsing and storage.
const maxCSRExtensionBytes = 4 << 10

var (
	oidBasicConstraints  = asn1.ObjectIdentifier{2, 5, 29, 19}
	oidCSRSubjectAltName = asn1.ObjectIdentifier{2, 5, 29, 17}
	oidCSRKeyUsage       = asn1.ObjectIdentifier{2, 5, 29, 15}
	oidCSRExtKeyUsage    = asn1.ObjectIdentifier{2, 5, 29, 37}
)

// ParseCSR decodes one PEM "CERTIFICATE REQUEST" and checks its signature.
// Errors wrap ErrInvalidCSR.
func ParseCSR(pemBytes []byte) (*x509.CertificateRequest, error) {
	der, err := csrDER(pemBytes)
	if err != nil {
		return nil, err
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidCSR, err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("%w: signature does not verify: %v", ErrInvalidCSR, err)
	}
	return csr, nil
}

// csrDER is the DER of a CSR in PEM: exactly one plain "CERTIFICATE
// REQUEST" (or "NEW CERTIFICATE REQUEST") block, without headers, with
// whitespace at most around it, within MaxCSRSize. Errors wrap
// ErrInvalidCSR.
func csrDER(pemBytes []byte) ([]byte, error) {
	if len(pemBytes) > MaxCSRSize {
		return nil, fmt.Errorf("%w: %d bytes is over the %d byte limit", ErrInvalidCSR, len(pemBytes), MaxCSRSize)
	}
	block, rest := pem.Decode(pemBytes)
	if block == nil {
		return nil, fmt.Errorf("%w: not PEM", ErrInvalidCSR)
	}
	// pem.Decode skips text before the block and accepts RFC 1421
	// headers: a CSR is exactly one plain block.
	if !bytes.HasPrefix(bytes.TrimSpace(pemBytes), []byte("-----BEGIN ")) {
		return nil, fmt.Errorf("%w: data before the PEM block", ErrInvalidCSR)
	}
	if len(block.Headers) != 0 {
		return nil, fmt.Errorf("%w: PEM headers are not allowed", ErrInvalidCSR)
	}
	if block.Type != "CERTIFICATE REQUEST" && block.Type != "NEW CERTIFICATE REQUEST" {
		return nil, fmt.Errorf("%w: PEM block is %q, want \"CERTIFICATE REQUEST\"", ErrInvalidCSR, block.Type)
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		return nil, fmt.Errorf("%w: trailing data after the PEM block", ErrInvalidCSR)
	}
	return block.Bytes, nil
}

// CheckCSR checks that csr asks for exactly the identity want and nothing a
// workload certificate may not have: one URI SAN equal to want, no DNS, IP
// or email SANs, no CA bit, no unknown critical extension, at most
// maxCSRExtensionBytes of extensions, and an allowed key in its DER
// encoding. Errors wrap ErrInvalidCSR or
// ErrIdentityMismatch.
func CheckCSR(csr *x509.CertificateRequest, want spiffeid.ID) error {
	if err := CheckPublicKey(csr.PublicKey); err != nil {
		return err
	}
	// x509 parses some keys written other than DER's one way (an extra
	// parameter after the curve); the certificate would carry the key's
	// DER, and the issued leaf would not match the CSR's.
	if der, err := x509.MarshalPKIXPublicKey(csr.PublicKey); err != nil || !bytes.Equal(der, csr.RawSubjectPublicKeyInfo) {
		return fmt.Errorf("%w: the public key is not DER-encoded as RFC 5280 writes it", ErrInvalidCSR)
	}
	switch n := len(csr.URIs); {
	case n == 0:
		return fmt.Errorf("%w: no URI SAN: the CSR must carry the SPIFFE ID %s", ErrInvalidCSR, want)
	case n > 1:
		return fmt.Errorf("%w: %d URI SANs: an X509-SVID has exactly one", ErrInvalidCSR, n)
	}
	got, err := spiffeid.FromURI(csr.URIs[0])
	if err != nil {
		return fmt.Errorf("%w: URI SAN is not a SPIFFE ID: %v", ErrInvalidCSR, err)
	}
	if got != want {
		return fmt.Errorf("%w: CSR asks for %s but the credential proves %s", ErrIdentityMismatch, got, want)
	}
	if len(csr.DNSNames) > 0 {
		return fmt.Errorf("%w: DNS SANs %q are not allowed in a workload certificate", ErrInvalidCSR, csr.DNSNames)
	}
	if len(csr.IPAddresses) > 0 {
		return fmt.Errorf("%w: IP SANs are not allowed in a workload certificate", ErrInvalidCSR)
	}
	if len(csr.EmailAddresses) > 0 {
		return fmt.Errorf("%w: email SANs are not allowed in a workload certificate", ErrInvalidCSR)
	}
	size := 0
	for _, ext := range csr.Extensions {
		size += len(ext.Value)
		known := ext.Id.Equal(oidBasicConstraints) || ext.Id.Equal(oidCSRSubjectAltName) || ext.Id.Equal(oidCSRKeyUsage) || ext.Id.Equal(oidCSRExtKeyUsage)
		if ext.Critical && !known {
			return fmt.Errorf("%w: critical extension %s is not one the CA honours", ErrInvalidCSR, ext.Id)
		}
	}
	if size > maxCSRExtensionBytes {
		return fmt.Errorf("%w: extensions of %d bytes are over the %d byte limit", ErrInvalidCSR, size, maxCSRExtensionBytes)
	}
	for _, ext := range csr.Extensions {
		if !ext.Id.Equal(oidBasicConstraints) {
			continue
		}
		var bc struct {
			IsCA       bool `asn1:"optional"`
			MaxPathLen int  `asn1:"optional,default:-1"`
		}
		if _, err := asn1.Unmarshal(ext.Value, &bc); err != nil {
			return fmt.Errorf("%w: malformed basicConstraints extension", ErrInvalidCSR)
		}
		if bc.IsCA {
			return fmt.Errorf("%w: CSR asks for a CA certificate", ErrInvalidCSR)
		}
	}
	return nil
}

// CheckPublicKey checks that the CA certifies keys of pub's type and size:
// ECDSA P-256 or P-384, or RSA of 2048 to 8192 bits. Errors wrap
// ErrInvalidCSR.
func CheckPublicKey(pub crypto.PublicKey) error {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
			return fmt.Errorf("%w: ECDSA curve %s not allowed: use P-256 or P-384", ErrInvalidCSR, k.Curve.Params().Name)
		}
	case *rsa.PublicKey:
		if bits := k.N.BitLen(); bits < minRSABits || bits > maxRSABits {
			return fmt.Errorf("%w: RSA %d-bit key not allowed: use %d to %d bits", ErrInvalidCSR, bits, minRSABits, maxRSABits)
		}
	default:
		return fmt.Errorf("%w: key type %T not allowed: use ECDSA P-256/P-384 or RSA %d+", ErrInvalidCSR, pub, minRSABits)
	}
	return nil
}
