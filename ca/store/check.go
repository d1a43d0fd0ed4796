package store

import (
	"errors"
	"fmt"
	"math"
	"strings"
	"time"
	"unicode/utf8"
)

// Limits every Store enforces, so that a record accepted by one backend is
// accepted by all (a bbolt index key, a PostgreSQL text column).
const (
	// MaxSerialLen bounds a serial: RFC 5280 allows 20 octets, 40 hex
	// digits.
	MaxSerialLen = 64
	// MaxSPIFFEIDLen is the SPIFFE ID specification's limit.
	MaxSPIFFEIDLen = 2048
	// MaxRequestKeyLen bounds IssuedRequest.Request (a Kubernetes UID is
	// 36 bytes).
	MaxRequestKeyLen = 256
	// MaxChainLen bounds the PEM chain of an IssuedRequest, all of it:
	// what Kubernetes accepts in a PodCertificateRequest's status.
	MaxChainLen = 100 << 10
	// MaxTrustDomainLen is the SPIFFE ID specification's limit on a trust
	// domain name.
	MaxTrustDomainLen = 255
	// MaxFederatedBundleLen bounds a stored federated bundle document.
	MaxFederatedBundleLen = 4 << 20
	// MaxIssuanceLen bounds an issuance record's JSON (EncodeIssuance),
	// its Details above all: with the largest batch, the size of a
	// boltstore journal frame.
	MaxIssuanceLen = 64 << 10
)

// CheckSerial checks that serial is 1 to MaxSerialLen lowercase hex digits
// (as Issuance.Serial and JoinToken.Hash are).
func CheckSerial(serial string) error {
	if serial == "" || len(serial) > MaxSerialLen {
		return fmt.Errorf("serial %q is not 1 to %d hex digits", serial, MaxSerialLen)
	}
	for _, c := range []byte(serial) {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return fmt.Errorf("serial %q is not lowercase hex", serial)
		}
	}
	return nil
}

// CheckSPIFFEID checks what a store needs of a SPIFFE ID: set, at most
// MaxSPIFFEIDLen bytes of valid UTF-8 without a NUL byte (a key separator
// in bbolt, refused by PostgreSQL's text).
func CheckSPIFFEID(id string) error {
	switch {
	case id == "":
		return errors.New("missing SPIFFE ID")
	case len(id) > MaxSPIFFEIDLen:
		return fmt.Errorf("SPIFFE ID longer than %d bytes", MaxSPIFFEIDLen)
	case strings.IndexByte(id, 0) >= 0:
		return errors.New("SPIFFE ID contains a NUL byte")
	case !utf8.ValidString(id):
		// JSON would store it altered, unlike the index keys.
		return errors.New("SPIFFE ID is not valid UTF-8")
	}
	return nil
}

// Stored times are Unix nanoseconds in an int64, ordered as the Go values
// are: record, token and revocation times must lie between 1970 and 2262.
var (
	MinTime = time.Unix(0, 0)
	MaxTime = time.Unix(0, math.MaxInt64)
)

// StorableTime reports whether t lies between MinTime and MaxTime.
func StorableTime(t time.Time) bool { return !t.Before(MinTime) && !t.After(MaxTime) }

// CheckIssuance checks what every store needs of a record: its serial,
// its SPIFFE ID and storable times.
func CheckIssuance(rec *Issuance) error {
	if err := CheckSerial(rec.Serial); err != nil {
		return err
	}
	if err := CheckSPIFFEID(rec.SPIFFEID); err != nil {
		return err
	}
	if !StorableTime(rec.NotAfter) || !StorableTime(rec.IssuedAt) {
		return errors.New("not_after and issued_at must be between 1970 and 2262")
	}
	return nil
}

// CheckIssuedRequest checks what every store needs of an answer: a request
// key of 1 to MaxRequestKeyLen bytes of valid UTF-8 without a NUL byte, the
// serial of rec, and a chain of 1 to MaxChainLen bytes in all.
func CheckIssuedRequest(req *IssuedRequest, rec *Issuance) error {
	switch k := req.Request; {
	case k == "" || len(k) > MaxRequestKeyLen:
		return fmt.Errorf("request key %q is not 1 to %d bytes", k, MaxRequestKeyLen)
	case strings.IndexByte(k, 0) >= 0 || !utf8.ValidString(k):
		return errors.New("request key is not valid UTF-8 without NUL bytes")
	case req.Serial != rec.Serial:
		return fmt.Errorf("answer to request %s names serial %q, the record %q", k, req.Serial, rec.Serial)
	}
	size := 0
	for _, c := range req.ChainPEM {
		size += len(c)
	}
	if len(req.ChainPEM) == 0 || size == 0 || size > MaxChainLen {
		return fmt.Errorf("answer to request %s: a chain of 1 to %d bytes is required", req.Request, MaxChainLen)
	}
	return nil
}

// CheckFederatedBundle checks what every store needs of a federated
// bundle: a trust domain name of lowercase letters, digits, dots, dashes
// and underscores (as spiffeid allows), a bundle of at most
// MaxFederatedBundleLen bytes, and storable times.
func CheckFederatedBundle(b *FederatedBundle) error {
	if err := checkTrustDomain(b.TrustDomain); err != nil {
		return err
	}
	switch {
	case len(b.Bundle) == 0:
		return fmt.Errorf("federated bundle of %s is empty", b.TrustDomain)
	case len(b.Bundle) > MaxFederatedBundleLen:
		return fmt.Errorf("federated bundle of %s is longer than %d bytes", b.TrustDomain, MaxFederatedBundleLen)
	case !StorableTime(b.RefreshedAt) || !StorableTime(b.ChangedAt):
		return errors.New("refreshed_at and changed_at must be between 1970 and 2262")
	}
	return nil
}

// checkTrustDomain checks a trust domain name as a store keeps it.
func checkTrustDomain(td string) error {
	if td == "" || len(td) > MaxTrustDomainLen {
		return fmt.Errorf("trust domain %q is not 1 to %d characters", td, MaxTrustDomainLen)
	}
	for _, c := range []byte(td) {
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '.' || c == '-' || c == '_') {
			return fmt.Errorf("trust domain %q has a character other than a-z, 0-9, '.', '-' and '_'", td)
		}
	}
	return nil
}
