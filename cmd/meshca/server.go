package main

import (
	"errors"
	"fmt"
	"net"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/ca/plane"
	"github.com/meshca/meshca/internal/clock"
	"github.com/meshca/meshca/internal/dev"

	"github.com/meshca/meshca/internal/cli"
)

// serverOptions are the flags of `meshca server` (and, with other defaults,
// `meshca dev`). docs/configuration.md lists them; keep the two in step.
type serverOptions struct {
	cfg         plane.Config // the flags that need no parsing
	configFile  string
	trustDomain string
	cacertsDir  string
	cacertsNext string
	cacerts     ca.CACertsOptions
	kekFile     string
	keyType     string
	log         cli.LogOptions
}

func (o *serverOptions) addFlags(fs *pflag.FlagSet) {
	c := &o.cfg
	fs.StringVar(&o.configFile, "config", "", "YAML config file whose keys are these flag names (env MESHCA_CONFIG)")
	fs.StringVar(&o.trustDomain, "trust-domain", "cluster.local", "SPIFFE trust domain of every identity issued")
	fs.StringVar(&c.DataDir, "data-dir", "/var/lib/meshca", "directory of the data file meshca.db and its issuance journal meshca.journal (created 0700)")
	c.Storage.AddFlags(fs)
	fs.StringVar(&o.cacertsDir, "cacerts-dir", "", "Istio cacerts directory (ca-cert.pem, ca-key.pem, root-cert.pem, cert-chain.pem); empty: self-signed root kept in the data file")
	fs.StringVar(&o.cacertsNext, "cacerts-next-dir", "", "a second cacerts directory under a new root, staged for meshca ca rotate-root (read when the rotation starts and switches)")
	fs.BoolVar(&o.cacerts.SignDirectly, "cacerts-sign-directly", false, "sign workload certificates with ca-cert.pem's key, as istiod does, even when its path length allows meshca's own intermediate (pathlen 0 always does)")
	fs.StringVar(&o.kekFile, "kek-file", "", "file holding the 32-byte key-encryption key for private keys at rest (raw, hex or base64); env MESHCA_KEK may hold the key itself")
	fs.StringVar(&o.keyType, "key-type", string(ca.KeyECDSAP256), "CA key type: ecdsa-p256, ecdsa-p384, rsa-2048, rsa-3072 or rsa-4096")
	fs.DurationVar(&c.RootTTL, "root-ttl", ca.DefaultRootTTL, "lifetime of a generated self-signed root")
	fs.DurationVar(&c.IntermediateTTL, "intermediate-ttl", ca.DefaultIntermediateTTL, "lifetime of the signing intermediate (rotated at half of it)")
	fs.DurationVar(&c.DefaultTTL, "default-ttl", ca.DefaultLeafTTL, "workload certificate lifetime when none is requested")
	fs.DurationVar(&c.MaxTTL, "max-ttl", ca.DefaultMaxLeafTTL, "longest workload certificate lifetime a caller may request")
	fs.DurationVar(&c.RootRotationOverlap, "root-rotation-overlap", 0, "least time a new root is published beside the old one before intermediates switch to it; 0: --default-ttl (raise it to the longest lifetime workloads request)")
	fs.BoolVar(&c.RootRotationCrossSign, "root-rotation-cross-sign", false, "during a root rotation, also certify each new intermediate by the old root, for clients that trust only the old root (a root meshca holds only)")
	fs.DurationVar(&c.Retention, "retention", ca.DefaultRetention, "how long issuance records are kept after the certificate expires")
	fs.StringVar(&c.GRPCAddr, "grpc-listen", ":15012", "gRPC CSR API (Istio CA service) address; empty disables")
	fs.StringVar(&c.HTTPSAddr, "https-listen", ":8443", "HTTPS/JSON API address; empty disables")
	fs.StringVar(&c.MonitorAddr, "monitoring-listen", ":15014", "plain-HTTP /healthz, /readyz and /metrics address; empty disables")
	fs.BoolVar(&c.Profiling, "profiling", false, "serve Go's profiler at /debug/pprof/ on the monitoring listener")
	fs.StringSliceVar(&c.DNSNames, "dns-names", []string{"localhost"}, "DNS SANs of the server's TLS certificate")
	fs.IPSliceVar(&c.IPs, "ip-sans", []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}, "IP SANs of the server's TLS certificate")
	c.Limits.AddFlags(fs)
	c.JWT.AddFlags(fs)
	c.Kubernetes.AddFlags(fs)
	c.LeaderElection.AddFlags(fs)
	c.Bundles.AddFlags(fs)
	c.PodCertificates.AddFlags(fs)
	c.Federation.AddFlags(fs)
	c.Vault.AddFlags(fs)
	fs.StringVar(&c.OIDCConfigFile, "oidc-config", "", "YAML file listing trusted OIDC issuers and how their claims map to SPIFFE IDs (docs/configuration.md)")
	fs.StringVar(&c.AdminTokenFile, "admin-token-file", "", "bearer token for the admin API (join tokens); created 0600 with a random token if missing (default <data-dir>/admin-token)")
	o.log.AddFlags(fs)
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
			cfg, err := o.planeConfig(cmd)
			if err != nil {
				return err
			}
			return plane.Run(cmd.Context(), cfg)
		},
	}
	o.addFlags(cmd.Flags())
	return cmd
}

// planeConfig resolves the flags (environment, config file) and turns
// them into the CA plane's Config.
func (o *serverOptions) planeConfig(cmd *cobra.Command) (plane.Config, error) {
	if err := cli.Resolve(cmd.Flags(), &o.configFile); err != nil {
		return plane.Config{}, err
	}
	log, err := o.log.Logger(cmd.ErrOrStderr())
	if err != nil {
		return plane.Config{}, err
	}
	cfg := o.cfg
	if cfg.TrustDomain, err = spiffeid.TrustDomainFromString(o.trustDomain); err != nil {
		return plane.Config{}, fmt.Errorf("--trust-domain: %w", err)
	}
	if cfg.KeyType, err = ca.ParseKeyType(o.keyType); err != nil {
		return plane.Config{}, fmt.Errorf("--key-type: %w", err)
	}
	if cfg.KEK, err = loadKEK(o.kekFile); err != nil {
		return plane.Config{}, err
	}
	if o.cacertsNext != "" {
		cfg.NextParent = ca.StagedCACerts(o.cacertsNext, o.cacerts)
	}
	if o.cacertsDir != "" {
		if cfg.Parent, err = ca.LoadCACerts(o.cacertsDir, clock.Real{}.Now(), o.cacerts); err != nil {
			return plane.Config{}, err
		}
	} else if o.cacerts.SignDirectly {
		return plane.Config{}, errors.New("--cacerts-sign-directly needs --cacerts-dir")
	}
	switch k := cfg.Kubernetes; {
	case k.Mode == "": // plane takes "" as off; the flag must say it
		return plane.Config{}, errors.New(`--k8s-attestation must be off, informer, tokenreview or jwks, not ""`)
	case k.JWKSURL != "" && k.JWKSFile != "":
		return plane.Config{}, errors.New("--k8s-jwks-url and --k8s-jwks-file: choose one")
	}
	if cfg.Kubernetes.Deny == nil {
		cfg.Kubernetes.Deny = []string{} // --deny-namespaces "" denies nothing
	}
	cfg.UserAgent, cfg.Logger = "meshca/"+version, log
	return cfg, nil
}

// loadKEK reads the key-encryption key from --kek-file or MESHCA_KEK.
func loadKEK(path string) ([]byte, error) {
	raw, err := cli.Secret("kek-file", path, cli.EnvName("kek"))
	if raw == nil || err != nil {
		return nil, err
	}
	return ca.ParseKEK(raw)
}

func newDevCmd() *cobra.Command {
	var (
		o   serverOptions
		cfg dev.Config
	)
	cmd := &cobra.Command{
		Use:   "dev",
		Short: "Run a local identity plane for development (what `make run` starts)",
		Long: "Run the CA on 127.0.0.1 with its data under .meshca/, write the trust bundle, and issue one\n" +
			"demo SVID to .meshca/demo/ through the real gRPC CSR API, authenticated with a development\n" +
			"token (.meshca/dev-token) that proves the demo identity. A second run reuses the same root.\n" +
			"The development token attestor exists only in this command.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			pc, err := o.planeConfig(cmd)
			if err != nil {
				return err
			}
			cfg.Plane, cfg.Out = pc, cmd.OutOrStdout()
			return dev.Run(cmd.Context(), cfg)
		},
	}
	o.addFlags(cmd.Flags())
	fs := cmd.Flags()
	for name, val := range map[string]string{
		"data-dir":          ".meshca",
		"grpc-listen":       "127.0.0.1:15012",
		"https-listen":      "127.0.0.1:8443",
		"monitoring-listen": "127.0.0.1:15014",
		"log-level":         "warn",
		"bundle-configmap":  "", // a laptop's run writes nothing into a cluster
	} {
		f := fs.Lookup(name)
		f.DefValue = val
		_ = f.Value.Set(val) // valid defaults of existing flags
	}
	fs.BoolVar(&cfg.Once, "once", false, "exit after issuing the demo SVID instead of serving until interrupted")
	fs.BoolVar(&cfg.NoAgent, "no-agent", false, "do not start the agent (SDS and Workload API on <data-dir>/sockets/)")
	fs.StringVar(&cfg.Namespace, "demo-namespace", "default", "namespace of the demo identity")
	fs.StringVar(&cfg.ServiceAccount, "demo-service-account", "demo", "service account of the demo identity")
	return cmd
}
