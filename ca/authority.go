package ca

import (
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshca/meshca/ca/store"
	"github.com/meshca/meshca/internal/clock"
)

// Defaults for Config's zero fields.
const (
	DefaultRootTTL         = 10 * 365 * 24 * time.Hour
	DefaultIntermediateTTL = 7 * 24 * time.Hour
	DefaultLeafTTL         = 24 * time.Hour
	// DefaultMaxLeafTTL stays below half of DefaultIntermediateTTL, so with
	// rotation at half life a leaf is never clamped by its issuer.
	DefaultMaxLeafTTL = 72 * time.Hour
	// DefaultBackdate allows for clock skew between the CA and its peers:
	// a certificate is usable by a peer whose clock is a minute behind.
	DefaultBackdate = time.Minute
	// MinLeafTTL is the shortest lifetime a caller may request: shorter
	// ones would expire before a peer with a skewed clock could use them.
	MinLeafTTL = time.Minute
	// DefaultRetention keeps issuance records 30 days past expiry, long
	// enough to answer "who held this identity last month".
	DefaultRetention = 30 * 24 * time.Hour
	// pruneEvery is how often Run prunes expired issuance records.
	pruneEvery = time.Hour
	// warnEvery is how often Run logs Warnings.
	warnEvery = 24 * time.Hour
)

// startConflictRetries bounds how often New takes another replica's state
// and tries again when its save loses the compare-and-swap (each replica
// writes its own record at start, so several starting together conflict).
const startConflictRetries = 8

// Config configures an Authority. Zero fields get the documented defaults.
type Config struct {
	// TrustDomain of every identity this CA issues. Required.
	TrustDomain spiffeid.TrustDomain
	// Store keeps keys, rotation state and the issuance log. Required.
	Store store.Store
	// Parent signs intermediates. Nil means a self-signed root made on
	// first start and kept in Store: its key sealed there, or in RootKeys.
	Parent Parent
	// RootKeys keeps the self-signed root's key (Vault Transit); nil
	// generates it and keeps it sealed in Store. Only with Parent nil.
	RootKeys RootKeys
	// KeyType of the CA keys meshca generates (root, intermediates, serving
	// certificate). Default ecdsa-p256.
	KeyType KeyType
	// KEK is the key-encryption key for private keys at rest (32 bytes).
	// Without one, keys are stored in clear in the 0600 data file.
	KEK []byte
	// RootTTL is the self-signed root's lifetime. Default 10 years.
	RootTTL time.Duration
	// IntermediateTTL is the signing intermediate's lifetime. It is rotated
	// at half of it, the next one prepared at 40 %. Default 7 days.
	IntermediateTTL time.Duration
	// DefaultTTL is a leaf's lifetime when none is requested. Default 24h.
	DefaultTTL time.Duration
	// MaxTTL is the longest lifetime a caller may request. Default 72h.
	MaxTTL time.Duration
	// Backdate moves NotBefore into the past for clock skew. Default 1m.
	Backdate time.Duration
	// Retention is how long issuance records are kept after the
	// certificate expires. Default 30 days.
	Retention time.Duration
	// NextParent loads the parent staged for a root rotation (an Istio
	// cacerts directory under the new root: StagedCACerts; a Vault key
	// later). It is called when a rotation starts and when it switches.
	// Nil: a root rotation generates a new self-signed root, which needs
	// Parent nil.
	NextParent ParentLoader
	// RootRotationOverlap is the least time a new root is published beside
	// the old one before intermediates switch to it: long enough for every
	// workload to renew once and so receive both roots. Default DefaultTTL
	// (agents renew at about half of a lifetime).
	RootRotationOverlap time.Duration
	// RootRotationCrossSign makes a root rotation certify each
	// intermediate made between its switch and its completion by the old
	// root too, and hand both out, so that clients that trust only the old
	// root still verify leaves under the new one. Only for a root meshca
	// holds (Parent nil). Default off.
	RootRotationCrossSign bool
	// Replica, when set, names this replica among several that share
	// Store: it makes its own intermediates and keeps their keys in memory
	// only (a restart makes a new one), recording the certificates in
	// store.CAState.ReplicaIntermediates. It needs a root no replica holds
	// a key of in the store: Parent (cacerts, Vault PKI) or RootKeys
	// (Vault Transit). Empty: the intermediates are kept, sealed, in
	// Store.
	Replica string
	// Leader says whether this replica leads, and its term (a number that
	// grows with each new leader, such as a Kubernetes Lease's
	// leaderTransitions), when several replicas share Store. Only the
	// leader takes the root rotation's scheduled steps and prunes; its
	// writes are fenced by the term (store.CAState.LeaderFence), so a
	// leader that lost its lease without knowing yet takes none once a
	// newer one has written. Nil: this replica is alone, and leads.
	Leader func() (term uint64, leading bool)
	// JWTSVIDTTL is a JWT-SVID's lifetime when none is requested.
	// Default 5m (DefaultJWTSVIDTTL).
	JWTSVIDTTL time.Duration
	// JWTSVIDMaxTTL is the longest JWT-SVID lifetime a caller may request.
	// Default 1h; at most half of JWTKeyTTL.
	JWTSVIDMaxTTL time.Duration
	// JWTKeyTTL is the JWT signing key's lifetime: the next key is made
	// and published at 40 % of it, signs from 50 %, and the old one stays
	// published until its last token expires. Default IntermediateTTL.
	JWTKeyTTL time.Duration
	// JWTPublishDelay is, with Replica, how long a replica's new JWT
	// signing key is published in the shared state before it signs, when
	// other keys are already published: other replicas read the shared
	// state every 30 s and agents fetch the JWT bundle every minute, so a
	// token never reaches a validator before its key. A replica is
	// therefore unable to sign JWT-SVIDs (Unavailable, and agents try
	// another replica) for this long after it starts. Default 2m
	// (DefaultJWTPublishDelay).
	JWTPublishDelay time.Duration
	// Clock defaults to the wall clock.
	Clock clock.Clock
	// Logger defaults to discarding.
	Logger *slog.Logger
	// Metrics defaults to a no-op.
	Metrics Metrics
}

// Metrics is what the Authority reports. Implementations must be cheap and
// safe for concurrent use.
type Metrics interface {
	// Issued counts one Sign call by credential kind and result ("ok" or
	// the error class) and observes its duration.
	Issued(kind, result string, took time.Duration)
	// SigningCAExpiry reports when the active signing CA stops covering
	// leaves: the intermediate's NotAfter, or in direct mode the earliest
	// NotAfter of the plug-in CA certificate's chain.
	SigningCAExpiry(notAfter time.Time)
	// RotationFailing reports whether the last rotation attempt of Run
	// failed (it is retried): the next intermediate cannot be prepared,
	// e.g. Vault is unreachable. Leaves are still signed until the active
	// intermediate's expiry (SigningCAExpiry).
	RotationFailing(failing bool)
	// JWTSVIDMinted counts one MintJWTSVID call by credential kind and
	// result, as Issued.
	JWTSVIDMinted(kind, result string)
}

type nopMetrics struct{}

func (nopMetrics) Issued(string, string, time.Duration) {}
func (nopMetrics) SigningCAExpiry(time.Time)            {}
func (nopMetrics) RotationFailing(bool)                 {}
func (nopMetrics) JWTSVIDMinted(string, string)         {}

func (c *Config) setDefaults() error {
	if c.TrustDomain.IsZero() {
		return errors.New("ca: trust domain is required")
	}
	if c.Store == nil {
		return errors.New("ca: store is required")
	}
	if c.KeyType == "" {
		c.KeyType = KeyECDSAP256
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&c.RootTTL, DefaultRootTTL)
	def(&c.IntermediateTTL, DefaultIntermediateTTL)
	def(&c.DefaultTTL, DefaultLeafTTL)
	def(&c.MaxTTL, DefaultMaxLeafTTL)
	def(&c.Backdate, DefaultBackdate)
	def(&c.Retention, DefaultRetention)
	def(&c.RootRotationOverlap, c.DefaultTTL)
	def(&c.JWTSVIDTTL, DefaultJWTSVIDTTL)
	def(&c.JWTSVIDMaxTTL, DefaultJWTSVIDMaxTTL)
	def(&c.JWTKeyTTL, c.IntermediateTTL)
	def(&c.JWTPublishDelay, DefaultJWTPublishDelay)
	switch {
	case c.RootTTL < 0, c.IntermediateTTL < 0, c.DefaultTTL < 0, c.MaxTTL < 0, c.Backdate < 0, c.Retention < 0, c.RootRotationOverlap < 0,
		c.JWTSVIDTTL < 0, c.JWTSVIDMaxTTL < 0, c.JWTKeyTTL < 0, c.JWTPublishDelay < 0:
		return errors.New("ca: lifetimes must be positive")
	case c.JWTSVIDTTL > c.JWTSVIDMaxTTL || c.JWTSVIDTTL < MinJWTSVIDTTL:
		return fmt.Errorf("ca: JWT-SVID TTL %s must be between %s and the maximum JWT-SVID TTL %s", c.JWTSVIDTTL, MinJWTSVIDTTL, c.JWTSVIDMaxTTL)
	case c.JWTKeyTTL < 2*c.JWTSVIDMaxTTL:
		// Otherwise a key switched to at half its life could not cover
		// the longest token.
		return fmt.Errorf("ca: JWT key TTL %s must be at least twice the maximum JWT-SVID TTL %s", c.JWTKeyTTL, c.JWTSVIDMaxTTL)
	case c.DefaultTTL > c.MaxTTL:
		return fmt.Errorf("ca: default TTL %s is over the maximum TTL %s", c.DefaultTTL, c.MaxTTL)
	case c.IntermediateTTL < 2*c.DefaultTTL:
		// Otherwise a fresh intermediate could not cover a default leaf
		// past its rotation, and every start would make a new one.
		return fmt.Errorf("ca: intermediate TTL %s must be at least twice the default TTL %s", c.IntermediateTTL, c.DefaultTTL)
	}
	switch {
	case c.NextParent != nil && c.Parent == nil:
		return errors.New("ca: a staged next parent needs a parent (--cacerts-dir, --vault-pki-path): a self-signed root is rotated by making a new one")
	case c.Replica != "" && c.Parent == nil && c.RootKeys == nil:
		return errors.New("ca: replicas sharing a store need a root whose key no replica keeps in it: Vault (--vault-addr) or Istio cacerts (--cacerts-dir)")
	case c.RootKeys != nil && c.Parent != nil:
		return errors.New("ca: a root key manager (Vault Transit) makes a self-signed root: it cannot be combined with a parent CA (--cacerts-dir, Vault PKI)")
	case c.RootRotationCrossSign && c.Parent != nil:
		return errors.New("ca: cross-signing needs the old root's key: only a root meshca holds (self-signed, or its key in Vault Transit) can certify the new intermediates; turn --root-rotation-cross-sign off with a parent CA (--cacerts-dir, Vault PKI)")
	}
	c.Clock = clock.OrReal(c.Clock)
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Metrics == nil {
		c.Metrics = nopMetrics{}
	}
	if c.MaxTTL > c.IntermediateTTL/2 && leafKey(c.Parent) == nil {
		c.Logger.Warn("max TTL is over half the intermediate TTL: leaves requested near a rotation are cut short to their issuer's expiry",
			"max_ttl", c.MaxTTL, "intermediate_ttl", c.IntermediateTTL)
	}
	return nil
}

// Authority issues X509-SVIDs. It keeps a short-lived intermediate, signed
// by its Parent, that it rotates itself (see Rotate), and records every
// certificate it hands out in the Store before returning it. In direct mode
// (a LocalParent that SignsLeaves: Istio's plug-in ca-cert.pem with pathlen
// 0) the parent's own key signs the leaves and there is nothing to rotate.
// Its roots change only through a root rotation (see RotateRoot).
type Authority struct {
	cfg    Config
	sealer *sealer

	// trust is the parent that signs now and the roots trusted, read
	// lock-free; a root rotation replaces it.
	trust atomic.Pointer[trust]
	// active is read lock-free on every Sign; rotation swaps it.
	active atomic.Pointer[signingCA]
	// revoked are the intermediates retired by an emergency rotation.
	revoked atomic.Pointer[revokedCAs]
	// nextPrepared says whether the next intermediate is ready.
	nextPrepared atomic.Bool
	// rootStepAt is when the root rotation next has work (Unix
	// nanoseconds; 0 for none).
	rootStepAt atomic.Int64
	// rotateMu serialises rotations and the operators' requests.
	rotateMu sync.Mutex
	// lastErr is the last failed rotation step, for Status; under
	// rotateMu.
	lastErr atomic.Pointer[string]
	// health remembers a failed store write until the store takes one
	// again (see Ready).
	health storeHealth
	// jwt is the JWT-SVID signing key and bundle in effect, read
	// lock-free on every MintJWTSVID; rotation swaps it.
	jwt atomic.Pointer[jwtSigner]
	// local holds this replica's intermediates (Config.Replica), keys in
	// memory only; under rotateMu.
	local store.CAState
}

// trust is what the Authority trusts and signs under at one point of its
// life: the parent that signs now, and every trusted root.
type trust struct {
	parent Parent
	// direct is set when the parent's key signs leaves (direct mode).
	direct bool
	bundle *x509bundle.Bundle
	// rootsPEM is the bundle as PEM, the last element of every chain
	// handed out (as Istio's CA does: "the root cert is the last
	// element", all of them in one).
	rootsPEM []byte
	// rootsStr is rootsPEM as a string, made once for Sign.
	rootsStr string
	// key identifies what the trust was built from (see trustKey).
	key string
	// changed is closed when this trust is replaced.
	changed chan struct{}
}

// signingCA is an intermediate (or, in direct mode, the parent) ready to
// sign, with the chain to hand out after the leaf precomputed.
type signingCA struct {
	cert *x509.Certificate
	key  crypto.Signer
	// leaf encodes and signs leaves under cert; nil for a key it does not
	// handle, whose leaves x509.CreateCertificate signs.
	leaf *leafSigner
	// notAfter bounds the leaves: cert's NotAfter, or in direct mode the
	// earliest NotAfter of the parent's chain.
	notAfter time.Time
	chainDER [][]byte // cert and the parent chain, up to the anchor, then cross
	chainPEM []string // chainDER as PEM
	// cross is cert certified by the old root of a cross-signing root
	// rotation (see Config.RootRotationCrossSign); nil when none.
	cross *x509.Certificate
	// fastest is the least time, in nanoseconds, a leaf's signature and
	// its check have taken (signLeaf); zero before the first.
	fastest atomic.Int64
}

// New loads the CA's state from cfg.Store (creating the root on first start
// when there is no Parent), resumes a root rotation where it was, and makes
// sure a valid intermediate is active.
func New(ctx context.Context, cfg Config) (*Authority, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	s, err := newSealer(cfg.KEK)
	if err != nil {
		return nil, err
	}
	a := &Authority{cfg: cfg, sealer: s}
	a.revoked.Store(&revokedCAs{})
	err = a.Rotate(ctx)
	for i := 0; i < startConflictRetries && errors.Is(err, store.ErrConflict); i++ {
		// Another replica sharing the store saved first (several started
		// together): take its state and try again.
		err = a.Rotate(ctx)
	}
	if err != nil {
		if a.active.Load() == nil {
			return nil, err
		}
		// Only a step that can wait failed (preparing the next
		// intermediate, a root rotation's switch); Run retries it.
		cfg.Logger.Error("rotation at start-up incomplete", "err", err)
	}
	return a, nil
}

// TrustDomain returns the CA's trust domain.
func (a *Authority) TrustDomain() spiffeid.TrustDomain { return a.cfg.TrustDomain }

// Bundle returns the trust bundle: every root trusted now. During a root
// rotation that is the old and the new root; the value changes as the
// rotation proceeds (each a new Bundle, never modified). Safe for
// concurrent use.
func (a *Authority) Bundle() *x509bundle.Bundle { return a.trust.Load().bundle }

// GetX509BundleForTrustDomain implements x509bundle.Source with Bundle.
func (a *Authority) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	return a.Bundle().GetX509BundleForTrustDomain(td)
}

// RootsPEM returns the trust bundle (Bundle) as concatenated PEM
// certificates. The caller must not modify it.
func (a *Authority) RootsPEM() []byte { return a.trust.Load().rootsPEM }

// RootsChanged returns a channel closed when the trust bundle next changes
// (a root rotation publishing or retiring a root): read RootsPEM again
// then, and call RootsChanged again for the change after.
func (a *Authority) RootsChanged() <-chan struct{} { return a.trust.Load().changed }

// SigningCertificate returns the active intermediate, or in direct mode the
// parent's certificate that signs the leaves.
func (a *Authority) SigningCertificate() *x509.Certificate { return a.active.Load().cert }

func latest(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

func earliest(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}
