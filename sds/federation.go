package sds

import (
	"context"
	"maps"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// DefaultFederationRefresh is how often RunFederation asks the CA for the
// federated trust domains' bundles: as often as the CA itself fetches them
// by default (SPIRE's refresh hint), and a peer's new root is published
// long before anything chains to it.
const DefaultFederationRefresh = 5 * time.Minute

// idleFederationFactor stretches the wait after the CA answered no
// federated trust domain (or has no bundle service): a CA that federates
// with no one, the common case, is asked every half hour by default, not
// every five minutes, by each of its agents.
const idleFederationFactor = 6

// FederationCA is what RunFederation needs of the CA: ca/client.Client is
// one.
type FederationCA interface {
	// FederatedBundles returns the bundles of the trust domains the CA
	// federates with, all but own.
	FederatedBundles(ctx context.Context, own spiffeid.TrustDomain) (map[spiffeid.TrustDomain]*spiffebundle.Bundle, error)
}

// RunFederation asks ca for the federated bundles now and every `every`
// (DefaultFederationRefresh when 0) until ctx ends, and serves what it
// answers with every SVID (SetFederated). A failed request keeps the
// bundles held and is retried with backoff, at most `every` apart. A CA
// that answers none, or does not serve them (Unimplemented: older than
// its bundle service), is asked again after six times `every`.
func (m *Manager) RunFederation(ctx context.Context, ca FederationCA, every time.Duration) error {
	if every <= 0 {
		every = DefaultFederationRefresh
	}
	failures := 0
	for {
		reqCtx, cancel := context.WithTimeout(ctx, m.cfg.RequestTimeout)
		bundles, err := ca.FederatedBundles(reqCtx, m.cfg.ID.TrustDomain())
		cancel()
		wait := every
		switch {
		case ctx.Err() != nil:
			return ctx.Err()
		case status.Code(err) == codes.Unimplemented:
			m.cfg.Logger.Debug("the CA serves no federated bundles (it has no bundle service)", "err", err)
			wait = every * idleFederationFactor
		case err != nil:
			wait = Backoff(failures, m.cfg.BackoffMin, every, m.cfg.Rand())
			failures++
			m.cfg.Logger.Warn("fetching the federated bundles failed; keeping those held", "err", err, "attempt", failures, "retry_in", wait)
		default:
			failures = 0
			m.SetFederated(bundles)
			if len(bundles) == 0 {
				wait = every * idleFederationFactor
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-m.cfg.Clock.After(wait):
		}
	}
}

// SetFederated replaces the federated bundles served with every SVID (all
// but the workload's own trust domain's, and each only under its own trust
// domain). When their authorities differ from those served, the current
// SVID is published again with them (one Version more), so the servers
// push them to open streams; b must not be changed afterwards.
func (m *Manager) SetFederated(b map[spiffeid.TrustDomain]*spiffebundle.Bundle) {
	own := m.cfg.ID.TrustDomain()
	b = maps.Clone(b)
	// Never our own trust domain, nor a bundle made for another trust
	// domain than its key: the servers key some bundles by the map and
	// others by the bundle's own trust domain (a JWT bundle set), and
	// either must never stand for our own.
	maps.DeleteFunc(b, func(td spiffeid.TrustDomain, fb *spiffebundle.Bundle) bool {
		return td == own || fb == nil || fb.TrustDomain() != td
	})
	if len(b) == 0 {
		b = nil
	}
	m.pubMu.Lock()
	defer m.pubMu.Unlock()
	if sameFederated(m.federated, b) {
		return
	}
	m.federated = b
	m.cfg.Logger.Info("federated bundles updated", "trust_domains", len(b))
	cur := m.src.Current()
	if cur == nil {
		return // they come with the first SVID
	}
	next := *cur
	m.publishLocked(&next)
}

// publish serves svid, with the federated bundles held and the Version
// after the current SVID's (1 for the first).
func (m *Manager) publish(svid *SVID) {
	m.pubMu.Lock()
	defer m.pubMu.Unlock()
	m.publishLocked(svid)
}

// publishLocked is publish for callers holding pubMu.
func (m *Manager) publishLocked(svid *SVID) {
	svid.Federated, svid.Version = m.federated, 1
	if cur := m.src.Current(); cur != nil {
		svid.Version = cur.Version + 1
	}
	m.src.Set(svid)
}

// sameFederated reports whether a and b hold the same trust domains with
// the same X.509 and JWT authorities.
func sameFederated(a, b map[spiffeid.TrustDomain]*spiffebundle.Bundle) bool {
	if len(a) != len(b) {
		return false
	}
	for td, x := range a {
		y, ok := b[td]
		if !ok || !x.X509Bundle().Equal(y.X509Bundle()) || !x.JWTBundle().Equal(y.JWTBundle()) {
			return false
		}
	}
	return true
}
