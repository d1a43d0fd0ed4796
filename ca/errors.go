package ca

import "errors"

// Errors the CA returns, wrapped with details safe to show the caller. The
// API edge maps them to status codes with errors.Is; anything else is an
// internal error whose details are logged, not returned.
var (
	// ErrInvalidCSR: the CSR is malformed, badly signed, or asks for
	// something a workload certificate may not have.
	ErrInvalidCSR = errors.New("invalid CSR")
	// ErrInvalidTTL: the requested lifetime is negative or over the maximum.
	ErrInvalidTTL = errors.New("invalid TTL")
	// ErrIdentityMismatch: the CSR asks for an identity other than the one
	// the caller's credential proves.
	ErrIdentityMismatch = errors.New("identity mismatch")
	// ErrInvalidRevocation: a revocation names no valid serial or ID.
	ErrInvalidRevocation = errors.New("invalid revocation")
	// ErrInvalidJoinToken: a join token asked for another trust domain or
	// an impossible lifetime.
	ErrInvalidJoinToken = errors.New("invalid join token request")
	// ErrUnavailable: the CA cannot sign or record right now; retry later.
	ErrUnavailable = errors.New("CA unavailable")
)
