package sds

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/meshca/meshca/ca/client"
	"github.com/meshca/meshca/internal/clock"
	"github.com/meshca/meshca/internal/pki"
)

// Defaults for Config's zero fields.
const (
	DefaultRenewFraction  = 0.5
	DefaultJitter         = 0.1
	DefaultBackoffMin     = time.Second
	DefaultBackoffMax     = 5 * time.Minute
	DefaultRequestTimeout = 30 * time.Second
	// backoffJitter spreads every retry wait over ±20 %, so agents that lost
	// the CA together do not come back together.
	backoffJitter = 0.2
	// retryHintJitter is the most added to a wait the CA asked for (and
	// at most half of it).
	retryHintJitter = time.Second
	// maxChainLen bounds the certificates accepted in one CA response; a
	// real chain is leaf, one or two intermediates, root.
	maxChainLen = 16
)

// CSRSigner is the CA as the Manager sees it. *client.Client implements it.
type CSRSigner interface {
	// Sign sends a PEM CSR and returns the chain, leaf first and root last,
	// one PEM certificate each. token, if not empty, is sent as a bearer
	// token; ttl 0 asks for the CA's default lifetime.
	Sign(ctx context.Context, csrPEM []byte, ttl time.Duration, token string) ([]string, error)
}

// Metrics is what the Manager reports. Implementations must be cheap and
// safe for concurrent use.
type Metrics interface {
	// Renewed counts one request to the CA and whether it produced an SVID.
	Renewed(ok bool)
	// Expiry reports the current SVID's NotAfter, on every change; the time
	// to expiry is NotAfter minus now.
	Expiry(notAfter time.Time)
}

type nopMetrics struct{}

func (nopMetrics) Renewed(bool)     {}
func (nopMetrics) Expiry(time.Time) {}

// Config configures a Manager. Zero fields get the documented defaults.
type Config struct {
	// ID is the workload's SPIFFE ID. Required.
	ID spiffeid.ID
	// CA signs the CSRs. Required.
	CA CSRSigner
	// Token returns the credential sent with a request that is not
	// authenticated by the current SVID: a projected ServiceAccount token
	// or a join token. It is called afresh for every such request, because
	// kubelet rotates projected tokens: read the file each time. Nil sends
	// no token.
	Token func(ctx context.Context) (string, error)
	// RenewWithSVID renews over mTLS while the current SVID is valid: the
	// request carries no token, and the CA authenticates the client
	// certificate. The caller configures the CA client with
	// ClientCertificate = ClientCertificate(Publish, Clock). After a failed mTLS
	// renewal the next attempt uses Token, if set, in case the CA no longer
	// accepts the SVID (its root changed, its serial was revoked).
	RenewWithSVID bool
	// KeyType of the workload key: "ecdsa-p256" (default), "ecdsa-p384",
	// "rsa-2048", "rsa-3072" or "rsa-4096".
	KeyType string
	// ReuseKey keeps the first key for every renewal. By default each
	// renewal makes a new key, so a key that leaked stops being useful
	// within one lifetime.
	ReuseKey bool
	// TTL is the lifetime asked for. Zero asks for the CA's default.
	TTL time.Duration
	// RenewFraction is how far into its lifetime an SVID is renewed. The
	// lifetime counts from when the SVID arrived, not from its NotBefore,
	// which the CA backdates for clock skew. Default 0.5, which leaves half
	// the lifetime to ride out a CA outage.
	RenewFraction float64
	// Jitter spreads the renewal time uniformly over ±Jitter×lifetime
	// around RenewFraction×lifetime, so a fleet started together does not
	// renew together. Default 0.1; negative means none.
	// RenewFraction±Jitter must stay within (0, 1).
	Jitter float64
	// Rand returns a uniform number in [0, 1) for the jitter of renewal
	// times and retry waits; it is called only from Run. Default
	// math/rand/v2's Float64.
	Rand func() float64
	// BackoffMin is the wait after the first failed request; it doubles
	// after each further failure up to BackoffMax, with ±20 % jitter.
	// Defaults 1s and 5m. BackoffMin is also the shortest time between two
	// successful requests, whatever lifetime the CA returns.
	BackoffMin time.Duration
	BackoffMax time.Duration
	// RequestTimeout bounds one request to the CA, token read included.
	// It is a network deadline, so it runs on the wall clock. Default 30s.
	RequestTimeout time.Duration
	// Roots is the trust bundle, for example from a mounted ConfigMap: the
	// CA's chains must end at one of these roots, and all of them are
	// served. Empty means trusting the CA's root on first use.
	Roots []*x509.Certificate
	// LoadRoots, when set, re-reads the trust bundle before every request;
	// its roots replace Roots while it succeeds.
	LoadRoots func() ([]*x509.Certificate, error)
	// Publish receives every SVID the Manager obtains; Current and
	// Subscribe read it. Default a new StaticSource. Giving one lets the CA
	// client that renews over mTLS be built before the Manager, with
	// ClientCertificate(Publish, clock) as its client certificate.
	Publish *StaticSource
	// Clock drives renewal and retry waits. Default the wall clock.
	Clock clock.Clock
	// Logger defaults to discarding.
	Logger *slog.Logger
	// Metrics defaults to a no-op.
	Metrics Metrics
}

func (c *Config) setDefaults() error {
	if c.ID.IsZero() {
		return errors.New("sds: SPIFFE ID is required")
	}
	if c.CA == nil {
		return errors.New("sds: CA is required")
	}
	kt, err := pki.ParseKeyType(c.KeyType)
	if err != nil {
		return fmt.Errorf("sds: %w", err)
	}
	c.KeyType = string(kt)
	if c.RenewFraction == 0 {
		c.RenewFraction = DefaultRenewFraction
	}
	switch {
	case c.Jitter == 0:
		c.Jitter = DefaultJitter
	case c.Jitter < 0:
		c.Jitter = 0
	}
	if c.Rand == nil {
		c.Rand = rand.Float64
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&c.BackoffMin, DefaultBackoffMin)
	def(&c.BackoffMax, DefaultBackoffMax)
	def(&c.RequestTimeout, DefaultRequestTimeout)
	switch {
	case c.TTL < 0, c.BackoffMin < 0, c.BackoffMax < 0, c.RequestTimeout < 0:
		return errors.New("sds: durations must be positive")
	case c.BackoffMin > c.BackoffMax:
		return fmt.Errorf("sds: minimum backoff %s is over the maximum %s", c.BackoffMin, c.BackoffMax)
	case !(c.RenewFraction > 0 && c.RenewFraction < 1):
		return fmt.Errorf("sds: renew fraction %g is not between 0 and 1", c.RenewFraction)
	case c.RenewFraction-c.Jitter <= 0 || c.RenewFraction+c.Jitter >= 1:
		// Renewing at NotBefore would renew at once; at NotAfter, too late.
		return fmt.Errorf("sds: renew fraction %g ± jitter %g leaves (0, 1)", c.RenewFraction, c.Jitter)
	}
	c.Roots = slices.Clone(c.Roots)
	if c.Publish == nil {
		c.Publish = NewStaticSource(nil)
	}
	c.Clock = clock.OrReal(c.Clock)
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Metrics == nil {
		c.Metrics = nopMetrics{}
	}
	return nil
}

// Manager keeps a workload's X509-SVID fresh: Run obtains it from the CA
// and renews it; Current and Subscribe serve it (Manager is a Source).
type Manager struct {
	cfg     Config
	src     *StaticSource
	running atomic.Bool

	// pubMu serialises publishing: Run's new SVIDs and SetFederated's
	// bundles. federated are the bundles served with every SVID.
	pubMu     sync.Mutex
	federated map[spiffeid.TrustDomain]*spiffebundle.Bundle
}

var _ Source = (*Manager)(nil)

// NewManager checks cfg and applies its defaults. Nothing is requested
// until Run.
func NewManager(cfg Config) (*Manager, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	return &Manager{cfg: cfg, src: cfg.Publish}, nil
}

// Current implements Source: the latest SVID, or nil before the first. An
// SVID stays current until a new one replaces it, even past its expiry.
func (m *Manager) Current() *SVID { return m.src.Current() }

// Subscribe implements Source.
func (m *Manager) Subscribe() (<-chan struct{}, func()) { return m.src.Subscribe() }

// Roots returns the trust bundle: the one served with the latest SVID (the
// configured roots and those the CA announced with it), or Config.Roots
// before the first.
func (m *Manager) Roots() []*x509.Certificate {
	if cur := m.Current(); cur != nil {
		return cur.Roots
	}
	return m.cfg.Roots
}

// Ready is the /readyz check: an error until the first SVID, and once the
// current SVID has expired at now.
func (m *Manager) Ready(now time.Time) error {
	cur := m.Current()
	switch {
	case cur == nil:
		return errors.New("sds: no SVID yet")
	case !now.Before(cur.NotAfter()):
		return fmt.Errorf("sds: SVID expired at %s", cur.NotAfter().UTC().Format(time.RFC3339))
	}
	return nil
}

// TLSCertificate returns the current SVID as a tls.Certificate (leaf and
// intermediates, with its key), or an error before the first.
func (m *Manager) TLSCertificate() (*tls.Certificate, error) {
	cur := m.Current()
	if cur == nil {
		return nil, errors.New("sds: no SVID yet")
	}
	return tlsCertificate(cur), nil
}

// ClientCertificate is the hook for the CA client's
// client.Config.ClientCertificate: the current SVID while it is valid.
func (m *Manager) ClientCertificate() (*tls.Certificate, error) {
	return ClientCertificate(m.src, m.cfg.Clock)()
}

// ClientCertificate returns a client.Config.ClientCertificate hook that
// presents src's current SVID while it is valid, and otherwise an empty
// certificate, so that the handshake goes on without one and a
// token-authenticated request can still get the first SVID or replace an
// expired one. (An error from this hook would fail the TLS handshake, and
// with it every request.)
func ClientCertificate(src Source, clk clock.Clock) func() (*tls.Certificate, error) {
	clk = clock.OrReal(clk)
	return func() (*tls.Certificate, error) {
		cur := src.Current()
		if cur == nil || !validAt(cur, clk.Now()) {
			return &tls.Certificate{}, nil
		}
		return tlsCertificate(cur), nil
	}
}

func tlsCertificate(s *SVID) *tls.Certificate {
	chain := make([][]byte, len(s.Certificates))
	for i, c := range s.Certificates {
		chain[i] = c.Raw
	}
	return &tls.Certificate{Certificate: chain, PrivateKey: s.Key, Leaf: s.Certificates[0]}
}

func validAt(s *SVID, now time.Time) bool {
	leaf := s.Certificates[0]
	return !now.Before(leaf.NotBefore) && now.Before(leaf.NotAfter)
}

// Run obtains the first SVID and renews it until ctx ends, then returns
// ctx.Err(). A failed request is logged, counted and retried after
// Backoff; the current SVID stays in place meanwhile. Only one Run may be
// active at a time.
func (m *Manager) Run(ctx context.Context) error {
	if !m.running.CompareAndSwap(false, true) {
		return errors.New("sds: Manager.Run is already running")
	}
	defer m.running.Store(false)

	var (
		wait       time.Duration // before the next request
		failures   int           // consecutive failed requests
		mtlsFailed bool          // the last failed request used the SVID
	)
	for {
		if wait > 0 {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-m.cfg.Clock.After(wait):
			}
		} else if err := ctx.Err(); err != nil {
			return err
		}

		cur := m.Current()
		useSVID := m.cfg.RenewWithSVID && cur != nil && validAt(cur, m.cfg.Clock.Now()) &&
			!(mtlsFailed && m.cfg.Token != nil)
		svid, err := m.fetch(ctx, cur, useSVID)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			m.cfg.Metrics.Renewed(false)
			r := m.cfg.Rand()
			wait = Backoff(failures, m.cfg.BackoffMin, m.cfg.BackoffMax, r)
			if hint, ok := client.RetryDelay(err); ok {
				// The CA shed the call and said when it expects room
				// (it staggers the callers it turns away): come back
				// then, plus a little jitter.
				wait = max(hint+time.Duration(float64(min(hint/2, retryHintJitter))*r), m.cfg.BackoffMin)
			}
			if cur != nil {
				// While the SVID is valid, retry at least at half the
				// time it has left, so an attempt falls just before it
				// expires instead of a long backoff after.
				if left := cur.NotAfter().Sub(m.cfg.Clock.Now()); left > 0 {
					wait = min(wait, max(left/2, m.cfg.BackoffMin))
				}
			}
			failures++
			mtlsFailed = useSVID
			m.logFailure(cur, failures, wait, err)
			continue
		}
		failures, mtlsFailed = 0, false
		m.cfg.Metrics.Renewed(true)
		m.publish(svid)
		m.cfg.Metrics.Expiry(svid.NotAfter())

		leaf := svid.Certificates[0]
		now := m.cfg.Clock.Now()
		// Count the lifetime from now, not from the backdated NotBefore:
		// with the CA's one-minute backdate, a one-minute certificate would
		// otherwise be due for renewal as soon as it arrived.
		renewAt := RenewalTime(later(leaf.NotBefore, now), leaf.NotAfter, m.cfg.RenewFraction, m.cfg.Jitter, m.cfg.Rand())
		wait = max(renewAt.Sub(now), m.cfg.BackoffMin)
		m.cfg.Logger.Info("SVID updated", "spiffe_id", m.cfg.ID.String(), "version", svid.Version,
			"serial", leaf.SerialNumber.Text(16), "not_after", leaf.NotAfter, "renew_in", wait, "mtls", useSVID)
	}
}

func (m *Manager) logFailure(cur *SVID, failures int, wait time.Duration, err error) {
	attrs := []any{"spiffe_id", m.cfg.ID.String(), "err", err, "attempt", failures, "retry_in", wait}
	if cur != nil && validAt(cur, m.cfg.Clock.Now()) {
		// Still serving a valid SVID: a warning, not yet an outage.
		m.cfg.Logger.Warn("SVID renewal failed; keeping the current SVID", append(attrs, "not_after", cur.NotAfter())...)
		return
	}
	m.cfg.Logger.Error("no valid SVID: request to the CA failed", attrs...)
}

// fetch makes one request to the CA and returns the SVID that follows cur,
// checked.
func (m *Manager) fetch(ctx context.Context, cur *SVID, useSVID bool) (*SVID, error) {
	var key crypto.Signer
	if m.cfg.ReuseKey && cur != nil {
		key = cur.Key
	} else {
		var err error
		if key, err = pki.GenerateKey(pki.KeyType(m.cfg.KeyType)); err != nil {
			return nil, fmt.Errorf("sds: %w", err)
		}
	}
	csr, err := client.NewCSR(key, m.cfg.ID)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, m.cfg.RequestTimeout)
	defer cancel()
	var token string
	if !useSVID && m.cfg.Token != nil {
		if token, err = m.cfg.Token(ctx); err != nil {
			return nil, fmt.Errorf("sds: read token: %w", err)
		}
	}
	chain, err := m.cfg.CA.Sign(ctx, csr, m.cfg.TTL, token)
	if err != nil {
		return nil, fmt.Errorf("sds: CA request: %w", err)
	}
	var prev []*x509.Certificate
	if cur != nil {
		prev = cur.Roots
	}
	certs, roots, err := m.checkChain(chain, key.Public(), m.trustedRoots(), prev, m.cfg.Clock.Now())
	if err != nil {
		return nil, err
	}
	return &SVID{ID: m.cfg.ID, Certificates: certs, Key: key, Roots: roots}, nil // Version: publish
}

// checkChain parses the CA's answer (leaf, intermediates, then the roots
// it trusts in one last element, as istiod answers) and checks that it is
// an SVID for our ID and our key that verifies, at now, to the trusted
// roots together with those the CA announces. The CA's roots are taken
// only when one of them is already known (in trusted, or served with
// prev): that is how a root rotation reaches the agent, the new root
// announced beside a root it trusts before anything chains to it. It
// returns the leaf and intermediates, and the roots to serve: trusted and
// the CA's.
func (m *Manager) checkChain(chainPEM []string, pub crypto.PublicKey, trusted, prev []*x509.Certificate, now time.Time) (certs, roots []*x509.Certificate, err error) {
	switch n := len(chainPEM); {
	case n == 0:
		return nil, nil, errors.New("sds: CA returned an empty chain")
	case n == 1:
		return nil, nil, errors.New("sds: CA returned no root: want leaf, intermediates, root")
	case n > maxChainLen:
		return nil, nil, fmt.Errorf("sds: CA returned %d certificates, over the limit of %d", n, maxChainLen)
	}
	n := len(chainPEM)
	certs = make([]*x509.Certificate, n-1)
	for i, p := range chainPEM[:n-1] {
		if certs[i], err = pki.ParseCertificate(p); err != nil {
			return nil, nil, fmt.Errorf("sds: CA returned a bad chain: element %d: %w", i, err)
		}
	}
	announced, err := pki.ParseCertificates([]byte(chainPEM[n-1]))
	switch {
	case err != nil:
		return nil, nil, fmt.Errorf("sds: CA returned a bad chain: element %d (the roots): %w", n-1, err)
	case len(announced) > maxChainLen:
		return nil, nil, fmt.Errorf("sds: CA returned %d roots, over the limit of %d", len(announced), maxChainLen)
	}
	leaf := certs[0]
	id, err := x509svid.IDFromCert(leaf)
	if err != nil {
		return nil, nil, fmt.Errorf("sds: CA returned a leaf without a SPIFFE ID: %w", err)
	}
	if id != m.cfg.ID {
		return nil, nil, fmt.Errorf("sds: CA returned an SVID for %s, want %s", id, m.cfg.ID)
	}
	if !pki.SamePublicKey(leaf.PublicKey, pub) {
		return nil, nil, errors.New("sds: CA returned a leaf for another key than the CSR's")
	}
	known := append(slices.Clone(trusted), prev...)
	switch {
	case len(known) == 0:
		// Nothing to anchor to (no --ca-roots): trust the CA's roots on
		// first use; the TLS connection to the CA was verified.
		m.cfg.Logger.Warn("no trust bundle configured: trusting the CA's roots on first use", "root_subject", announced[0].Subject.String())
	case !slices.ContainsFunc(announced, func(r *x509.Certificate) bool { return slices.ContainsFunc(known, r.Equal) }):
		return nil, nil, fmt.Errorf("sds: CA returned a chain to a root that is not in the trust bundle (%s)", announced[0].Subject)
	}
	// Serve the whole bundle and the CA's roots: during a root rotation
	// peers may chain to either root.
	roots = slices.Clone(trusted)
	for _, r := range announced {
		if !slices.ContainsFunc(roots, r.Equal) {
			roots = append(roots, r)
		}
	}
	bundle := x509bundle.FromX509Authorities(m.cfg.ID.TrustDomain(), roots)
	if _, _, err := x509svid.Verify(certs, bundle, x509svid.WithTime(now)); err != nil {
		return nil, nil, fmt.Errorf("sds: CA returned a chain that does not verify to its root: %w", err)
	}
	return certs, roots, nil
}

// trustedRoots is the trust bundle now: LoadRoots' answer when it has one
// (the mounted bundle, re-read before every request), else Config.Roots.
func (m *Manager) trustedRoots() []*x509.Certificate {
	if m.cfg.LoadRoots != nil {
		roots, err := m.cfg.LoadRoots()
		if err == nil && len(roots) > 0 {
			return roots
		}
		m.cfg.Logger.Warn("reading the trust bundle failed; using the configured roots", "err", err)
	}
	return m.cfg.Roots
}

// RenewalTime is when a certificate valid from notBefore to notAfter is
// due for renewal: at fraction of its lifetime, moved by jitter×lifetime
// times 2r-1, for r uniform in [0, 1). The result is clamped to the
// validity period.
func RenewalTime(notBefore, notAfter time.Time, fraction, jitter, r float64) time.Time {
	life := notAfter.Sub(notBefore)
	if life <= 0 {
		return notBefore
	}
	f := fraction + jitter*(2*r-1)
	switch {
	case f <= 0:
		return notBefore
	case f >= 1:
		return notAfter
	}
	return notBefore.Add(time.Duration(float64(life) * f))
}

// Backoff is the wait after attempt+1 consecutive failures: floor doubled
// attempt times, at most ceiling, then moved by ±20 % (2r-1 of it, for r
// uniform in [0, 1)). It never exceeds ceiling.
func Backoff(attempt int, floor, ceiling time.Duration, r float64) time.Duration {
	ceiling = max(ceiling, floor)
	d := floor
	for i := 0; i < attempt && d < ceiling; i++ {
		if d > ceiling/2 {
			d = ceiling
			break
		}
		d *= 2
	}
	r = min(max(r, 0), 1)
	j := math.Round(float64(min(d, ceiling)) * (1 + backoffJitter*(2*r-1)))
	if j >= float64(ceiling) { // compared as floats: near the largest Duration the conversion would overflow
		return ceiling
	}
	return time.Duration(j)
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
