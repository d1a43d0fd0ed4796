// Package agent assembles a running meshca agent from one Config: the CA
// client, the sds.Manager that keeps the workload's SVID fresh, the Envoy
// SDS server (Unix socket, and optionally TCP with mTLS), the SPIFFE
// Workload API server, and the monitoring endpoints. `meshca agent` is this
// package behind flags.
//
// Start owns start-up (each step undone if a later one fails) and returns an
// Agent; Stop owns shutdown: the Manager and the streams are cancelled
// together, the gRPC servers drain, and Stop returns once every goroutine
// has ended. Run is Start, wait for the context, Stop.
package agent

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"

	"github.com/meshca/meshca/ca/client"
	"github.com/meshca/meshca/internal/clock"
	"github.com/meshca/meshca/internal/metrics"
	"github.com/meshca/meshca/internal/pki"
	"github.com/meshca/meshca/sds"
)

// drainGrace bounds how long Stop waits for a gRPC server to drain.
const drainGrace = 5 * time.Second

// maxRecvMsgSize bounds a request on the local sockets: a DiscoveryRequest
// naming the allowed resources is far smaller.
const maxRecvMsgSize = 1 << 20

// Config configures an agent. Zero fields get the documented defaults.
type Config struct {
	// ID is the workload's SPIFFE ID. Required.
	ID spiffeid.ID
	// CAAddr is the CA's gRPC CSR API address: host:port (every address
	// a name resolves to is a replica) or a gRPC target
	// (dns:///name:port).
	CAAddr string
	// CAAddrs are the host:port addresses of several replicas of the CA,
	// besides CAAddr if that is set too: requests go to the reachable ones
	// in turn, and one that fails with Unavailable is retried on another
	// (ca/client, "Several replicas"). At least one address is required.
	CAAddrs []string
	// CARootsFile is a PEM trust bundle (e.g. a mounted ConfigMap): it
	// verifies the CA and is served; it is re-read before every request.
	// Required.
	CARootsFile string
	// CAServerName is the name expected in the CA's certificate, from
	// every replica. Default: the host of the CA's address, "localhost"
	// for a loopback or unspecified IP; with several addresses, each
	// replica's own (client.ServerName).
	CAServerName string
	// TokenFile is a projected ServiceAccount token, read anew for every
	// request (kubelet rotates it). Exactly one of TokenFile and
	// JoinTokenFile is required.
	TokenFile string
	// JoinTokenFile holds a single-use join token for the first SVID
	// outside Kubernetes; renewals then use the current SVID over mTLS.
	JoinTokenFile string
	// KeyType, TTL and RenewFraction are passed to sds.Config (defaults
	// there).
	KeyType       string
	TTL           time.Duration
	RenewFraction float64
	// SDSSocket is the Envoy SDS Unix socket; "" disables it.
	SDSSocket string
	// SDSTCPAddr also serves SDS over TCP with mTLS; "" disables it.
	SDSTCPAddr string
	// SDSTCPAllow are the SPIFFE IDs allowed on SDSTCPAddr. Default: ID.
	SDSTCPAllow []spiffeid.ID
	// SDSSPIFFEValidator serves SDS's trust bundles ("ROOTCA",
	// "spiffe://<td>", "ALL") as configs of Envoy's SPIFFE certificate
	// validator, as SPIRE's agent does (envoy.Config.SPIFFEValidator).
	// Default false: trusted CAs.
	SDSSPIFFEValidator bool
	// FederationRefresh is how often the CA is asked for the bundles of
	// the trust domains it federates with, served beside the SVID (the
	// Workload API's federated bundles; SDS with SDSSPIFFEValidator).
	// Default sds.DefaultFederationRefresh; negative: never asked (a CA
	// that federates with no one).
	FederationRefresh time.Duration
	// WorkloadSocket is the SPIFFE Workload API Unix socket; "" disables
	// it.
	WorkloadSocket string
	// MonitorAddr serves /healthz, /readyz and /metrics over plain HTTP;
	// "" disables it.
	MonitorAddr string
	// Clock drives renewals. Default the wall clock.
	Clock clock.Clock
	// Logger defaults to discarding.
	Logger *slog.Logger
}

func (c *Config) setDefaults() error {
	switch {
	case c.ID.IsZero():
		return errors.New("agent: SPIFFE ID is required")
	case c.CAAddr == "" && len(c.CAAddrs) == 0:
		return errors.New("agent: CA address is required")
	case c.CARootsFile == "":
		return errors.New("agent: CA roots file is required")
	case c.TokenFile != "" && c.JoinTokenFile != "":
		return errors.New("agent: a token file and a join token file: choose one")
	case c.TokenFile == "" && c.JoinTokenFile == "":
		return errors.New("agent: a token file (Kubernetes) or a join token file (elsewhere) is required")
	}
	if c.CAAddr != "" {
		c.CAAddrs = append([]string{c.CAAddr}, c.CAAddrs...)
		c.CAAddr = ""
	}
	for _, a := range c.CAAddrs {
		name, err := client.ServerName(a)
		if err != nil {
			return fmt.Errorf("agent: %w", err)
		}
		if len(c.CAAddrs) == 1 && c.CAServerName == "" {
			c.CAServerName = name
		}
	}
	if len(c.SDSTCPAllow) == 0 {
		c.SDSTCPAllow = []spiffeid.ID{c.ID}
	}
	c.Clock = clock.OrReal(c.Clock)
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

// Agent is a running agent.
type Agent struct {
	cfg     Config
	mgr     *sds.Manager
	reg     *prometheus.Registry
	metrics *metrics.Agent
	jwt     *sds.JWTCache // nil without a Workload API socket
	grpc    []*grpc.Server
	stopMon func()
	monAddr net.Addr
	sdsTCP  net.Addr
	cancel  context.CancelFunc
	wg      sync.WaitGroup
}

// Start builds the CA client and the Manager, starts renewing, and opens
// the servers. The first SVID arrives in the background; /readyz says when.
func Start(ctx context.Context, cfg Config) (_ *Agent, err error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	roots, err := readRoots(cfg.CARootsFile)
	if err != nil {
		return nil, err
	}
	token, renewWithSVID, err := cfg.credential()
	if err != nil {
		return nil, err
	}
	// The client presents the SVID the Manager publishes.
	svids := sds.NewStaticSource(nil)
	ccfg := client.Config{Addrs: cfg.CAAddrs, ServerName: cfg.CAServerName,
		LoadRoots: func() ([]byte, error) { return caRootsPEM(cfg.CARootsFile, svids) }}
	if renewWithSVID {
		ccfg.ClientCertificate = sds.ClientCertificate(svids, cfg.Clock)
	}
	cc, err := client.New(ccfg)
	if err != nil {
		return nil, err
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	am := metrics.NewAgent(reg)
	mgr, err := sds.NewManager(sds.Config{
		ID: cfg.ID, CA: cc, Token: token, RenewWithSVID: renewWithSVID, KeyType: cfg.KeyType, TTL: cfg.TTL,
		RenewFraction: cfg.RenewFraction, Roots: roots, LoadRoots: func() ([]*x509.Certificate, error) { return readRoots(cfg.CARootsFile) },
		Publish: svids, Clock: cfg.Clock, Logger: cfg.Logger, Metrics: am,
	})
	if err != nil {
		_ = cc.Close() // nothing was sent on it
		return nil, err
	}
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	a := &Agent{cfg: cfg, mgr: mgr, reg: reg, metrics: am, cancel: cancel}
	if cfg.WorkloadSocket != "" {
		if err := a.startJWT(runCtx, ccfg, token, renewWithSVID); err != nil {
			cancel()
			_ = cc.Close() // nothing was sent on it
			return nil, err
		}
	}
	if err := a.startFederation(runCtx, ccfg); err != nil {
		cancel()
		_ = cc.Close() // nothing was sent on it
		return nil, err
	}
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		defer func() { _ = cc.Close() }()
		if err := mgr.Run(runCtx); err != nil && !errors.Is(err, context.Canceled) {
			cfg.Logger.Error("agent stopped renewing", "err", err)
		}
	}()
	if err := a.serve(runCtx); err != nil {
		_ = a.Stop() // the serve error is the one to report
		return nil, err
	}
	cfg.Logger.Info("agent started", "spiffe_id", cfg.ID.String(), "ca", cfg.CAAddrs, "sds", cfg.SDSSocket, "workload_api", cfg.WorkloadSocket)
	return a, nil
}

// startJWT makes the JWT-SVID cache of the Workload API, with a CA client
// of its own (so that a redial for a renewed SVID never cuts a JWT call)
// and the CSRs' credential: the ServiceAccount token, or the X.509-SVID
// over mTLS.
func (a *Agent) startJWT(ctx context.Context, ccfg client.Config, token func(context.Context) (string, error), renewWithSVID bool) error {
	jc, err := client.New(ccfg)
	if err != nil {
		return err
	}
	jcfg := sds.JWTConfig{ID: a.cfg.ID, CA: jc, Token: token, Clock: a.cfg.Clock, Logger: a.cfg.Logger}
	if renewWithSVID {
		jcfg.Token = nil // the join token is single-use: the SVID proves the workload
	}
	if a.jwt, err = sds.NewJWTCache(jcfg); err != nil {
		_ = jc.Close() // nothing was sent on it
		return err
	}
	a.wg.Go(func() {
		defer func() { _ = jc.Close() }()
		_ = a.jwt.Run(ctx) // ends with ctx
	})
	return nil
}

// startFederation asks the CA for the federated trust domains' bundles
// every FederationRefresh, on a client of its own without a client
// certificate (bundles are public; a redial for a renewed SVID never cuts
// the call).
func (a *Agent) startFederation(ctx context.Context, ccfg client.Config) error {
	if a.cfg.FederationRefresh < 0 {
		return nil
	}
	ccfg.ClientCertificate = nil
	fc, err := client.New(ccfg)
	if err != nil {
		return err
	}
	a.wg.Go(func() {
		defer func() { _ = fc.Close() }()
		_ = a.mgr.RunFederation(ctx, fc, a.cfg.FederationRefresh) // ends with ctx
	})
	return nil
}

// credential returns what proves the workload on requests not made over
// mTLS, and whether renewals use the current SVID instead.
func (c *Config) credential() (token func(context.Context) (string, error), renewWithSVID bool, err error) {
	if c.TokenFile != "" {
		path := c.TokenFile
		return func(context.Context) (string, error) {
			b, err := os.ReadFile(path) // fresh every time: kubelet rotates it
			return strings.TrimSpace(string(b)), err
		}, false, nil
	}
	b, err := os.ReadFile(c.JoinTokenFile)
	if err != nil {
		return nil, false, fmt.Errorf("agent: join token: %w", err)
	}
	jt := strings.TrimSpace(string(b))
	return func(context.Context) (string, error) { return jt, nil }, true, nil
}

// Run starts the agent, serves until ctx ends, and stops it.
func Run(ctx context.Context, cfg Config) error {
	a, err := Start(ctx, cfg)
	if err != nil {
		return err
	}
	<-ctx.Done()
	return a.Stop()
}

// Stop ends the streams cleanly (the servers' Run and Close end them on
// cancel), lets the gRPC servers drain, and stops the Manager.
func (a *Agent) Stop() error {
	a.cancel()
	for _, g := range a.grpc {
		done := make(chan struct{})
		go func() { g.GracefulStop(); close(done) }()
		select {
		case <-done:
		case <-time.After(drainGrace):
			g.Stop()
		}
	}
	if a.stopMon != nil {
		a.stopMon()
	}
	a.wg.Wait()
	return nil
}

// Manager is the agent's SVID manager.
func (a *Agent) Manager() *sds.Manager { return a.mgr }

// MonitorAddr is the bound monitoring address, nil when disabled.
func (a *Agent) MonitorAddr() net.Addr { return a.monAddr }

// SDSTCPAddr is the bound SDS-over-TCP address, nil when disabled.
func (a *Agent) SDSTCPAddr() net.Addr { return a.sdsTCP }

// readRoots reads a PEM trust bundle: at least one certificate.
// caRootsPEM is what the CA client verifies the CA with: the --ca-roots
// file, and the roots served with the current SVID (which include those the
// CA announced), so that an agent whose file is never updated (a VM) still
// reaches the CA once a root rotation has moved it to the new root.
func caRootsPEM(path string, svids *sds.StaticSource) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if cur := svids.Current(); cur != nil {
		for _, r := range cur.Roots {
			b = append(b, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: r.Raw})...)
		}
	}
	return b, nil
}

func readRoots(path string) ([]*x509.Certificate, error) {
	roots, err := pki.ReadCertificates(path)
	if err != nil {
		return nil, fmt.Errorf("agent: CA roots: %w", err)
	}
	return roots, nil
}
