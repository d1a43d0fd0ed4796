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
	// ErrClearKey: a key-encryption key is configured but the store holds
	// a CA key in clear. It may have been planted by whoever can write the
	// data file; if it is the CA's own, from before the KEK, seal the store
	// explicitly (SealStoredKeys, `meshca ca seal`).
	ErrClearKey = errors.New("ca: the data file holds a CA private key in clear although a key-encryption key is configured: whoever can write the data file could have planted it; if these are this CA's own keys from before the KEK was configured, seal them with `meshca ca seal` (server stopped), then start again")
	// ErrRotation: an operator's rotation request does not fit the CA's
	// state (a root rotation in another phase, nothing staged, direct
	// mode); nothing was done.
	ErrRotation = errors.New("rotation refused")
	// ErrUnavailable: the CA cannot sign or record right now; retry later.
	ErrUnavailable = errors.New("CA unavailable")
)
