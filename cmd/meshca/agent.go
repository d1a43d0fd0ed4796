package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/meshca/meshca/ca/client"
	"github.com/meshca/meshca/internal/clock"
	"github.com/meshca/meshca/internal/metrics"
	"github.com/meshca/meshca/sds"
	"github.com/meshca/meshca/sds/envoy"
	"github.com/meshca/meshca/sds/socket"
	"github.com/meshca/meshca/sds/workload"
)

// agentOptions are the flags of `meshca agent`.
type agentOptions struct {
	configFile     string
	caAddr         string
	caRoots        string
	caServerName   string
	trustDomain    string
	spiffeID       string
	namespace      string
	serviceAccount string
	tokenFile      string
	joinTokenFile  string
	keyType        string
	ttl            time.Duration
	renewFraction  float64
	sdsSocket      string
	sdsTCPListen   string
	sdsTCPAllow    []string
	workloadSocket string
	monitorListen  string
	log            logOptions
}

func (o *agentOptions) addFlags(fs *pflag.FlagSet) {
	fs.StringVar(&o.configFile, "config", "", "YAML config file whose keys are these flag names (env MESHCA_CONFIG)")
	fs.StringVar(&o.caAddr, "ca-addr", "127.0.0.1:15012", "the CA's gRPC CSR API address")
	fs.StringVar(&o.caRoots, "ca-roots", "", "PEM trust bundle (e.g. a mounted ConfigMap): verifies the CA and is served until the CA sends its own (required)")
	fs.StringVar(&o.caServerName, "ca-server-name", "", "name expected in the CA's certificate (default: the host of --ca-addr; localhost for 127.0.0.1)")
	fs.StringVar(&o.trustDomain, "trust-domain", "cluster.local", "trust domain, with --namespace and --service-account")
	fs.StringVar(&o.spiffeID, "spiffe-id", "", "the workload's SPIFFE ID; default spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>")
	fs.StringVar(&o.namespace, "namespace", "", "the workload's namespace (env MESHCA_NAMESPACE, e.g. from the downward API)")
	fs.StringVar(&o.serviceAccount, "service-account", "", "the workload's ServiceAccount (env MESHCA_SERVICE_ACCOUNT)")
	fs.StringVar(&o.tokenFile, "token-file", "", "projected ServiceAccount token, read anew for every request (kubelet rotates it)")
	fs.StringVar(&o.joinTokenFile, "join-token-file", "", "single-use join token for the first certificate outside Kubernetes; renewals then use the current SVID over mTLS")
	fs.StringVar(&o.keyType, "key-type", sds.KeyECDSAP256, "workload key type: ecdsa-p256, ecdsa-p384, rsa-2048, rsa-3072 or rsa-4096")
	fs.DurationVar(&o.ttl, "ttl", 0, "requested certificate lifetime (0: the CA's default)")
	fs.Float64Var(&o.renewFraction, "renew-fraction", sds.DefaultRenewFraction, "renew at this fraction of the lifetime (±10 % jitter)")
	fs.StringVar(&o.sdsSocket, "sds-socket", "/var/run/meshca/sds.sock", "Envoy SDS Unix socket (0660, directory 0700); empty disables")
	fs.StringVar(&o.sdsTCPListen, "sds-tcp-listen", "", "also serve SDS over TCP with mTLS (e.g. for a gateway's Envoy elsewhere); empty disables")
	fs.StringSliceVar(&o.sdsTCPAllow, "sds-tcp-allow", nil, "SPIFFE IDs allowed on --sds-tcp-listen (default: the workload's own)")
	fs.StringVar(&o.workloadSocket, "workload-api-socket", "/var/run/meshca/workload.sock", "SPIFFE Workload API Unix socket; empty disables")
	fs.StringVar(&o.monitorListen, "monitoring-listen", "127.0.0.1:15020", "plain-HTTP /healthz, /readyz (not ready without a valid SVID) and /metrics; empty disables")
	o.log.addFlags(fs)
}

func newAgentCmd() *cobra.Command {
	var o agentOptions
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Keep a workload's SVID fresh and serve it to Envoy (SDS) and the SPIFFE Workload API",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := resolveFlags(cmd.Flags(), &o.configFile); err != nil {
				return err
			}
			log, err := o.log.logger(cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			a, err := startAgent(cmd.Context(), &o, log, nil)
			if err != nil {
				return err
			}
			<-cmd.Context().Done()
			return a.stop()
		},
	}
	o.addFlags(cmd.Flags())
	return cmd
}

// agent is a running agent: the manager and its servers.
type agent struct {
	mgr     *sds.Manager
	grpc    []*grpc.Server
	mon     *http.Server
	monAddr net.Addr
	sdsTCP  net.Addr
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	log     *slog.Logger
	reg     *prometheus.Registry
	metrics *metrics.Agent
	clock   clock.Clock
}

// identity resolves the workload's SPIFFE ID from the options.
func (o *agentOptions) identity() (spiffeid.ID, error) {
	if o.spiffeID != "" {
		return spiffeid.FromString(o.spiffeID)
	}
	if o.namespace == "" || o.serviceAccount == "" {
		return spiffeid.ID{}, errors.New("give --spiffe-id, or --namespace and --service-account")
	}
	td, err := spiffeid.TrustDomainFromString(o.trustDomain)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("--trust-domain: %w", err)
	}
	return spiffeid.FromSegments(td, "ns", o.namespace, "sa", o.serviceAccount)
}

// startAgent builds the manager and servers and starts them. clk nil is
// the wall clock.
func startAgent(ctx context.Context, o *agentOptions, log *slog.Logger, clk clock.Clock) (*agent, error) {
	id, err := o.identity()
	if err != nil {
		return nil, err
	}
	if o.caRoots == "" {
		return nil, errors.New("--ca-roots is required")
	}
	rootsPEM, err := os.ReadFile(o.caRoots)
	if err != nil {
		return nil, fmt.Errorf("--ca-roots: %w", err)
	}
	roots, err := parseRoots(rootsPEM)
	if err != nil {
		return nil, fmt.Errorf("--ca-roots %s: %w", o.caRoots, err)
	}
	var (
		token         func(context.Context) (string, error)
		renewWithSVID bool
	)
	switch {
	case o.tokenFile != "" && o.joinTokenFile != "":
		return nil, errors.New("--token-file and --join-token-file: choose one")
	case o.tokenFile != "":
		path := o.tokenFile
		token = func(context.Context) (string, error) {
			b, err := os.ReadFile(path) // fresh every time: kubelet rotates it
			return strings.TrimSpace(string(b)), err
		}
	case o.joinTokenFile != "":
		b, err := os.ReadFile(o.joinTokenFile)
		if err != nil {
			return nil, fmt.Errorf("--join-token-file: %w", err)
		}
		jt := strings.TrimSpace(string(b))
		token = func(context.Context) (string, error) { return jt, nil }
		renewWithSVID = true
	default:
		return nil, errors.New("give --token-file (Kubernetes) or --join-token-file (elsewhere)")
	}
	serverName := o.caServerName
	if serverName == "" {
		host, _, err := net.SplitHostPort(o.caAddr)
		if err != nil {
			return nil, fmt.Errorf("--ca-addr: %w", err)
		}
		serverName = host
		if ip := net.ParseIP(host); ip != nil && (ip.IsLoopback() || ip.IsUnspecified()) {
			serverName = "localhost"
		}
	}
	// The manager is created after the client but the client asks it for
	// the current SVID at every call: tie them through a variable.
	var mgr *sds.Manager
	rootsPath := o.caRoots
	ccfg := client.Config{Addr: o.caAddr, ServerName: serverName,
		LoadRoots: func() ([]byte, error) { return os.ReadFile(rootsPath) }}
	if renewWithSVID {
		ccfg.ClientCertificate = func() (*tls.Certificate, error) { return mgr.ClientCertificate() }
	}
	cc, err := client.New(ccfg)
	if err != nil {
		return nil, err
	}
	loadRoots := func() ([]*x509.Certificate, error) { // the mounted bundle, re-read before each request
		b, err := os.ReadFile(rootsPath)
		if err != nil {
			return nil, err
		}
		return parseRoots(b)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	am := metrics.NewAgent(reg)
	mgr, err = sds.NewManager(sds.Config{
		ID: id, CA: cc, Token: token, RenewWithSVID: renewWithSVID, KeyType: o.keyType, TTL: o.ttl,
		RenewFraction: o.renewFraction, Roots: roots, LoadRoots: loadRoots, Clock: clk, Logger: log, Metrics: am,
	})
	if err != nil {
		cc.Close()
		return nil, err
	}
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	a := &agent{mgr: mgr, cancel: cancel, log: log, reg: reg, metrics: am, clock: clock.OrReal(clk)}
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		defer cc.Close()
		if err := mgr.Run(runCtx); err != nil && !errors.Is(err, context.Canceled) {
			log.Error("agent stopped renewing", "err", err)
		}
	}()
	if err := a.serve(runCtx, o); err != nil {
		a.stop()
		return nil, err
	}
	log.Info("agent started", "spiffe_id", id.String(), "ca", o.caAddr, "sds", o.sdsSocket, "workload_api", o.workloadSocket)
	return a, nil
}

// serve starts the SDS and Workload API servers and the monitoring port.
func (a *agent) serve(ctx context.Context, o *agentOptions) error {
	type api struct {
		path     string
		register func(*grpc.Server) error
	}
	var sdsServer *envoy.Server
	if o.sdsSocket != "" || o.sdsTCPListen != "" {
		s, err := envoy.New(envoy.Config{Source: a.mgr, Logger: a.log, Metrics: a.metrics})
		if err != nil {
			return err
		}
		sdsServer = s
		a.wg.Add(1)
		go func() { defer a.wg.Done(); s.Run(ctx) }()
	}
	if o.sdsTCPListen != "" {
		if err := a.serveSDSOverTCP(o, sdsServer); err != nil {
			return err
		}
	}
	apis := []api{
		{o.sdsSocket, func(g *grpc.Server) error {
			sdsServer.Register(g)
			return nil
		}},
		{o.workloadSocket, func(g *grpc.Server) error {
			s, err := workload.New(workload.Config{Source: a.mgr, Logger: a.log})
			if err != nil {
				return err
			}
			s.Register(g)
			go func() { <-ctx.Done(); s.Close() }()
			return nil
		}},
	}
	for _, ap := range apis {
		if ap.path == "" {
			continue
		}
		ln, err := socket.Listen(ap.path, a.log)
		if err != nil {
			return err
		}
		g := grpc.NewServer(grpc.Creds(socket.Credentials()), grpc.MaxRecvMsgSize(1<<20))
		if err := ap.register(g); err != nil {
			ln.Close()
			return err
		}
		a.grpc = append(a.grpc, g)
		a.wg.Add(1)
		go func() { defer a.wg.Done(); g.Serve(ln) }()
	}
	if o.monitorListen != "" {
		mux := http.NewServeMux()
		mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
		mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
			if err := a.mgr.Ready(a.clock.Now()); err != nil {
				http.Error(w, err.Error(), http.StatusServiceUnavailable)
				return
			}
			fmt.Fprintf(w, "ok: SVID valid until %s\n", a.mgr.Current().NotAfter().UTC().Format(time.RFC3339))
		})
		mux.Handle("GET /metrics", promhttp.HandlerFor(a.reg, promhttp.HandlerOpts{}))
		ln, err := net.Listen("tcp", o.monitorListen)
		if err != nil {
			return fmt.Errorf("--monitoring-listen: %w", err)
		}
		a.monAddr = ln.Addr()
		a.mon = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		a.wg.Add(1)
		go func() { defer a.wg.Done(); a.mon.Serve(ln) }()
	}
	return nil
}

// serveSDSOverTCP serves SDS on TCP with mTLS: the agent presents the
// workload's SVID and accepts only the allowed SPIFFE IDs, verified against
// the current bundle (go-spiffe's tlsconfig, TLS 1.2 or later).
func (a *agent) serveSDSOverTCP(o *agentOptions, s *envoy.Server) error {
	var allowed []spiffeid.ID
	for _, raw := range o.sdsTCPAllow {
		id, err := spiffeid.FromString(raw)
		if err != nil {
			return fmt.Errorf("--sds-tcp-allow: %w", err)
		}
		allowed = append(allowed, id)
	}
	if len(allowed) == 0 {
		id, err := o.identity()
		if err != nil {
			return err
		}
		allowed = []spiffeid.ID{id}
	}
	src := sds.SPIFFESource{Source: a.mgr}
	tlsCfg := tlsconfig.MTLSServerConfig(src, src, tlsconfig.AuthorizeOneOf(allowed...))
	tlsCfg.MinVersion = tls.VersionTLS12
	ln, err := net.Listen("tcp", o.sdsTCPListen)
	if err != nil {
		return fmt.Errorf("--sds-tcp-listen: %w", err)
	}
	g := grpc.NewServer(grpc.Creds(credentials.NewTLS(tlsCfg)), grpc.MaxRecvMsgSize(1<<20))
	s.Register(g)
	a.sdsTCP = ln.Addr()
	a.grpc = append(a.grpc, g)
	a.wg.Add(1)
	go func() { defer a.wg.Done(); g.Serve(ln) }()
	return nil
}

// stop ends the streams cleanly (the servers' Run and Close end them on
// cancel), lets the gRPC servers drain, and stops the manager.
func (a *agent) stop() error {
	a.cancel()
	for _, g := range a.grpc {
		done := make(chan struct{})
		go func() { g.GracefulStop(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			g.Stop()
		}
	}
	if a.mon != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		a.mon.Shutdown(ctx)
		cancel()
	}
	a.wg.Wait()
	return nil
}

func parseRoots(b []byte) ([]*x509.Certificate, error) { return parseChainPEM(b) }
