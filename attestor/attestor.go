// Package attestor turns the credential a caller presents to the CSR API into
// the SPIFFE identity it is allowed to hold.
//
// An Attestor looks at one kind of credential (a bearer token, a client
// certificate) and either proves an identity, says the credential is not of
// its kind (ErrNoCredential), or refuses it with a reason. Chain tries several
// in order. The CA then requires the CSR to ask for exactly that identity.
package attestor

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Credential is what a caller presented.
type Credential struct {
	// BearerToken is the token from "authorization: Bearer <token>", if any.
	BearerToken string
	// PeerCertificates is the client certificate chain from the TLS
	// handshake, leaf first. The handshake proved possession of the leaf's
	// key; the chain itself is not yet verified.
	PeerCertificates []*x509.Certificate
	// Peer is the caller's network address, for the record.
	Peer string
}

// Identity is the result of a successful attestation.
type Identity struct {
	// ID is the SPIFFE ID the caller is entitled to.
	ID spiffeid.ID
	// Kind names the credential kind that proved it, e.g. "mtls".
	Kind string
	// Subject says who asked, as this attestor saw it (a certificate serial,
	// a token subject). It is recorded in the issuance log.
	Subject string
	// Details holds extra facts worth recording (pod name and UID, ...).
	Details map[string]string
}

// Attestor proves identities from one kind of credential.
type Attestor interface {
	// Attest returns the identity proven by c. It returns an error wrapping
	// ErrNoCredential when c holds nothing of this attestor's kind, and one
	// wrapping ErrUnauthenticated or ErrPermissionDenied when it refuses.
	Attest(ctx context.Context, c Credential) (Identity, error)
}

var (
	// ErrNoCredential means the credential is not of the attestor's kind.
	ErrNoCredential = errors.New("attestor: no credential")
	// ErrUnauthenticated means the credential was present but not valid
	// (bad signature, expired, unknown token, ...).
	ErrUnauthenticated = errors.New("attestor: unauthenticated")
	// ErrPermissionDenied means the credential is valid but may not be used
	// to obtain a certificate (revoked, denied namespace, ...).
	ErrPermissionDenied = errors.New("attestor: permission denied")
	// ErrUnavailable means the credential could not be checked right now
	// (the API server or the key set is unreachable); retry later.
	ErrUnavailable = errors.New("attestor: unavailable")
)

// refuse wraps kind with a human-readable reason safe to show the caller.
func refuse(kind error, format string, args ...any) error {
	return fmt.Errorf("%w: %s", kind, fmt.Sprintf(format, args...))
}

// Chain tries each attestor in order and returns the first identity proven.
// A refusal from an attestor whose kind of credential was present ends the
// search: a bad credential is never silently replaced by another one.
type Chain []Attestor

// Attest implements Attestor.
func (ch Chain) Attest(ctx context.Context, c Credential) (Identity, error) {
	for _, a := range ch {
		id, err := a.Attest(ctx, c)
		if errors.Is(err, ErrNoCredential) {
			continue
		}
		return id, err
	}
	return Identity{}, refuse(ErrUnauthenticated, "no credential: send a bearer token or a client certificate")
}
