// Package store defines the one narrow, transactional interface through which
// meshca's CA keeps its state: CA keys and certificates with their rotation
// state, the issuance log, the revocation deny-list, join tokens, and the
// last good bundle of each trust domain it federates with.
//
// The embedded implementation is boltstore (a single bbolt file); pgstore
// keeps the same state in PostgreSQL, shared by several replicas. The
// interface is kept small and made of single atomic operations so that every
// guarantee it states holds across replicas sharing one backend; nothing
// outside a Store implementation opens its files or tables.
package store

import (
	"context"
	"errors"
	"time"

	"github.com/meshca/meshca/attestor/jointoken"
)

// ErrNotFound is returned when a requested record does not exist.
var ErrNotFound = errors.New("store: not found")

// Errors of ConsumeJoinToken, those of the join token attestor. An unknown
// token's error also matches ErrNotFound.
var (
	ErrJoinTokenUnknown = jointoken.ErrUnknown
	ErrJoinTokenUsed    = jointoken.ErrUsed
	ErrJoinTokenExpired = jointoken.ErrExpired
)

// ErrUnavailable is wrapped by the errors of a store that cannot be reached
// right now (a lost database connection, a server shutting down or out of
// space): the call may succeed if retried later. The API edge maps it to
// Unavailable.
var ErrUnavailable = errors.New("store: unavailable")

// ErrConflict is returned by SaveCAState when the stored state changed since it
// was loaded (its Version no longer matches).
var ErrConflict = errors.New("store: conflicting update")

// SealedKey is a private key at rest: PKCS#8 DER, encrypted when Alg says so.
type SealedKey struct {
	// Alg is "aes-256-gcm" for a key encrypted with the key-encryption key,
	// or "none" for a key stored in clear (protected only by file mode 0600).
	Alg string `json:"alg"`
	// KeyID names the key-encryption key used, so a wrong one is detected.
	KeyID string `json:"kid,omitempty"`
	Nonce []byte `json:"nonce,omitempty"`
	Data  []byte `json:"data"`
}

// CAKey is a CA certificate and its sealed private key.
type CAKey struct {
	CertDER []byte    `json:"cert"`
	Key     SealedKey `json:"key"`
	// CrossCertDER is, for an intermediate made while a cross-signing root
	// rotation is switched, the same intermediate (subject and key)
	// certified by the old root as well; nil otherwise.
	CrossCertDER []byte `json:"cross_cert,omitempty"`
}

// CAState is the CA's key material and rotation state, read and written as a
// whole so a rotation is one atomic update.
type CAState struct {
	// Version is the stored version; SaveCAState succeeds only if it still
	// matches, and increments it. Zero means "nothing stored yet".
	Version uint64 `json:"version"`
	// Root is the self-signed root; nil when the root lives elsewhere
	// (Istio cacerts files, Vault).
	Root *CAKey `json:"root,omitempty"`
	// Active is the intermediate that signs leaves now.
	Active *CAKey `json:"active,omitempty"`
	// Next is the intermediate prepared ahead of the next rotation.
	Next *CAKey `json:"next,omitempty"`
	// RootRotation is the root rotation in progress, or the last one
	// completed; nil when none ever started (or the last was aborted).
	RootRotation *RootRotation `json:"root_rotation,omitempty"`
	// ReplicaIntermediates are, when several replicas share the store, the
	// intermediates each holds: every replica makes its own, whose key
	// never leaves it (Active and Next are then unused). Public records
	// only, kept until they expire.
	ReplicaIntermediates []ReplicaCA `json:"replica_intermediates,omitempty"`
	// LeaderFence is the highest leader term (ca.Config.Leader) that has
	// written this state: a replica whose term is lower lost its lease,
	// perhaps without knowing yet, and takes no scheduled step.
	LeaderFence uint64 `json:"leader_fence,omitempty"`
	// RevokedIntermediates were retired by an emergency rotation:
	// certificates they signed may no longer renew. Each is kept until it
	// expires.
	RevokedIntermediates []RevokedCA `json:"revoked_intermediates,omitempty"`
	// JWTKeys are the JWT-SVID signing keys; nil until the first is made
	// (and always when several replicas share the store).
	JWTKeys *JWTKeys `json:"jwt_keys,omitempty"`
	// ReplicaJWTKeys are, when several replicas share the store, the
	// JWT-SVID signing keys each holds: every replica makes its own, whose
	// private key never leaves it, and the trust domain's JWT bundle is
	// every key recorded here. Public keys only, each kept until its
	// NotAfter.
	ReplicaJWTKeys []ReplicaJWTKey `json:"replica_jwt_keys,omitempty"`
}

// ReplicaJWTKey is a JWT signing key one replica holds (Key empty).
type ReplicaJWTKey struct {
	// Replica names the replica (ca.Config.Replica).
	Replica string `json:"replica"`
	// State is "active", "next" or "retired", as in JWTKeys.
	State string `json:"state"`
	JWTKey
}

// JWTKeys are the trust domain's JWT-SVID signing keys, rotated like the
// intermediates: Next is published in the JWT bundle before it signs, and
// a retired key stays published until the last token it signed expires.
type JWTKeys struct {
	// Active signs JWT-SVIDs now.
	Active *JWTKey `json:"active,omitempty"`
	// Next is prepared (and published) ahead of the next rotation.
	Next *JWTKey `json:"next,omitempty"`
	// Retired signed before; public keys only, each kept until NotAfter.
	Retired []JWTKey `json:"retired,omitempty"`
}

// JWTKey is one JWT-SVID signing key.
type JWTKey struct {
	// ID is the key ID (kid) in the tokens' header and in the bundle.
	ID string `json:"kid"`
	// PublicKeyDER is the public key, PKIX DER.
	PublicKeyDER []byte `json:"public_key"`
	// Key is the sealed private key; empty once the key is retired.
	Key SealedKey `json:"key,omitzero"`
	// NotBefore is when the key was made. NotAfter is when it stops
	// being published: no token it signs outlives it.
	NotBefore time.Time `json:"not_before"`
	NotAfter  time.Time `json:"not_after"`
	// SignsFrom, when set, is the earliest time the key signs: a
	// replica's key made while others serve the trust domain's JWT
	// bundle is published first, so that every replica and agent has it
	// before a token it signed reaches a validator.
	SignsFrom time.Time `json:"signs_from,omitzero"`
}

// Phases of a root rotation (RootRotation.Phase), in order.
const (
	// PhasePrepared: the new root is published beside the old one;
	// intermediates are still signed by the old.
	PhasePrepared = "prepared"
	// PhaseSwitched: intermediates are signed by the new root; the old
	// root stays trusted until no leaf under it can be valid.
	PhaseSwitched = "switched"
	// PhaseCompleted: the old root is no longer trusted.
	PhaseCompleted = "completed"
)

// RootRotation is the persisted state of a root rotation: the roots it
// replaces and publishes, its phase, and the time of each step.
type RootRotation struct {
	// Phase is PhasePrepared, PhaseSwitched or PhaseCompleted.
	Phase string `json:"phase"`
	// OldRoots are the trust anchors trusted when the rotation started,
	// NewRoots those of the parent it switches to (certificate DER). Both
	// are trusted until the rotation completes.
	OldRoots [][]byte `json:"old_roots"`
	NewRoots [][]byte `json:"new_roots"`
	// NewRoot is the new self-signed root with its sealed key, until the
	// switch makes it Root; nil when the new root lives elsewhere (a
	// staged cacerts directory).
	NewRoot *CAKey `json:"new_root,omitempty"`
	// CrossSign says that, from the switch until completion, every
	// intermediate is also certified by the old root, for clients that
	// trust only the old root; OldRoot is that root with its key, kept
	// for it until completion.
	CrossSign bool   `json:"cross_sign,omitempty"`
	OldRoot   *CAKey `json:"old_root,omitempty"`
	// OldSigner is the certificate that signed leaves under the old roots
	// until the switch (the intermediate, or in direct mode the parent);
	// its key is not kept.
	OldSigner []byte `json:"old_signer,omitempty"`
	// PreparedAt is when the new root was published; SwitchAfter the
	// earliest time intermediates switch to it.
	PreparedAt  time.Time `json:"prepared_at"`
	SwitchAfter time.Time `json:"switch_after"`
	// SwitchedAt is when they did.
	SwitchedAt time.Time `json:"switched_at,omitzero"`
	// RetireAfter is when the last leaf chained to the old roots expires
	// (zero until it is known, shortly after the switch); the rotation
	// completes then.
	RetireAfter time.Time `json:"retire_after,omitzero"`
	// CompletedAt is when the old roots stopped being trusted.
	CompletedAt time.Time `json:"completed_at,omitzero"`
}

// ReplicaCA records an intermediate one replica holds (its key is in that
// replica's memory only).
type ReplicaCA struct {
	// Replica names the replica (its host name and a per-start suffix).
	Replica string `json:"replica"`
	// State is "active" (signs leaves) or "next" (prepared).
	State   string `json:"state"`
	CertDER []byte `json:"cert"`
	// Since is when the record was first written.
	Since time.Time `json:"since"`
}

// RevokedCA is an intermediate replaced by an emergency rotation.
type RevokedCA struct {
	CertDER   []byte    `json:"cert"`
	RevokedAt time.Time `json:"revoked_at"`
	Reason    string    `json:"reason,omitempty"`
}

// Issuance is one certificate handed out by the CA.
type Issuance struct {
	// Serial is the certificate serial number in lowercase hex.
	Serial          string    `json:"serial"`
	SPIFFEID        string    `json:"spiffe_id"`
	NotBefore       time.Time `json:"not_before"`
	NotAfter        time.Time `json:"not_after"`
	PublicKeySHA256 string    `json:"public_key_sha256"`
	// CredentialKind is the kind of credential that proved the identity
	// ("mtls", "dev-token", ...).
	CredentialKind string `json:"credential_kind"`
	// Requester says who asked, as the attestor saw it (for mTLS renewal the
	// serial of the presented certificate; for a token its subject).
	Requester string `json:"requester,omitempty"`
	// Peer is the remote network address of the caller.
	Peer     string            `json:"peer,omitempty"`
	IssuedAt time.Time         `json:"issued_at"`
	Details  map[string]string `json:"details,omitempty"`
}

// Revocation denies a certificate by serial, or every certificate of a SPIFFE
// ID whose validity started at or before RevokedAt.
type Revocation struct {
	// Exactly one of Serial and SPIFFEID is set.
	Serial    string    `json:"serial,omitempty"`
	SPIFFEID  string    `json:"spiffe_id,omitempty"`
	RevokedAt time.Time `json:"revoked_at"`
	Reason    string    `json:"reason,omitempty"`
	// ExpiresAt is when the entry stops mattering: after it, no
	// certificate the entry covers can still be valid, so PruneRevocations
	// may delete it. Zero means never pruned (as for entries written by
	// older versions).
	ExpiresAt time.Time `json:"expires_at,omitzero"`
}

// Sources of a FederatedBundle.
const (
	// FederatedFromEndpoint: fetched from the trust domain's SPIFFE bundle
	// endpoint.
	FederatedFromEndpoint = "endpoint"
	// FederatedFromFile: read from a static bundle file.
	FederatedFromFile = "file"
	// FederatedFromBootstrap: the bootstrap bundle file of an https_spiffe
	// endpoint, stored until the first fetch succeeds.
	FederatedFromBootstrap = "bootstrap"
)

// FederatedBundle is the last good trust bundle of a foreign trust domain
// the CA federates with (ca/federation): stored so that a restart, and
// every replica sharing the store, serve it without fetching it again.
type FederatedBundle struct {
	// TrustDomain is the trust domain's name ("example.org").
	TrustDomain string `json:"trust_domain"`
	// Bundle is its SPIFFE bundle document (JSON: the X.509 and JWT
	// authorities, spiffe_sequence and spiffe_refresh_hint).
	Bundle []byte `json:"bundle"`
	// Source is FederatedFromEndpoint, FederatedFromFile or
	// FederatedFromBootstrap.
	Source string `json:"source"`
	// RefreshedAt is when the bundle was last fetched (or read) and
	// found good, changed or not; ChangedAt when its authorities last
	// changed.
	RefreshedAt time.Time `json:"refreshed_at"`
	ChangedAt   time.Time `json:"changed_at"`
}

// JoinToken is a single-use credential bound to one SPIFFE ID; only a hash
// of the token is stored. It is the join token attestor's type.
type JoinToken = jointoken.Token

// IssuedRequest is the answer the CA gave a request that must be answered
// with one certificate at most, however often it is asked and by whichever
// replica (a Kubernetes PodCertificateRequest, by its UID): the chain handed
// out, kept so that a retry after a crash, or another replica, sends that
// certificate again instead of signing a second one. It lives as long as the
// issuance record of its Serial: PruneIssuances deletes both together.
type IssuedRequest struct {
	// Request is the request's key, unique among all requests
	// (CheckIssuedRequest).
	Request string `json:"request"`
	// Serial is the certificate's issuance record.
	Serial string `json:"serial"`
	// ChainPEM is the chain as handed out, leaf first.
	ChainPEM []string `json:"chain"`
}

// IssuanceWithRevocations is an issuance record with the deny-list entries
// that name its serial or its SPIFFE ID, whether or not they cover it: the
// CA, not the store, decides whether the certificate is revoked.
type IssuanceWithRevocations struct {
	Issuance
	// Revocations are the entry for the serial, if any, then those for
	// the SPIFFE ID, oldest first; nil when there are none.
	Revocations []Revocation
}

// IssuanceFilter selects issuance records; zero fields match everything.
type IssuanceFilter struct {
	SPIFFEID string
	// IssuedSince keeps records issued at or after this time.
	IssuedSince time.Time
	// Limit caps the number of records returned (0 = no cap; negative is
	// an error).
	Limit int
}

// Store is the CA's state. Implementations are safe for concurrent use, and
// every write is durable (on stable storage) when it returns. A call whose
// context is already done fails with the context's error and changes
// nothing. Values are stored, not shared: changing a value passed in or
// returned does not change the store.
//
// internal/storetest checks an implementation against this contract.
type Store interface {
	// LoadCAState returns the stored CA state, or ErrNotFound.
	LoadCAState(ctx context.Context) (*CAState, error)
	// SaveCAState stores st if st.Version equals the stored version (0 when
	// nothing is stored) and returns the new version; otherwise ErrConflict.
	SaveCAState(ctx context.Context, st *CAState) (uint64, error)

	// RecordIssuance durably records one issued certificate; a serial
	// already recorded is an error. Concurrent calls are committed
	// together (group commit): one sync for many records.
	RecordIssuance(ctx context.Context, rec Issuance) error
	// Issuance returns the record for a serial, or ErrNotFound.
	Issuance(ctx context.Context, serial string) (*Issuance, error)
	// Issuances lists records matching f, oldest issuance first (equal
	// times in serial order), each with the deny-list entries naming its
	// serial or its SPIFFE ID (as Revocations returns them), all read at
	// one point in time. The store only gathers the entries; whether one
	// revokes the certificate is the CA's rule to apply.
	Issuances(ctx context.Context, f IssuanceFilter) ([]IssuanceWithRevocations, error)
	// PruneIssuances deletes records whose NotAfter is before cutoff, with
	// the IssuedRequest of each, and returns how many records were deleted.
	PruneIssuances(ctx context.Context, cutoff time.Time) (int, error)

	// RecordIssuanceOnce durably records rec, as RecordIssuance does, and
	// req (whose Serial must be rec's) together, in one atomic operation:
	// if req.Request already has an answer, recorded by any process that
	// shares the store, it records neither and returns ErrConflict.
	RecordIssuanceOnce(ctx context.Context, rec Issuance, req IssuedRequest) error
	// IssuedRequest returns the answer recorded for a request key, or
	// ErrNotFound.
	IssuedRequest(ctx context.Context, request string) (*IssuedRequest, error)

	// Revoke adds r to the deny-list: exactly one of r.Serial and
	// r.SPIFFEID set, and r.RevokedAt, or it is an error. Revoking a
	// serial again replaces its entry; a SPIFFE ID has one entry per
	// RevokedAt.
	Revoke(ctx context.Context, r Revocation) error
	// Revocations returns the deny-list entries for a serial or a SPIFFE ID
	// (either may be empty): the entry for serial, if any, then those for
	// spiffeID, oldest first.
	Revocations(ctx context.Context, serial, spiffeID string) ([]Revocation, error)
	// PruneRevocations deletes the entries whose ExpiresAt is set and
	// before cutoff, and returns how many were deleted.
	PruneRevocations(ctx context.Context, cutoff time.Time) (int, error)

	// CreateJoinToken and ConsumeJoinToken keep join tokens as
	// jointoken.Store says; ConsumeJoinToken's error for an unknown token
	// matches both ErrJoinTokenUnknown and ErrNotFound.
	jointoken.Store
	// PruneJoinTokens deletes tokens, used or not, whose ExpiresAt is
	// before cutoff, and returns how many were deleted.
	PruneJoinTokens(ctx context.Context, cutoff time.Time) (int, error)

	// SaveFederatedBundle stores b as its trust domain's bundle,
	// replacing the one stored (checked by CheckFederatedBundle).
	SaveFederatedBundle(ctx context.Context, b FederatedBundle) error
	// FederatedBundles returns every stored federated bundle, in trust
	// domain order; none is not an error.
	FederatedBundles(ctx context.Context) ([]FederatedBundle, error)
	// DeleteFederatedBundle deletes the bundle of a trust domain; deleting
	// one that is not stored is not an error.
	DeleteFederatedBundle(ctx context.Context, trustDomain string) error

	// Ping durably writes a small heartbeat: it succeeds only when the
	// store can record right now (readiness after a failed write: a full
	// disk, a read-only file system, a lost database connection).
	Ping(ctx context.Context) error

	// Close releases the store.
	Close() error
}
