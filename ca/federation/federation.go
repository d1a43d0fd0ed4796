// Package federation keeps the trust bundles of the foreign trust domains a
// CA federates with (SPIFFE Trust Domain and Bundle, section 5; SPIRE's
// federates_with), so that its workloads verify a federated peer by that
// peer's own trust domain's roots.
//
// The --federation-config file (File) lists the trust domains and where
// each bundle comes from: a SPIFFE bundle endpoint, authenticated as
// https_web (web PKI) or https_spiffe (an X509-SVID verified with the
// current bundle of the endpoint's trust domain, bootstrapped from a file),
// or a static bundle file.
//
// One replica fetches (Run, a leader job): each trust domain on its own
// schedule, again after the bundle's spiffe_refresh_hint (5 minutes when
// it gives none, bounded by MinRefresh and MaxRefresh), static files every
// FileInterval. A fetched bundle is parsed with go-spiffe's spiffebundle
// and refused when it is malformed, larger than MaxBundleSize, without
// X.509 authorities, or names another trust domain in an authority's
// SPIFFE ID; a failed fetch is retried with backoff while the last good
// bundle stays in use. Good bundles go to the store (store.FederatedBundle),
// so that a restart and every replica sharing the store serve them: every
// replica reads them back every ReloadInterval (Watch). Bundles answers
// what a replica serves now.
package federation

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshca/meshca/ca/federation/fedbundle"
	"github.com/meshca/meshca/ca/store"
	"github.com/meshca/meshca/internal/clock"
)

// Defaults of Config's zero fields.
const (
	// DefaultRefresh is how long a bundle without spiffe_refresh_hint is
	// kept before it is fetched again, as SPIRE does.
	DefaultRefresh        = 5 * time.Minute
	DefaultMinRefresh     = 30 * time.Second
	DefaultMaxRefresh     = time.Hour
	DefaultRetryMin       = 10 * time.Second
	DefaultFileInterval   = 10 * time.Second
	DefaultReloadInterval = 30 * time.Second
	DefaultMaxBundleSize  = 1 << 20
	DefaultTimeout        = 30 * time.Second
)

// Store is what the federation keeps in the CA's store.
type Store interface {
	SaveFederatedBundle(ctx context.Context, b store.FederatedBundle) error
	FederatedBundles(ctx context.Context) ([]store.FederatedBundle, error)
	DeleteFederatedBundle(ctx context.Context, trustDomain string) error
}

// Metrics receives what the federation does. NopMetrics discards it.
type Metrics interface {
	// Refreshed records that td's bundle was fetched (or read) and
	// found good at t.
	Refreshed(td string, t time.Time)
	// Failed counts a failed fetch of td's bundle.
	Failed(td string)
	// Sequence sets the spiffe_sequence of td's bundle served.
	Sequence(td string, n uint64)
}

// NopMetrics discards metrics.
type NopMetrics struct{}

// Refreshed implements Metrics.
func (NopMetrics) Refreshed(string, time.Time) {}

// Failed implements Metrics.
func (NopMetrics) Failed(string) {}

// Sequence implements Metrics.
func (NopMetrics) Sequence(string, uint64) {}

// Config configures a Federation. Zero fields get the documented defaults.
type Config struct {
	// Peers are the foreign trust domains (LoadFile).
	Peers []Peer
	// TrustDomain is the CA's own. Required.
	TrustDomain spiffeid.TrustDomain
	// Roots are the CA's own roots now: they verify an https_spiffe
	// endpoint whose SPIFFE ID is in TrustDomain. Required then.
	Roots func() []*x509.Certificate
	// Store keeps the bundles. Required.
	Store Store
	// MinRefresh and MaxRefresh bound how long a fetched bundle is kept
	// before the next fetch, whatever its spiffe_refresh_hint says.
	// Defaults DefaultMinRefresh and DefaultMaxRefresh.
	MinRefresh, MaxRefresh time.Duration
	// RetryMin is the wait after a first failed fetch; it doubles with
	// each further failure, up to the refresh interval. Default
	// DefaultRetryMin.
	RetryMin time.Duration
	// FileInterval is how often a static bundle file is checked for
	// changes. Default DefaultFileInterval.
	FileInterval time.Duration
	// ReloadInterval is how often Watch reads the bundles back from the
	// store. Default DefaultReloadInterval.
	ReloadInterval time.Duration
	// MaxBundleSize bounds a bundle document, fetched or read. Default
	// DefaultMaxBundleSize.
	MaxBundleSize int64
	// Timeout bounds one fetch (a network deadline, on the wall clock).
	// Default DefaultTimeout.
	Timeout time.Duration
	// Clock, Logger and Metrics default to the wall clock, discarding and
	// NopMetrics.
	Clock   clock.Clock
	Logger  *slog.Logger
	Metrics Metrics
}

// Federation holds the bundles of the trust domains a CA federates with.
type Federation struct {
	cfg   Config
	peers []*peer

	mu      sync.RWMutex
	current map[spiffeid.TrustDomain]*entry
}

// entry is a bundle served, with its stored record.
type entry struct {
	rec    store.FederatedBundle
	bundle *spiffebundle.Bundle
}

// peer is a Peer with what fetching it needs.
type peer struct {
	Peer
	client    *http.Client         // nil for a static file
	bootstrap *spiffebundle.Bundle // https_spiffe's first trust; nil when none
	// refresh is the wait after the last good fetch; lastFile the static
	// file's content last stored. Both belong to the peer's goroutine.
	refresh  time.Duration
	lastFile []byte
}

// New checks cfg, reads the files it names (CA files, bootstrap and
// static bundles: a bad one fails here), and returns a Federation serving
// no bundle until Load.
func New(cfg Config) (*Federation, error) {
	if cfg.TrustDomain.IsZero() || cfg.Store == nil {
		return nil, errors.New("federation: a trust domain and a store are required")
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&cfg.MinRefresh, DefaultMinRefresh)
	def(&cfg.MaxRefresh, DefaultMaxRefresh)
	def(&cfg.RetryMin, DefaultRetryMin)
	def(&cfg.FileInterval, DefaultFileInterval)
	def(&cfg.ReloadInterval, DefaultReloadInterval)
	def(&cfg.Timeout, DefaultTimeout)
	if cfg.MinRefresh > cfg.MaxRefresh {
		return nil, fmt.Errorf("federation: the least refresh interval %s is over the most %s", cfg.MinRefresh, cfg.MaxRefresh)
	}
	if cfg.MaxBundleSize <= 0 {
		cfg.MaxBundleSize = DefaultMaxBundleSize
	}
	cfg.Clock = clock.OrReal(cfg.Clock)
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Metrics == nil {
		cfg.Metrics = NopMetrics{}
	}
	f := &Federation{cfg: cfg, current: map[spiffeid.TrustDomain]*entry{}}
	for _, p := range cfg.Peers {
		if p.ID == cfg.TrustDomain {
			// Parse refuses it too; a Config built otherwise must not
			// make a foreign bundle stand for our own trust domain.
			return nil, fmt.Errorf("federation: %s is this CA's own trust domain", p.ID)
		}
		if p.EndpointID.MemberOf(cfg.TrustDomain) && cfg.Roots == nil {
			return nil, errors.New("federation: an endpoint in the CA's own trust domain needs its roots")
		}
		pp, err := f.newPeer(p)
		if err != nil {
			return nil, err
		}
		f.peers = append(f.peers, pp)
	}
	return f, nil
}

// Bundles returns the bundles served now, by trust domain: those of the
// configured trust domains that have one. The bundles are shared: do not
// change them.
func (f *Federation) Bundles() map[spiffeid.TrustDomain]*spiffebundle.Bundle {
	f.mu.RLock()
	defer f.mu.RUnlock()
	out := make(map[spiffeid.TrustDomain]*spiffebundle.Bundle, len(f.current))
	for td, e := range f.current {
		out[td] = e.bundle
	}
	return out
}

func (f *Federation) get(td spiffeid.TrustDomain) *entry {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.current[td]
}

// configured returns the peer of a trust domain name, or nil.
func (f *Federation) configured(name string) *peer {
	for _, p := range f.peers {
		if p.ID.Name() == name {
			return p
		}
	}
	return nil
}

// Load reads the stored bundles of the configured trust domains and serves
// each that is newer than the one served (a replica that fetched keeps
// its own until the store has it). A stored bundle that does not parse is
// logged and left out.
func (f *Federation) Load(ctx context.Context) error {
	recs, err := f.cfg.Store.FederatedBundles(ctx)
	if err != nil {
		return fmt.Errorf("federation: load: %w", err)
	}
	for _, rec := range recs {
		p := f.configured(rec.TrustDomain)
		if p == nil {
			continue // no longer configured: served nowhere (the leader deletes it)
		}
		if cur := f.get(p.ID); cur != nil && !rec.RefreshedAt.After(cur.rec.RefreshedAt) {
			continue
		}
		b, err := fedbundle.Parse(p.ID, rec.Bundle)
		if err != nil {
			f.cfg.Logger.Error("federation: a stored bundle is unusable; left out", "trust_domain", rec.TrustDomain, "err", err)
			continue
		}
		f.mu.Lock()
		cur := f.current[p.ID]
		if cur == nil || rec.RefreshedAt.After(cur.rec.RefreshedAt) {
			f.current[p.ID] = &entry{rec: rec, bundle: b}
		}
		f.mu.Unlock()
		if cur == nil || !sameAuthorities(cur.bundle, b) {
			f.cfg.Logger.Info("federation: bundle loaded from the store", "trust_domain", rec.TrustDomain, "source", rec.Source,
				"refreshed_at", rec.RefreshedAt, "x509_authorities", len(b.X509Authorities()), "jwt_authorities", len(b.JWTAuthorities()))
		}
		seq, _ := b.SequenceNumber()
		f.cfg.Metrics.Sequence(rec.TrustDomain, seq)
	}
	return nil
}

// Watch reads the stored bundles back every ReloadInterval until ctx
// ends: how a replica that does not fetch (a follower) sees what the
// leader fetched.
func (f *Federation) Watch(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-f.cfg.Clock.After(f.cfg.ReloadInterval):
		}
		if err := f.Load(ctx); err != nil && ctx.Err() == nil {
			f.cfg.Logger.Warn("federation: reading the bundles from the store failed; serving those read before", "err", err)
		}
	}
}

// Run fetches every configured trust domain's bundle, each on its own
// schedule, until ctx ends, and returns ctx's error. It first deletes the
// stored bundles of trust domains no longer configured. With leader
// election only the leader runs it.
func (f *Federation) Run(ctx context.Context) error {
	f.prune(ctx)
	var wg sync.WaitGroup
	for _, p := range f.peers {
		wg.Go(func() { f.runPeer(ctx, p) })
	}
	wg.Wait()
	return ctx.Err()
}

// prune deletes the stored bundles of trust domains not configured.
func (f *Federation) prune(ctx context.Context) {
	recs, err := f.cfg.Store.FederatedBundles(ctx)
	if err != nil {
		f.cfg.Logger.Warn("federation: listing the stored bundles failed", "err", err)
		return
	}
	for _, rec := range recs {
		if f.configured(rec.TrustDomain) != nil {
			continue
		}
		if err := f.cfg.Store.DeleteFederatedBundle(ctx, rec.TrustDomain); err != nil {
			f.cfg.Logger.Warn("federation: deleting the bundle of a trust domain no longer configured failed", "trust_domain", rec.TrustDomain, "err", err)
			continue
		}
		f.cfg.Logger.Info("federation: deleted the bundle of a trust domain no longer configured", "trust_domain", rec.TrustDomain)
	}
}

// runPeer keeps p's bundle fresh until ctx ends.
func (f *Federation) runPeer(ctx context.Context, p *peer) {
	log := f.cfg.Logger.With("trust_domain", p.ID.Name())
	if p.bootstrap != nil && f.get(p.ID) == nil {
		if err := f.save(ctx, p.ID, p.bootstrap, store.FederatedFromBootstrap); err != nil {
			log.Warn("federation: storing the bootstrap bundle failed", "err", err)
		}
	}
	var (
		failures int
		lastErr  string
	)
	for {
		wait, err := f.refresh(ctx, p)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			failures++
			f.cfg.Metrics.Failed(p.ID.Name())
			wait = backoff(failures, f.cfg.RetryMin, wait)
			level := slog.LevelDebug // the same failure again: logged once at Warn
			if err.Error() != lastErr {
				level = slog.LevelWarn
			}
			lastErr = err.Error()
			log.Log(ctx, level, "federation: fetching the bundle failed; the last good one stays in use",
				"err", err, "attempt", failures, "retry_in", wait, "have_bundle", f.get(p.ID) != nil)
		} else if failures > 0 {
			log.Info("federation: fetching the bundle works again", "after_failures", failures)
			failures, lastErr = 0, ""
		}
		select {
		case <-ctx.Done():
			return
		case <-f.cfg.Clock.After(wait):
		}
	}
}

// refresh fetches (or reads) p's bundle once and stores it if it is good.
// It returns the wait until the next refresh (the cap of the backoff
// when it failed).
func (f *Federation) refresh(ctx context.Context, p *peer) (time.Duration, error) {
	if p.Static() {
		data, err := readFile(p.BundleFile, f.cfg.MaxBundleSize)
		if err != nil {
			return f.cfg.FileInterval, fmt.Errorf("federation: %s: %w", p.ID.Name(), err)
		}
		if p.lastFile != nil && string(data) == string(p.lastFile) {
			return f.cfg.FileInterval, nil
		}
		b, err := fedbundle.Parse(p.ID, data)
		if err != nil {
			return f.cfg.FileInterval, fmt.Errorf("%w (in %s)", err, p.BundleFile)
		}
		if err := f.save(ctx, p.ID, b, store.FederatedFromFile); err != nil {
			return f.cfg.FileInterval, err
		}
		p.lastFile = data
		return f.cfg.FileInterval, nil
	}
	data, err := f.fetch(ctx, p)
	if err != nil {
		return p.refresh, err
	}
	b, err := fedbundle.Parse(p.ID, data)
	if err != nil {
		return p.refresh, fmt.Errorf("%w (from %s)", err, p.BundleEndpointURL)
	}
	hint, _ := b.RefreshHint()
	p.refresh = f.interval(hint)
	return p.refresh, f.save(ctx, p.ID, b, store.FederatedFromEndpoint)
}

// interval is the wait after a bundle whose spiffe_refresh_hint is hint (0:
// none): the hint or DefaultRefresh, within [MinRefresh, MaxRefresh].
func (f *Federation) interval(hint time.Duration) time.Duration {
	if hint <= 0 {
		hint = DefaultRefresh
	}
	return min(max(hint, f.cfg.MinRefresh), f.cfg.MaxRefresh)
}

// backoff is the wait after n consecutive failures: lo doubled n-1 times,
// at most hi.
func backoff(n int, lo, hi time.Duration) time.Duration {
	d := lo
	for i := 1; i < n && d < hi; i++ {
		d *= 2
	}
	return min(d, max(hi, lo))
}

// save serves b as td's bundle and stores it, with the time of this
// refresh and of the last change of its authorities.
func (f *Federation) save(ctx context.Context, td spiffeid.TrustDomain, b *spiffebundle.Bundle, source string) error {
	doc, err := b.Marshal()
	if err != nil {
		return fmt.Errorf("federation: %s: %w", td.Name(), err)
	}
	now := f.cfg.Clock.Now()
	rec := store.FederatedBundle{TrustDomain: td.Name(), Bundle: doc, Source: source, RefreshedAt: now, ChangedAt: now}
	f.mu.Lock()
	cur := f.current[td]
	changed := cur == nil || !sameAuthorities(cur.bundle, b)
	if !changed {
		rec.ChangedAt = cur.rec.ChangedAt
	}
	f.current[td] = &entry{rec: rec, bundle: b}
	f.mu.Unlock()

	seq, _ := b.SequenceNumber()
	f.cfg.Metrics.Refreshed(td.Name(), now)
	f.cfg.Metrics.Sequence(td.Name(), seq)
	if changed {
		f.cfg.Logger.Info("federation: bundle updated", "trust_domain", td.Name(), "source", source, "sequence", seq,
			"x509_authorities", len(b.X509Authorities()), "jwt_authorities", len(b.JWTAuthorities()))
	} else {
		f.cfg.Logger.Debug("federation: bundle unchanged", "trust_domain", td.Name(), "source", source, "sequence", seq)
	}
	if err := f.cfg.Store.SaveFederatedBundle(ctx, rec); err != nil {
		return fmt.Errorf("federation: %s: storing the bundle: %w", td.Name(), err)
	}
	return nil
}

// sameAuthorities reports whether a and b hold the same X.509 and JWT
// authorities (whatever their sequence and refresh hint).
func sameAuthorities(a, b *spiffebundle.Bundle) bool {
	return a.X509Bundle().Equal(b.X509Bundle()) && a.JWTBundle().Equal(b.JWTBundle())
}

// TrustDomains are the configured trust domains, in the config's order.
func (f *Federation) TrustDomains() []spiffeid.TrustDomain {
	out := make([]spiffeid.TrustDomain, len(f.peers))
	for i, p := range f.peers {
		out[i] = p.ID
	}
	return out
}
