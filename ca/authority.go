package ca

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshca/meshca/attestor"
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
)

// Config configures an Authority. Zero fields get the documented defaults.
type Config struct {
	// TrustDomain of every identity this CA issues. Required.
	TrustDomain spiffeid.TrustDomain
	// Store keeps keys, rotation state and the issuance log. Required.
	Store store.Store
	// Parent signs intermediates. Nil means a self-signed root generated on
	// first start and kept (sealed) in Store.
	Parent Parent
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
	// SigningCAExpiry reports the active intermediate's NotAfter.
	SigningCAExpiry(notAfter time.Time)
}

type nopMetrics struct{}

func (nopMetrics) Issued(string, string, time.Duration) {}
func (nopMetrics) SigningCAExpiry(time.Time)            {}

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
	switch {
	case c.RootTTL < 0, c.IntermediateTTL < 0, c.DefaultTTL < 0, c.MaxTTL < 0, c.Backdate < 0, c.Retention < 0:
		return errors.New("ca: lifetimes must be positive")
	case c.DefaultTTL > c.MaxTTL:
		return fmt.Errorf("ca: default TTL %s is over the maximum TTL %s", c.DefaultTTL, c.MaxTTL)
	case c.IntermediateTTL < 2*c.DefaultTTL:
		// Otherwise a fresh intermediate could not cover a default leaf
		// past its rotation, and every start would make a new one.
		return fmt.Errorf("ca: intermediate TTL %s must be at least twice the default TTL %s", c.IntermediateTTL, c.DefaultTTL)
	}
	c.Clock = clock.OrReal(c.Clock)
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Metrics == nil {
		c.Metrics = nopMetrics{}
	}
	if c.MaxTTL > c.IntermediateTTL/2 {
		c.Logger.Warn("max TTL is over half the intermediate TTL: leaves requested near a rotation are cut short to their issuer's expiry",
			"max_ttl", c.MaxTTL, "intermediate_ttl", c.IntermediateTTL)
	}
	return nil
}

// Authority issues X509-SVIDs. It keeps a short-lived intermediate, signed
// by its Parent, that it rotates itself (see Rotate), and records every
// certificate it hands out in the Store before returning it.
type Authority struct {
	cfg    Config
	sealer *sealer
	parent Parent
	bundle *x509bundle.Bundle

	// active is read lock-free on every Sign; rotation swaps it.
	active atomic.Pointer[signingCA]
	// nextPrepared says whether the next intermediate is ready.
	nextPrepared atomic.Bool
	// rotateMu serialises rotations.
	rotateMu sync.Mutex
}

// signingCA is an intermediate ready to sign, with the chain to hand out
// after the leaf precomputed.
type signingCA struct {
	cert     *x509.Certificate
	key      crypto.Signer
	chainPEM []string // intermediate, parent chain..., anchor
}

// New loads the CA's state from cfg.Store (creating the root on first start
// when there is no Parent) and makes sure a valid intermediate is active.
func New(ctx context.Context, cfg Config) (*Authority, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	s, err := newSealer(cfg.KEK)
	if err != nil {
		return nil, err
	}
	a := &Authority{cfg: cfg, sealer: s, parent: cfg.Parent}
	if a.parent == nil {
		if a.parent, err = a.loadOrCreateRoot(ctx); err != nil {
			return nil, err
		}
	}
	a.bundle = x509bundle.FromX509Authorities(cfg.TrustDomain, a.parent.Roots())
	if err := a.Rotate(ctx); err != nil {
		if a.active.Load() == nil {
			return nil, err
		}
		// Only preparing the next intermediate failed; Run retries it.
		cfg.Logger.Error("rotation at start-up incomplete", "err", err)
	}
	return a, nil
}

// loadOrCreateRoot returns the self-signed root kept in the store, creating
// and storing one if there is none yet.
func (a *Authority) loadOrCreateRoot(ctx context.Context) (Parent, error) {
	st, err := a.cfg.Store.LoadCAState(ctx)
	switch {
	case errors.Is(err, store.ErrNotFound):
		st = &store.CAState{}
	case err != nil:
		return nil, fmt.Errorf("ca: load CA state: %w", err)
	}
	now := a.cfg.Clock.Now()
	if st.Root != nil {
		cert, key, err := a.openCAKey(st.Root)
		if err != nil {
			return nil, fmt.Errorf("ca: root: %w", err)
		}
		if a.sealer.aead != nil && st.Root.Key.Alg == sealNone {
			// A KEK was configured after the root was stored in clear:
			// seal it now rather than leave it in clear for ever.
			if st.Root.Key, err = a.sealer.seal(key); err != nil {
				return nil, err
			}
			if _, err := a.cfg.Store.SaveCAState(ctx, st); err != nil {
				return nil, fmt.Errorf("ca: save re-sealed root: %w", err)
			}
			a.cfg.Logger.Info("sealed the stored root key with the key-encryption key")
		}
		return NewLocalParent(cert, key, nil, []*x509.Certificate{cert}, now)
	}
	key, err := generateKey(a.cfg.KeyType)
	if err != nil {
		return nil, err
	}
	tmpl, err := caTemplate(a.cfg.TrustDomain, "meshca root "+a.cfg.TrustDomain.Name(), key.Public(), now.Add(-a.cfg.Backdate), now.Add(a.cfg.RootTTL), 1)
	if err != nil {
		return nil, err
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("ca: create root: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	sealed, err := a.sealer.seal(key)
	if err != nil {
		return nil, err
	}
	st.Root = &store.CAKey{CertDER: der, Key: sealed}
	if _, err := a.cfg.Store.SaveCAState(ctx, st); err != nil {
		return nil, fmt.Errorf("ca: save new root: %w", err)
	}
	a.cfg.Logger.Info("created self-signed root", "trust_domain", a.cfg.TrustDomain.Name(),
		"serial", cert.SerialNumber.Text(16), "not_after", cert.NotAfter)
	return NewLocalParent(cert, key, nil, []*x509.Certificate{cert}, now)
}

func (a *Authority) openCAKey(k *store.CAKey) (*x509.Certificate, crypto.Signer, error) {
	cert, err := x509.ParseCertificate(k.CertDER)
	if err != nil {
		return nil, nil, fmt.Errorf("ca: parse stored certificate: %w", err)
	}
	key, err := a.sealer.open(k.Key, cert.PublicKey)
	if err != nil {
		return nil, nil, err
	}
	return cert, key, nil
}

// PrepareTime is when the next intermediate is prepared: at 40 % of the
// active one's lifetime, so a parent that is briefly unavailable (Vault
// down) does not delay the rotation.
func PrepareTime(c *x509.Certificate) time.Time { return lifeFraction(c, 0.4) }

// ActivateTime is when the next intermediate takes over: at half the active
// one's lifetime, so every leaf it signed (at most MaxTTL, which defaults
// to under half its lifetime) expires before it does.
func ActivateTime(c *x509.Certificate) time.Time { return lifeFraction(c, 0.5) }

func lifeFraction(c *x509.Certificate, f float64) time.Time {
	life := c.NotAfter.Sub(c.NotBefore)
	return c.NotBefore.Add(time.Duration(float64(life) * f))
}

// Rotate brings the intermediates up to date at the current time: it makes
// an active one if there is none usable, prepares the next one when due,
// and switches to it when due. State changes are saved atomically before
// they take effect. It is safe to call at any time.
func (a *Authority) Rotate(ctx context.Context) error {
	a.rotateMu.Lock()
	defer a.rotateMu.Unlock()

	st, err := a.cfg.Store.LoadCAState(ctx)
	switch {
	case errors.Is(err, store.ErrNotFound):
		st = &store.CAState{}
	case err != nil:
		return fmt.Errorf("ca: load CA state: %w", err)
	}
	now := a.cfg.Clock.Now()
	usable := func(k *store.CAKey) (*signingCA, bool) {
		if k == nil {
			return nil, false
		}
		s, err := a.signingCAFrom(k)
		if err != nil {
			a.cfg.Logger.Warn("discarding stored intermediate", "err", err)
			return nil, false
		}
		// An intermediate is of no use once it cannot cover a default leaf.
		return s, now.Before(s.cert.NotAfter.Add(-a.cfg.DefaultTTL))
	}
	active, ok := usable(st.Active)
	changed := false
	if !ok {
		if active, err = a.newIntermediate(ctx, now); err != nil {
			return err
		}
		st.Next = nil
		changed = true
	}
	next, ok := usable(st.Next)
	if st.Next != nil && !ok {
		st.Next, next, changed = nil, nil, true
	}
	var prepareErr error
	if next == nil && !now.Before(PrepareTime(active.cert)) {
		if next, prepareErr = a.newIntermediate(ctx, now); prepareErr == nil {
			if st.Next, err = a.sealed(next); err != nil {
				return err
			}
			changed = true
		}
	}
	if next != nil && !now.Before(ActivateTime(active.cert)) {
		active, next = next, nil
		st.Active, st.Next, changed = st.Next, nil, true
	}
	// Store the active one if it is new, or re-seal it if a KEK was
	// configured after it was stored in clear.
	if st.Active == nil || !bytes.Equal(st.Active.CertDER, active.cert.Raw) ||
		(a.sealer.aead != nil && st.Active.Key.Alg == sealNone) {
		if st.Active, err = a.sealed(active); err != nil {
			return err
		}
		changed = true
	}
	if st.Next != nil && a.sealer.aead != nil && st.Next.Key.Alg == sealNone && next != nil {
		if st.Next, err = a.sealed(next); err != nil {
			return err
		}
		changed = true
	}
	if changed {
		if _, err := a.cfg.Store.SaveCAState(ctx, st); err != nil {
			return fmt.Errorf("ca: save CA state: %w", err)
		}
		a.cfg.Logger.Info("intermediate state updated", "active_serial", active.cert.SerialNumber.Text(16),
			"active_not_after", active.cert.NotAfter, "next_prepared", st.Next != nil)
	}
	if cur := a.active.Load(); cur == nil || !cur.cert.Equal(active.cert) {
		a.active.Store(active)
		a.cfg.Metrics.SigningCAExpiry(active.cert.NotAfter)
	}
	a.nextPrepared.Store(next != nil)
	if prepareErr != nil {
		// The active intermediate still works; the caller retries later.
		return fmt.Errorf("ca: preparing the next intermediate: %w", prepareErr)
	}
	return nil
}

// NextRotation returns when Rotate next has work to do.
func (a *Authority) NextRotation() time.Time {
	s := a.active.Load()
	if s == nil {
		return a.cfg.Clock.Now()
	}
	if a.nextPrepared.Load() {
		return ActivateTime(s.cert)
	}
	return PrepareTime(s.cert)
}

// Run calls Rotate whenever it is due, and Prune hourly, until ctx ends. A
// failed rotation is retried after a minute.
func (a *Authority) Run(ctx context.Context) error {
	var lastPrune time.Time
	for {
		if now := a.cfg.Clock.Now(); now.Sub(lastPrune) >= pruneEvery {
			if n, err := a.Prune(ctx); err != nil {
				a.cfg.Logger.Error("pruning issuance records failed", "err", err)
			} else if n > 0 {
				a.cfg.Logger.Info("pruned expired issuance records", "count", n)
			}
			lastPrune = now
		}
		wait := a.NextRotation().Sub(a.cfg.Clock.Now())
		wait = max(wait, time.Second)
		wait = min(wait, pruneEvery) // re-check and prune regularly anyway
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-a.cfg.Clock.After(wait):
		}
		if err := a.Rotate(ctx); err != nil {
			a.cfg.Logger.Error("rotation failed", "err", err)
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-a.cfg.Clock.After(time.Minute):
			}
		}
	}
}

// Prune deletes issuance records of certificates expired for longer than
// Config.Retention and returns how many went.
func (a *Authority) Prune(ctx context.Context) (int, error) {
	return a.cfg.Store.PruneIssuances(ctx, a.cfg.Clock.Now().Add(-a.cfg.Retention))
}

// newIntermediate makes a fresh intermediate signed by the parent.
func (a *Authority) newIntermediate(ctx context.Context, now time.Time) (*signingCA, error) {
	key, err := generateKey(a.cfg.KeyType)
	if err != nil {
		return nil, err
	}
	tmpl, err := caTemplate(a.cfg.TrustDomain, "meshca intermediate "+a.cfg.TrustDomain.Name(), key.Public(),
		now.Add(-a.cfg.Backdate), now.Add(a.cfg.IntermediateTTL), 0)
	if err != nil {
		return nil, err
	}
	if pnb := a.parent.Certificate().NotBefore; tmpl.NotBefore.Before(pnb) {
		tmpl.NotBefore = pnb
	}
	cert, err := a.parent.SignIntermediate(ctx, tmpl, key.Public())
	if err != nil {
		return nil, fmt.Errorf("ca: %w: %v", ErrUnavailable, err)
	}
	if err := a.verifyIntermediate(cert); err != nil {
		return nil, fmt.Errorf("ca: new intermediate: %w", err)
	}
	a.cfg.Logger.Info("new intermediate", "serial", cert.SerialNumber.Text(16), "not_after", cert.NotAfter)
	return a.newSigningCA(cert, key), nil
}

func (a *Authority) newSigningCA(cert *x509.Certificate, key crypto.Signer) *signingCA {
	chain := []string{string(certPEM(cert))}
	for _, c := range a.parent.Chain() {
		chain = append(chain, string(certPEM(c)))
	}
	chain = append(chain, string(certPEM(a.parent.Anchor())))
	return &signingCA{cert: cert, key: key, chainPEM: chain}
}

// signingCAFrom opens a stored intermediate and checks it still belongs to
// the current parent (the parent may have been replaced).
func (a *Authority) signingCAFrom(k *store.CAKey) (*signingCA, error) {
	cert, key, err := a.openCAKey(k)
	if err != nil {
		return nil, err
	}
	if err := a.verifyIntermediate(cert); err != nil {
		return nil, fmt.Errorf("ca: stored intermediate %s: %w", cert.SerialNumber.Text(16), err)
	}
	return a.newSigningCA(cert, key), nil
}

// verifyIntermediate checks that an intermediate chains through the current
// parent to a root now, path length constraints and validity included, so
// leaves signed by it will verify. It runs once per rotation or start.
func (a *Authority) verifyIntermediate(cert *x509.Certificate) error {
	if err := cert.CheckSignatureFrom(a.parent.Certificate()); err != nil {
		return errors.New("not signed by the current parent")
	}
	roots, inters := x509.NewCertPool(), x509.NewCertPool()
	for _, r := range a.parent.Roots() {
		roots.AddCert(r)
	}
	inters.AddCert(a.parent.Certificate())
	for _, c := range a.parent.Chain() {
		inters.AddCert(c)
	}
	_, err := cert.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inters, CurrentTime: a.cfg.Clock.Now(),
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	if err != nil {
		return fmt.Errorf("does not chain to the root: %w", err)
	}
	return nil
}

func (a *Authority) sealed(s *signingCA) (*store.CAKey, error) {
	sealed, err := a.sealer.seal(s.key)
	if err != nil {
		return nil, err
	}
	return &store.CAKey{CertDER: s.cert.Raw, Key: sealed}, nil
}

// SignRequest asks for one X509-SVID.
type SignRequest struct {
	// CSR is the PEM certificate signing request.
	CSR []byte
	// TTL is the requested lifetime; zero means Config.DefaultTTL.
	TTL time.Duration
	// Identity is what the caller's credential proved.
	Identity attestor.Identity
	// Peer is the caller's network address, for the record.
	Peer string
}

// Issued is a certificate handed out.
type Issued struct {
	// DER is the leaf certificate.
	DER []byte
	// ChainPEM is the leaf, its intermediates, and the root, one PEM
	// certificate each, in that order (as Istio's CA clients expect).
	ChainPEM []string
	Record   store.Issuance
}

// Certificate parses the leaf. Sign itself never needs to (see
// ValidateLeaf), so the cost is paid only by callers who want it.
func (i *Issued) Certificate() (*x509.Certificate, error) { return x509.ParseCertificate(i.DER) }

// Sign turns a CSR into an X509-SVID for req.Identity: it checks the
// lifetime and the CSR, signs a leaf from a fresh template with the active
// intermediate, re-checks it with ValidateLeaf, and records it durably.
func (a *Authority) Sign(ctx context.Context, req SignRequest) (*Issued, error) {
	start := a.cfg.Clock.Now()
	iss, err := a.sign(ctx, req, start)
	result := "ok"
	switch {
	case err == nil:
	case errors.Is(err, ErrInvalidCSR), errors.Is(err, ErrInvalidTTL):
		result = "invalid"
	case errors.Is(err, ErrIdentityMismatch):
		result = "denied"
	case errors.Is(err, ErrUnavailable):
		result = "unavailable"
	default:
		result = "error"
	}
	a.cfg.Metrics.Issued(req.Identity.Kind, result, a.cfg.Clock.Now().Sub(start))
	return iss, err
}

func (a *Authority) sign(ctx context.Context, req SignRequest, now time.Time) (*Issued, error) {
	ttl := req.TTL
	switch {
	case ttl < 0:
		return nil, fmt.Errorf("%w: %s is negative", ErrInvalidTTL, ttl)
	case ttl == 0:
		ttl = a.cfg.DefaultTTL
	case ttl > a.cfg.MaxTTL:
		return nil, fmt.Errorf("%w: requested %s is over the maximum %s", ErrInvalidTTL, ttl, a.cfg.MaxTTL)
	case ttl < MinLeafTTL:
		return nil, fmt.Errorf("%w: requested %s is under the minimum %s", ErrInvalidTTL, ttl, MinLeafTTL)
	}
	if req.Identity.ID.TrustDomain() != a.cfg.TrustDomain {
		return nil, fmt.Errorf("%w: identity %s is not in trust domain %s", ErrIdentityMismatch, req.Identity.ID, a.cfg.TrustDomain.Name())
	}
	csr, err := ParseCSR(req.CSR)
	if err != nil {
		return nil, err
	}
	if err := CheckCSR(csr, req.Identity.ID); err != nil {
		return nil, err
	}
	s := a.active.Load()
	// Certificates carry whole seconds; truncate so the record matches.
	notBefore := latest(now.Add(-a.cfg.Backdate), s.cert.NotBefore).Truncate(time.Second)
	notAfter := earliest(now.Add(ttl), s.cert.NotAfter).Truncate(time.Second) // never outlive the issuer
	if !now.Before(notAfter) {
		return nil, fmt.Errorf("%w: signing intermediate has expired", ErrUnavailable)
	}
	tmpl, err := leafTemplate(req.Identity.ID, csr.PublicKey, csr.RawSubjectPublicKeyInfo, notBefore, notAfter)
	if err != nil {
		return nil, err
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, s.cert, csr.PublicKey, s.key)
	if err != nil {
		return nil, fmt.Errorf("ca: sign leaf: %w", err)
	}
	if err := ValidateLeaf(der, s.cert, req.Identity.ID, csr.RawSubjectPublicKeyInfo, now); err != nil {
		a.cfg.Logger.Error("issued certificate refused by the validator", "spiffe_id", req.Identity.ID.String(), "err", err)
		return nil, err
	}
	spkiSum := sha256.Sum256(csr.RawSubjectPublicKeyInfo)
	rec := store.Issuance{
		Serial:          tmpl.SerialNumber.Text(16),
		SPIFFEID:        req.Identity.ID.String(),
		NotBefore:       notBefore,
		NotAfter:        notAfter,
		PublicKeySHA256: hex.EncodeToString(spkiSum[:]),
		CredentialKind:  req.Identity.Kind,
		Requester:       req.Identity.Subject,
		Peer:            req.Peer,
		IssuedAt:        now,
		Details:         req.Identity.Details,
	}
	if err := a.cfg.Store.RecordIssuance(ctx, rec); err != nil {
		return nil, fmt.Errorf("%w: recording the issuance failed: %w", ErrUnavailable, err)
	}
	chain := make([]string, 0, len(s.chainPEM)+1)
	chain = append(chain, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})))
	chain = append(chain, s.chainPEM...)
	a.cfg.Logger.Debug("issued", "spiffe_id", rec.SPIFFEID, "serial", rec.Serial, "kind", rec.CredentialKind, "not_after", rec.NotAfter)
	return &Issued{DER: der, ChainPEM: chain, Record: rec}, nil
}

// TrustDomain returns the CA's trust domain.
func (a *Authority) TrustDomain() spiffeid.TrustDomain { return a.cfg.TrustDomain }

// Bundle returns the trust bundle: the root certificates.
func (a *Authority) Bundle() *x509bundle.Bundle { return a.bundle }

// GetX509BundleForTrustDomain implements x509bundle.Source.
func (a *Authority) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	return a.bundle.GetX509BundleForTrustDomain(td)
}

// RootsPEM returns the trust bundle as concatenated PEM certificates.
func (a *Authority) RootsPEM() []byte {
	var out []byte
	for _, r := range a.bundle.X509Authorities() {
		out = append(out, certPEM(r)...)
	}
	return out
}

// SigningCertificate returns the active intermediate.
func (a *Authority) SigningCertificate() *x509.Certificate { return a.active.Load().cert }

// IssueServing issues a TLS server certificate for the CA's own endpoints,
// with the given DNS and IP SANs, signed by the active intermediate. It is
// not an SVID and is not recorded in the issuance log.
func (a *Authority) IssueServing(dnsNames []string, ips []net.IP, ttl time.Duration) (*tls.Certificate, error) {
	key, err := generateKey(a.cfg.KeyType)
	if err != nil {
		return nil, err
	}
	s := a.active.Load()
	now := a.cfg.Clock.Now()
	notBefore := latest(now.Add(-a.cfg.Backdate), s.cert.NotBefore)
	notAfter := earliest(now.Add(ttl), s.cert.NotAfter)
	tmpl, err := servingTemplate(dnsNames, ips, key.Public(), notBefore, notAfter)
	if err != nil {
		return nil, err
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, s.cert, key.Public(), s.key)
	if err != nil {
		return nil, fmt.Errorf("ca: sign serving certificate: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	chain := [][]byte{der, s.cert.Raw}
	for _, c := range a.parent.Chain() {
		chain = append(chain, c.Raw)
	}
	return &tls.Certificate{Certificate: chain, PrivateKey: key, Leaf: leaf}, nil
}

// CheckRevoked implements attestor.RevocationChecker: a certificate is
// revoked when its serial is on the deny-list, or its SPIFFE ID is and the
// certificate was issued at or before that revocation. Revoking a serial
// does not revoke certificates already renewed from it: to cut off a stolen
// key that may have renewed, revoke the SPIFFE ID.
func (a *Authority) CheckRevoked(ctx context.Context, cert *x509.Certificate, id spiffeid.ID) error {
	serial := cert.SerialNumber.Text(16)
	revs, err := a.cfg.Store.Revocations(ctx, serial, id.String())
	if err != nil {
		return err
	}
	for _, r := range revs {
		// NotBefore was backdated for clock skew: the certificate was
		// issued Backdate after it.
		issued := cert.NotBefore.Add(a.cfg.Backdate)
		if r.Serial == serial || (r.SPIFFEID == id.String() && !issued.After(r.RevokedAt)) {
			return fmt.Errorf("%w: %s", attestor.ErrRevoked, r.Reason)
		}
	}
	return nil
}

// Revoke puts a serial (hex, any case, leading zeros allowed) or a SPIFFE ID
// on the deny-list, in canonical form so that it matches.
func (a *Authority) Revoke(ctx context.Context, r store.Revocation) error {
	if r.Serial != "" {
		n, ok := new(big.Int).SetString(strings.TrimPrefix(strings.ToLower(strings.ReplaceAll(r.Serial, ":", "")), "0x"), 16)
		if !ok || n.Sign() <= 0 {
			return fmt.Errorf("ca: %w: serial %q is not a positive hex number", ErrInvalidRevocation, r.Serial)
		}
		r.Serial = n.Text(16)
	}
	if r.SPIFFEID != "" {
		id, err := spiffeid.FromString(r.SPIFFEID)
		if err != nil {
			return fmt.Errorf("ca: %w: %v", ErrInvalidRevocation, err)
		}
		r.SPIFFEID = id.String()
	}
	if r.RevokedAt.IsZero() {
		r.RevokedAt = a.cfg.Clock.Now()
	}
	return a.cfg.Store.Revoke(ctx, r)
}

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
