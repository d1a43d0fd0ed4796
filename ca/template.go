package ca

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
)

// newSerial returns a positive 128-bit serial number: the 48-bit Unix
// millisecond of at (the certificate's NotBefore, which it reveals anyway)
// followed by 80 random bits. The random part needs no counter shared
// between replicas and keeps serials unguessable (over the 64 bits of
// CSPRNG output the CA/Browser Forum asks for); the time prefix makes the
// issuance log's serial keys grow in order, so recording a batch appends to
// the store's B+tree instead of rewriting a random page per record.
func newSerial(at time.Time) (*big.Int, error) {
	var b [16]byte
	if _, err := rand.Read(b[6:]); err != nil {
		return nil, fmt.Errorf("ca: serial: %w", err)
	}
	ms := uint64(max(at.UnixMilli(), 1)) & (1<<48 - 1) //nolint:gosec // G115: clamped positive, masked to 48 bits
	if ms == 0 {
		ms = 1 // the 48-bit clock wrapped (year 10889): keep the serial positive
	}
	var ts [8]byte
	binary.BigEndian.PutUint64(ts[:], ms)
	copy(b[:6], ts[2:])
	return new(big.Int).SetBytes(b[:]), nil
}

// subjectKeyID computes the key identifier as in RFC 7093 section 2 method 1:
// the leftmost 160 bits of the SHA-256 of the subjectPublicKey bit string.
func subjectKeyID(pub crypto.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, err
	}
	return subjectKeyIDFromSPKI(der)
}

// subjectKeyIDFromSPKI is subjectKeyID of a DER SubjectPublicKeyInfo. It
// reads it with cryptobyte: encoding/asn1's reflection cost more than the
// hash, once per issuance.
func subjectKeyIDFromSPKI(spki []byte) ([]byte, error) {
	in := cryptobyte.String(spki)
	var info cryptobyte.String
	var key asn1.BitString
	if !in.ReadASN1(&info, cbasn1.SEQUENCE) || !in.Empty() ||
		!info.SkipASN1(cbasn1.SEQUENCE) || !info.ReadASN1BitString(&key) || !info.Empty() {
		return nil, errors.New("ca: parse public key: malformed SubjectPublicKeyInfo")
	}
	sum := sha256.Sum256(key.Bytes)
	return sum[:20], nil
}

// caTemplate is the template of meshca's roots and intermediates: a CA that
// carries the trust domain's SPIFFE ID, as SPIFFE signing certificates may.
func caTemplate(td spiffeid.TrustDomain, cn string, pub crypto.PublicKey, notBefore, notAfter time.Time, maxPathLen int) (*x509.Certificate, error) {
	serial, err := newSerial(notBefore)
	if err != nil {
		return nil, err
	}
	ski, err := subjectKeyID(pub)
	if err != nil {
		return nil, err
	}
	return &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{"meshca"}, CommonName: cn, SerialNumber: serial.Text(16)},
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            maxPathLen,
		MaxPathLenZero:        maxPathLen == 0,
		SubjectKeyId:          ski,
		URIs:                  []*url.URL{td.ID().URL()},
	}, nil
}

// leafTemplate builds the X509-SVID template of f from scratch: nothing is
// copied from the CSR but its public key and the already-checked ID.
func leafTemplate(f leafFields) *x509.Certificate {
	usage := x509.KeyUsageDigitalSignature
	if _, ok := f.pub.(*rsa.PublicKey); ok {
		// RSA key exchange in TLS 1.2 encrypts to the certificate's key.
		usage |= x509.KeyUsageKeyEncipherment
	}
	return &x509.Certificate{
		SerialNumber:          f.serial,
		NotBefore:             f.notBefore,
		NotAfter:              f.notAfter,
		KeyUsage:              usage,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		IsCA:                  false,
		SubjectKeyId:          f.ski,
		URIs:                  []*url.URL{f.id.URL()},
	}
}

// servingTemplate is the template of the CA server's own TLS certificate.
func servingTemplate(dnsNames []string, ips []net.IP, pub crypto.PublicKey, notBefore, notAfter time.Time) (*x509.Certificate, error) {
	serial, err := newSerial(notBefore)
	if err != nil {
		return nil, err
	}
	ski, err := subjectKeyID(pub)
	if err != nil {
		return nil, err
	}
	cn := "meshca"
	if len(dnsNames) > 0 {
		cn = dnsNames[0]
	}
	return &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{"meshca"}, CommonName: cn},
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		SubjectKeyId:          ski,
		DNSNames:              dnsNames,
		IPAddresses:           ips,
	}, nil
}

// certificatePEM is pem.EncodeToMemory of a CERTIFICATE block with no
// headers, byte for byte, written straight into the string returned: the
// standard encoder's buffer, base64 writer and line breaker are most of the
// garbage an issuance made, once per certificate on the request path.
func certificatePEM(der []byte) string {
	const begin, end = "-----BEGIN CERTIFICATE-----\n", "-----END CERTIFICATE-----\n"
	const lineBytes = 48 // 64 base64 characters
	n := base64.StdEncoding.EncodedLen(len(der))
	var b strings.Builder
	b.Grow(len(begin) + n + (n+63)/64 + len(end))
	b.WriteString(begin)
	var line [64]byte
	for len(der) > 0 {
		chunk := der[:min(lineBytes, len(der))]
		der = der[len(chunk):]
		base64.StdEncoding.Encode(line[:], chunk)
		b.Write(line[:base64.StdEncoding.EncodedLen(len(chunk))])
		b.WriteByte('\n')
	}
	b.WriteString(end)
	return b.String()
}
