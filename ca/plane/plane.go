// Package plane assembles a running CA from one Config: the store (the
// bbolt file in the data directory, or a PostgreSQL database shared by
// replicas), the Authority (root, intermediates, rotation), the
// attestor chain that turns credentials into identities, and the API
// servers. `meshca server` and `meshca dev` are this package behind flags.
//
// Start owns start-up (each step undone if a later one fails) and returns a
// Plane; Stop owns shutdown (servers drained first, then the maintenance
// loop and the attestors' watches, then the store). Run is Start, wait for
// the context, Stop.
package plane

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshca/meshca/attestor"
	"github.com/meshca/meshca/attestor/jointoken"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/ca/bundle"
	"github.com/meshca/meshca/ca/server"
	"github.com/meshca/meshca/ca/vault"
	"github.com/meshca/meshca/internal/clock"
	"github.com/meshca/meshca/internal/files"
	"github.com/meshca/meshca/internal/metrics"
)

// DataFile is the bbolt file's name in the data directory.
const DataFile = "meshca.db"

// BundleFile is the PEM trust bundle written beside the data file for local
// clients (meshca token, scripts); workloads get it from the APIs.
const BundleFile = "bundle.pem"

// shutdownGrace bounds how long Stop waits for calls in flight.
const shutdownGrace = 10 * time.Second

// Config configures a CA plane. Zero fields get the documented defaults;
// the CA's own lifetimes and limits default as in ca.Config and
// server.Config.
type Config struct {
	// TrustDomain of every identity issued. Required.
	TrustDomain spiffeid.TrustDomain
	// DataDir holds the bbolt data file (unless Storage names
	// PostgreSQL), the bundle and (by default) the admin token; created
	// 0700. Required.
	DataDir string
	// Storage says where the CA's state is kept; the zero value is the
	// bbolt file in DataDir.
	Storage Storage
	// Parent signs intermediates, e.g. ca.LoadCACerts of an Istio cacerts
	// directory. Nil: a self-signed root kept in the data file.
	Parent ca.Parent
	// NextParent loads the parent staged for a root rotation (see
	// ca.Config; ca.StagedCACerts of --cacerts-next-dir). Nil: none.
	NextParent ca.ParentLoader
	// Vault keeps the root in Vault (ca/vault): its key in Transit, or
	// Vault's PKI engine as the parent. Off unless Vault.Addr is set; not
	// with Parent.
	Vault vault.Config
	// RootRotationOverlap and RootRotationCrossSign are passed to
	// ca.Config (defaults there).
	RootRotationOverlap   time.Duration
	RootRotationCrossSign bool
	// KEK seals private keys at rest (32 bytes). Nil stores them in clear
	// in the 0600 data file, with a warning.
	KEK []byte
	// KeyType of the CA's own keys. Default ecdsa-p256.
	KeyType ca.KeyType
	// RootTTL, IntermediateTTL, DefaultTTL, MaxTTL and Retention are passed
	// to ca.Config (defaults there).
	RootTTL, IntermediateTTL, DefaultTTL, MaxTTL, Retention time.Duration
	// JWT sets the JWT-SVIDs' lifetimes and their signing key's (defaults
	// in ca.Config).
	JWT JWT
	// GRPCAddr, HTTPSAddr and MonitorAddr are the listeners; "" disables
	// one.
	GRPCAddr, HTTPSAddr, MonitorAddr string
	// Profiling serves Go's profiler (/debug/pprof/) on the monitoring
	// listener. Off by default: a profile shows what the CA is doing to
	// anyone who can reach that port.
	Profiling bool
	// DNSNames and IPs go into the serving certificate (defaults in
	// server.Config).
	DNSNames []string
	IPs      []net.IP
	// Limits bound what callers can take of the listeners (defaults in
	// server.Limits).
	server.Limits
	// AdminTokenFile holds the admin API's bearer token, created 0600 with
	// a random token if missing. Default <DataDir>/admin-token.
	AdminTokenFile string
	// Kubernetes configures ServiceAccount token attestation; off by
	// default.
	Kubernetes Kubernetes
	// LeaderElection elects the replica that takes the root rotation's
	// scheduled steps, prunes and writes the bundle's ConfigMaps and
	// ClusterTrustBundle, when several share Storage; off by default.
	LeaderElection LeaderElection
	// PodCertificates makes meshca a Kubernetes pod certificate signer;
	// off by default.
	PodCertificates PodCertificates
	// Bundles says where the trust bundle is published besides the APIs
	// (ca/bundle): ConfigMaps, a ClusterTrustBundle (both through the
	// Kubernetes client of Kubernetes: its kubeconfig and rate limit), a
	// SPIFFE bundle endpoint. The zero value publishes it nowhere.
	Bundles bundle.Config
	// Federation lists the trust domains federated with; none by default.
	Federation Federation
	// OIDCConfigFile lists trusted OIDC issuers; "" trusts none.
	OIDCConfigFile string
	// Extra attestors are tried after all others (meshca dev's token).
	Extra []attestor.Attestor
	// UserAgent names meshca in API servers' logs. Default "meshca".
	UserAgent string
	// Clock defaults to the wall clock; Logger to discarding.
	Clock  clock.Clock
	Logger *slog.Logger
}

// AdminTokenPath is AdminTokenFile or its default in the data directory.
func (c Config) AdminTokenPath() string {
	if c.AdminTokenFile != "" {
		return c.AdminTokenFile
	}
	return filepath.Join(c.DataDir, "admin-token")
}

// BundlePath is where Start writes the trust bundle.
func (c Config) BundlePath() string { return filepath.Join(c.DataDir, BundleFile) }

func (c *Config) setDefaults() error {
	if c.TrustDomain.IsZero() {
		return errors.New("plane: trust domain is required")
	}
	if c.DataDir == "" {
		return errors.New("plane: data directory is required")
	}
	if c.UserAgent == "" {
		c.UserAgent = "meshca"
	}
	c.Clock = clock.OrReal(c.Clock)
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Bundles.ClusterTrustBundleSigner == "" { // pods of the signer trust its roots
		c.Bundles.ClusterTrustBundleSigner = c.PodCertificates.Signer
	}
	return nil
}

// Plane is a running CA.
type Plane struct {
	cfg    Config
	store  *openedStore
	auth   *ca.Authority
	srv    *server.Server
	bundle *bundles
	cancel context.CancelFunc
	// running counts the maintenance loop and the attestors' background
	// work, which end when cancel is called.
	running sync.WaitGroup
}

// background is an attestor with work of its own (the Kubernetes informer
// mode's watches): it runs from Start until Stop, and the plane is ready
// only once every such attestor is.
type background interface {
	Run(ctx context.Context)
	Ready(ctx context.Context) error
}

// Start opens the data file, loads or creates the CA, builds the attestor
// chain and starts its background work (the Kubernetes informers: /readyz
// answers 503 until they have synced), opens the listeners, writes the
// bundle file, starts the bundle's publishers (Config.Bundles) and the
// maintenance loop (rotation, pruning). With Config.LeaderElection it
// contends for the leader Lease, and runs the ConfigMap and
// ClusterTrustBundle publishers only while it leads. On error everything
// started so far is stopped again.
func Start(ctx context.Context, cfg Config) (_ *Plane, err error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	var undo []func()
	defer func() {
		if err != nil {
			for i := len(undo) - 1; i >= 0; i-- {
				undo[i]()
			}
		}
	}()
	log := cfg.Logger
	if cfg.KEK == nil {
		log.Warn("no key-encryption key: CA private keys are stored unencrypted, protected only by the data file's 0600 mode (see SECURITY.md)")
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("data dir: %w", err)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	st, err := cfg.openStore(ctx, reg, log)
	if err != nil {
		return nil, err
	}
	undo = append(undo, func() { _ = st.Close() }) // the start-up error is the one to report
	if st.replica != "" {
		log = log.With("replica", st.replica)
		log.Info("the store is shared: this replica makes its own intermediate and keeps its key in memory")
	}
	root, err := cfg.caRoot(ctx, reg)
	if err != nil {
		return nil, err
	}
	el, err := cfg.elector(reg)
	if err != nil {
		return nil, err
	}
	auth, err := ca.New(ctx, ca.Config{
		TrustDomain: cfg.TrustDomain, Store: st, Parent: root.parent, NextParent: root.next, RootKeys: root.keys,
		RootRotationOverlap: cfg.RootRotationOverlap, RootRotationCrossSign: cfg.RootRotationCrossSign, KeyType: cfg.KeyType, KEK: cfg.KEK,
		RootTTL: cfg.RootTTL, IntermediateTTL: cfg.IntermediateTTL, DefaultTTL: cfg.DefaultTTL, MaxTTL: cfg.MaxTTL,
		Retention: cfg.Retention, JWTSVIDTTL: cfg.JWT.TTL, JWTSVIDMaxTTL: cfg.JWT.MaxTTL, JWTKeyTTL: cfg.JWT.KeyTTL, JWTPublishDelay: cfg.JWT.PublishDelay, Replica: st.replica, Leader: leaderFunc(el), Clock: cfg.Clock, Logger: log, Metrics: metrics.NewCA(reg),
	})
	if err != nil {
		return nil, err
	}
	chain, kube, err := cfg.attestors(auth, st, reg)
	if err != nil {
		return nil, err
	}
	pods, err := cfg.podCertificates(auth, kube.admission, reg)
	if err != nil {
		return nil, err
	}
	fed, err := cfg.startFederation(ctx, auth, st, reg)
	if err != nil {
		return nil, err
	}
	// The attestors' background work starts now, before the listeners, so
	// that it has caught up, and the plane is ready, as early as it can.
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	p := &Plane{cfg: cfg, store: st, auth: auth, cancel: cancel}
	undo = append(undo, func() { cancel(); p.running.Wait() })
	if root.vault != nil {
		p.running.Go(func() { _ = root.vault.Run(runCtx) }) // ends with runCtx
	}
	var waitFor []background
	for _, a := range chain {
		if b, ok := a.(background); ok {
			waitFor = append(waitFor, b)
			p.running.Go(func() { b.Run(runCtx) })
		}
	}
	adminToken, err := files.Token(cfg.AdminTokenPath())
	if err != nil {
		return nil, fmt.Errorf("admin token: %w", err)
	}
	srv, err := server.New(server.Config{
		Authority: auth, Attestor: chain, Impersonator: kube.nodes, Federation: federatedBundles(fed), AdminToken: adminToken, Ready: readyAll(waitFor, st.ready),
		GRPCAddr: cfg.GRPCAddr, HTTPSAddr: cfg.HTTPSAddr, MonitorAddr: cfg.MonitorAddr, Profiling: cfg.Profiling,
		DNSNames: cfg.DNSNames, IPs: cfg.IPs, Limits: cfg.Limits,
		Registry: reg, Clock: cfg.Clock, Logger: log,
	})
	if err != nil {
		return nil, err
	}
	if err := srv.Start(); err != nil {
		return nil, err
	}
	undo = append(undo, func() { _ = srv.Shutdown(context.Background()) })
	if err := files.WriteAtomic(cfg.BundlePath(), auth.RootsPEM(), 0o644); err != nil {
		return nil, err
	}
	if p.bundle, err = cfg.startBundles(auth, reg); err != nil {
		return nil, err
	}
	if ep := p.bundle.endpoint; ep != nil {
		undo = append(undo, func() { _ = ep.Shutdown(context.Background()) })
	}
	jobs := maps.Clone(p.bundle.writers)
	if pods != nil {
		jobs["pod certificates"] = pods.Run
	}
	if el != nil {
		// A new leader takes up the root rotation's due steps at once,
		// not at the maintenance loop's next look.
		jobs["root rotation steps on becoming the leader"] = auth.Rotate
	}
	p.runFederation(runCtx, fed, jobs)
	p.runLeaderJobs(runCtx, el, jobs)
	p.srv = srv
	p.running.Go(func() {
		if err := auth.Run(runCtx); err != nil && !errors.Is(err, context.Canceled) {
			log.Error("maintenance loop stopped", "err", err)
		}
	})
	p.running.Go(func() { p.keepBundleFile(runCtx) })
	return p, nil
}

// keepBundleFile rewrites the bundle file whenever a root rotation changes
// the trusted roots, until ctx ends.
func (p *Plane) keepBundleFile(ctx context.Context) {
	for {
		changed := p.auth.RootsChanged()
		select {
		case <-ctx.Done():
			return
		case <-changed:
		}
		if err := files.WriteAtomic(p.cfg.BundlePath(), p.auth.RootsPEM(), 0o644); err != nil {
			p.cfg.Logger.Error("rewriting the bundle file", "err", err)
			continue
		}
		p.cfg.Logger.Info("bundle file rewritten: the trusted roots changed", "path", p.cfg.BundlePath())
	}
}

// readyAll is ready when every one of bs is and store (if set) is; nil
// when there is nothing to ask.
func readyAll(bs []background, store func(context.Context) error) func(context.Context) error {
	if len(bs) == 0 && store == nil {
		return nil
	}
	return func(ctx context.Context) error {
		if store != nil {
			if err := store(ctx); err != nil {
				return err
			}
		}
		for _, b := range bs {
			if err := b.Ready(ctx); err != nil {
				return err
			}
		}
		return nil
	}
}

// attestors builds the chain in the order credentials are tried: the
// current SVID over mTLS (renewal), join tokens, then the bearer-token
// attestors, then Extra; and Kubernetes' other parts (the node authorizer
// of impersonation requests, the allow and deny lists).
func (c *Config) attestors(auth *ca.Authority, tokens jointoken.Store, reg prometheus.Registerer) (attestor.Chain, kubeParts, error) {
	bearer, kube, err := c.tokenAttestors(reg)
	if err != nil {
		return nil, kube, err
	}
	// Renewal passes the admission of first issuance again: the allow and
	// deny lists, and the ServiceAccount still existing (attestor/k8s).
	renewal, err := attestor.NewMTLS(attestor.MTLSConfig{Bundles: auth, Revocations: auth, Admit: kube.admission.Admit, Clock: c.Clock})
	if err != nil {
		return nil, kube, err
	}
	joins, err := jointoken.New(jointoken.Config{Store: tokens, Clock: c.Clock, Logger: c.Logger})
	if err != nil {
		return nil, kube, err
	}
	chain := attestor.Chain{renewal, joins}
	chain = append(chain, bearer...)
	return append(chain, c.Extra...), kube, nil
}

// Seal seals, with cfg.KEK, the CA keys that the store of cfg (its data
// file, or its database) holds in clear (from before a KEK was
// configured), and returns how many and where. It is `meshca ca seal`: an
// explicit, logged step, because with a KEK the CA refuses clear keys at
// start (they could have been planted). With bbolt the server must be
// stopped (the data file is locked while it runs); with PostgreSQL the
// change is a compare-and-swap like any rotation step, so running replicas
// are no obstacle (they keep the keys they loaded, and refuse clear keys
// only at their next start).
func Seal(ctx context.Context, cfg Config) (int, string, error) {
	if err := cfg.setDefaults(); err != nil {
		return 0, "", err
	}
	st, err := cfg.openStore(ctx, prometheus.NewRegistry(), cfg.Logger)
	if err != nil {
		return 0, "", err
	}
	n, err := ca.SealStoredKeys(ctx, st, cfg.KEK, cfg.Logger)
	return n, st.where, errors.Join(err, st.Close())
}

// Run starts the plane, serves until ctx ends, and stops it.
func Run(ctx context.Context, cfg Config) error {
	p, err := Start(ctx, cfg)
	if err != nil {
		return err
	}
	<-ctx.Done()
	return p.Stop()
}

// Stop drains the servers, ends the maintenance loop, the attestors' and
// the bundle publishers' background work, and closes the store.
func (p *Plane) Stop() error {
	ctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
	defer cancel()
	err := p.srv.Shutdown(ctx)
	if ep := p.bundle.endpoint; ep != nil {
		err = errors.Join(err, ep.Shutdown(ctx))
	}
	p.cancel()
	p.running.Wait()
	p.cfg.Logger.Info("stopped")
	return errors.Join(err, p.store.Close())
}

// Addr returns the bound address of a listener ("grpc", "https",
// "monitor" or "bundle-endpoint"), or nil when it is disabled.
func (p *Plane) Addr(name string) net.Addr {
	if name == "bundle-endpoint" {
		if p.bundle.endpoint == nil {
			return nil
		}
		return p.bundle.endpoint.Addr()
	}
	return p.srv.Addr(name)
}

// Authority is the running CA.
func (p *Plane) Authority() *ca.Authority { return p.auth }

// Config is the configuration the plane runs with, defaults applied.
func (p *Plane) Config() Config { return p.cfg }
