package plane

import (
	"context"
	"crypto/x509"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/pflag"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/ca/federation"
	"github.com/meshca/meshca/ca/server"
	"github.com/meshca/meshca/internal/metrics"
)

// Federation configures the trust domains the CA federates with
// (ca/federation): their bundles are fetched by the leader, kept in the
// store, and served to agents beside the CA's own.
type Federation struct {
	// ConfigFile is the --federation-config file (federation.File); ""
	// federates with no one.
	ConfigFile string
	// MinRefresh and MaxRefresh bound the wait between two fetches of a
	// bundle, whatever its spiffe_refresh_hint (defaults in
	// federation.Config).
	MinRefresh, MaxRefresh time.Duration
}

// AddFlags registers the flags of `meshca server` for federation into f
// (docs/configuration.md lists them).
func (f *Federation) AddFlags(fs *pflag.FlagSet) {
	fs.StringVar(&f.ConfigFile, "federation-config", "", "YAML file listing the foreign trust domains to federate with and where each bundle comes from (bundle endpoint https_web or https_spiffe, or a static file; docs/configuration.md); empty: none")
	fs.DurationVar(&f.MinRefresh, "federation-min-refresh", federation.DefaultMinRefresh, "least wait between two fetches of a federated bundle, whatever its spiffe_refresh_hint")
	fs.DurationVar(&f.MaxRefresh, "federation-max-refresh", federation.DefaultMaxRefresh, "most wait between two fetches of a federated bundle, whatever its spiffe_refresh_hint (a bundle without a hint: 5m)")
}

// startFederation reads the federation config and the bundles stored for
// it; nil without a config file.
func (c *Config) startFederation(ctx context.Context, auth *ca.Authority, st federation.Store, reg prometheus.Registerer) (*federation.Federation, error) {
	if c.Federation.ConfigFile == "" {
		return nil, nil
	}
	peers, err := federation.LoadFile(c.Federation.ConfigFile, c.TrustDomain)
	if err != nil {
		return nil, err
	}
	f, err := federation.New(federation.Config{
		Peers: peers, TrustDomain: c.TrustDomain, Store: st,
		Roots:      func() []*x509.Certificate { return auth.Bundle().X509Authorities() },
		MinRefresh: c.Federation.MinRefresh, MaxRefresh: c.Federation.MaxRefresh,
		Clock: c.Clock, Logger: c.Logger, Metrics: metrics.NewFederation(reg),
	})
	if err != nil {
		return nil, err
	}
	if err := f.Load(ctx); err != nil {
		return nil, err
	}
	c.Logger.Info("federating", "trust_domains", f.TrustDomains(), "with_bundles", len(f.Bundles()))
	return f, nil
}

// federatedBundles is f for server.Config: nil without federation.
func federatedBundles(f *federation.Federation) server.FederatedBundles {
	if f == nil {
		return nil
	}
	return f
}

// runFederation reads the stored bundles back on every replica, and adds
// the fetcher to the leader's jobs.
func (p *Plane) runFederation(ctx context.Context, f *federation.Federation, jobs map[string]func(context.Context) error) {
	if f == nil {
		return
	}
	p.running.Go(func() { f.Watch(ctx) })
	jobs[fmt.Sprintf("federated bundles (%d trust domains)", len(f.TrustDomains()))] = f.Run
}
