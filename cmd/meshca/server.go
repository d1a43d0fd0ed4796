package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshca/meshca/attestor"
	"github.com/meshca/meshca/attestor/jointoken"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/ca/server"
	"github.com/meshca/meshca/ca/store/boltstore"
	"github.com/meshca/meshca/internal/clock"
	"github.com/meshca/meshca/internal/metrics"
)

// serverOptions are the flags of `meshca server` (and, with other defaults,
// `meshca dev`). docs/configuration.md lists them; keep the two in step.
type serverOptions struct {
	configFile      string
	trustDomain     string
	dataDir         string
	cacertsDir      string
	kekFile         string
	keyType         string
	rootTTL         time.Duration
	intermediateTTL time.Duration
	defaultTTL      time.Duration
	maxTTL          time.Duration
	retention       time.Duration
	grpcListen      string
	httpsListen     string
	monitorListen   string
	dnsNames        []string
	ipSANs          []net.IP
	maxRequestBytes int
	requestTimeout  time.Duration
	adminTokenFile  string
	k8s             k8sOptions
	oidcConfig      string
	log             logOptions
}

func (o *serverOptions) addFlags(fs *pflag.FlagSet) {
	fs.StringVar(&o.configFile, "config", "", "YAML config file whose keys are these flag names (env MESHCA_CONFIG)")
	fs.StringVar(&o.trustDomain, "trust-domain", "cluster.local", "SPIFFE trust domain of every identity issued")
	fs.StringVar(&o.dataDir, "data-dir", "/var/lib/meshca", "directory of the bbolt data file meshca.db (created 0700)")
	fs.StringVar(&o.cacertsDir, "cacerts-dir", "", "Istio cacerts directory (ca-cert.pem, ca-key.pem, root-cert.pem, cert-chain.pem); empty: self-signed root kept in the data file")
	fs.StringVar(&o.kekFile, "kek-file", "", "file holding the 32-byte key-encryption key for private keys at rest (raw, hex or base64); env MESHCA_KEK may hold the key itself")
	fs.StringVar(&o.keyType, "key-type", string(ca.KeyECDSAP256), "CA key type: ecdsa-p256, ecdsa-p384, rsa-2048, rsa-3072 or rsa-4096")
	fs.DurationVar(&o.rootTTL, "root-ttl", ca.DefaultRootTTL, "lifetime of a generated self-signed root")
	fs.DurationVar(&o.intermediateTTL, "intermediate-ttl", ca.DefaultIntermediateTTL, "lifetime of the signing intermediate (rotated at half of it)")
	fs.DurationVar(&o.defaultTTL, "default-ttl", ca.DefaultLeafTTL, "workload certificate lifetime when none is requested")
	fs.DurationVar(&o.maxTTL, "max-ttl", ca.DefaultMaxLeafTTL, "longest workload certificate lifetime a caller may request")
	fs.DurationVar(&o.retention, "retention", ca.DefaultRetention, "how long issuance records are kept after the certificate expires")
	fs.StringVar(&o.grpcListen, "grpc-listen", ":15012", "gRPC CSR API (Istio CA service) address; empty disables")
	fs.StringVar(&o.httpsListen, "https-listen", ":8443", "HTTPS/JSON API address; empty disables")
	fs.StringVar(&o.monitorListen, "monitoring-listen", ":15014", "plain-HTTP /healthz, /readyz and /metrics address; empty disables")
	fs.StringSliceVar(&o.dnsNames, "dns-names", []string{"localhost"}, "DNS SANs of the server's TLS certificate")
	fs.IPSliceVar(&o.ipSANs, "ip-sans", []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}, "IP SANs of the server's TLS certificate")
	fs.IntVar(&o.maxRequestBytes, "max-request-bytes", server.DefaultMaxRequestBytes, "largest request message or body accepted")
	fs.DurationVar(&o.requestTimeout, "request-timeout", server.DefaultRequestTimeout, "deadline for one API call")
	o.k8s.addFlags(fs)
	fs.StringVar(&o.oidcConfig, "oidc-config", "", "YAML file listing trusted OIDC issuers and how their claims map to SPIFFE IDs (docs/configuration.md)")
	fs.StringVar(&o.adminTokenFile, "admin-token-file", "", "bearer token for the admin API (join tokens); created 0600 with a random token if missing (default <data-dir>/admin-token)")
	o.log.addFlags(fs)
}

func newServerCmd() *cobra.Command {
	var o serverOptions
	cmd := &cobra.Command{
		Use:   "server",
		Short: "Run the certificate authority",
		Long: "Run the certificate authority: the Istio-compatible gRPC CSR API, the HTTPS/JSON API and\n" +
			"the monitoring endpoints. Flags may also be given as MESHCA_<FLAG> environment variables or\n" +
			"as keys of the --config YAML file; the command line wins over the environment, which wins\n" +
			"over the file.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := o.resolve(cmd.Flags()); err != nil {
				return err
			}
			log, err := o.log.logger(cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			p, err := startPlane(cmd.Context(), &o, nil, log)
			if err != nil {
				return err
			}
			<-cmd.Context().Done()
			return p.stop()
		},
	}
	o.addFlags(cmd.Flags())
	return cmd
}

// resolve applies the environment and config file to flags not given.
func (o *serverOptions) resolve(fs *pflag.FlagSet) error { return resolveFlags(fs, &o.configFile) }

// plane is a running CA: store, authority, servers and background loops.
type plane struct {
	store  *boltstore.Store
	auth   *ca.Authority
	srv    *server.Server
	cancel context.CancelFunc
	done   chan struct{}
	log    *slog.Logger
}

// startPlane opens the data file, loads or creates the CA, and starts the
// listeners and the rotation loop. extra attestors are tried after mTLS.
func startPlane(ctx context.Context, o *serverOptions, extra []attestor.Attestor, log *slog.Logger) (*plane, error) {
	td, err := spiffeid.TrustDomainFromString(o.trustDomain)
	if err != nil {
		return nil, fmt.Errorf("--trust-domain: %w", err)
	}
	keyType, err := ca.ParseKeyType(o.keyType)
	if err != nil {
		return nil, fmt.Errorf("--key-type: %w", err)
	}
	kek, err := loadKEK(o.kekFile)
	if err != nil {
		return nil, err
	}
	if kek == nil {
		log.Warn("no key-encryption key: CA private keys are stored unencrypted, protected only by the data file's 0600 mode (see SECURITY.md)")
	}
	clk := clock.Real{}
	var parent ca.Parent
	if o.cacertsDir != "" {
		lp, err := ca.LoadCACerts(o.cacertsDir, clk.Now())
		if err != nil {
			return nil, err
		}
		parent = lp
	}
	if err := os.MkdirAll(o.dataDir, 0o700); err != nil {
		return nil, fmt.Errorf("data dir: %w", err)
	}
	st, err := boltstore.Open(filepath.Join(o.dataDir, "meshca.db"), boltstore.Options{Logger: log})
	if err != nil {
		return nil, err
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	auth, err := ca.New(ctx, ca.Config{
		TrustDomain:     td,
		Store:           st,
		Parent:          parent,
		KeyType:         keyType,
		KEK:             kek,
		RootTTL:         o.rootTTL,
		IntermediateTTL: o.intermediateTTL,
		DefaultTTL:      o.defaultTTL,
		MaxTTL:          o.maxTTL,
		Retention:       o.retention,
		Clock:           clk,
		Logger:          log,
		Metrics:         metrics.NewCA(reg),
	})
	if err != nil {
		st.Close()
		return nil, err
	}
	renewal, err := attestor.NewMTLS(attestor.MTLSConfig{Bundles: auth, Revocations: auth, Clock: clk})
	if err != nil {
		st.Close()
		return nil, err
	}
	adminToken, err := secretFile(o.adminTokenPath())
	if err != nil {
		st.Close()
		return nil, fmt.Errorf("admin token: %w", err)
	}
	chain := attestor.Chain{renewal, jointoken.New(st, clk, log)}
	tokenAttestors, err := o.tokenAttestors(ctx, td, clk, log, reg)
	if err != nil {
		st.Close()
		return nil, err
	}
	chain = append(append(chain, tokenAttestors...), extra...)
	srv, err := server.New(server.Config{
		Authority:       auth,
		Attestor:        chain,
		AdminToken:      adminToken,
		JoinTokens:      st,
		GRPCAddr:        o.grpcListen,
		HTTPSAddr:       o.httpsListen,
		MonitorAddr:     o.monitorListen,
		DNSNames:        o.dnsNames,
		IPs:             o.ipSANs,
		MaxRequestBytes: o.maxRequestBytes,
		RequestTimeout:  o.requestTimeout,
		Registry:        reg,
		Clock:           clk,
		Logger:          log,
	})
	if err != nil {
		st.Close()
		return nil, err
	}
	if err := srv.Start(); err != nil {
		st.Close()
		return nil, err
	}
	// The bundle beside the data file is for local clients (meshca token,
	// scripts); workloads get it from the APIs.
	if err := writeFile(filepath.Join(o.dataDir, "bundle.pem"), auth.RootsPEM(), 0o644); err != nil {
		srv.Shutdown(context.Background())
		st.Close()
		return nil, err
	}
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	p := &plane{store: st, auth: auth, srv: srv, cancel: cancel, done: make(chan struct{}), log: log}
	go func() {
		defer close(p.done)
		if err := auth.Run(runCtx); err != nil && !errors.Is(err, context.Canceled) {
			log.Error("rotation loop stopped", "err", err)
		}
	}()
	return p, nil
}

// stop shuts the servers down gracefully, then the loops and the store.
func (p *plane) stop() error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := p.srv.Shutdown(ctx)
	p.cancel()
	<-p.done
	p.log.Info("stopped")
	return errors.Join(err, p.store.Close())
}

// adminTokenPath is --admin-token-file or its default in the data dir.
func (o *serverOptions) adminTokenPath() string {
	if o.adminTokenFile != "" {
		return o.adminTokenFile
	}
	return filepath.Join(o.dataDir, "admin-token")
}

// loadKEK reads the key-encryption key from path or from MESHCA_KEK; both
// at once is an error, so it is never unclear which key is in use.
func loadKEK(path string) ([]byte, error) {
	env, envSet := os.LookupEnv(envName("kek"))
	var raw []byte
	switch {
	case path != "" && envSet:
		return nil, errors.New("both --kek-file and MESHCA_KEK are set: choose one")
	case path != "":
		if err := checkSecretMode(path); err != nil {
			return nil, fmt.Errorf("--kek-file: %w", err)
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("--kek-file: %w", err)
		}
		raw = b
	case envSet:
		raw = []byte(env)
	default:
		return nil, nil
	}
	return ca.ParseKEK(raw)
}
