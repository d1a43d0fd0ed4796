package main

import (
	"errors"
	"fmt"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshca/meshca/sds"
	"github.com/meshca/meshca/sds/agent"

	"github.com/meshca/meshca/internal/cli"
)

// agentOptions are the flags of `meshca agent`.
type agentOptions struct {
	cfg            agent.Config // the flags that need no parsing
	configFile     string
	trustDomain    string
	spiffeID       string
	namespace      string
	serviceAccount string
	sdsTCPAllow    []string
	log            cli.LogOptions
}

func (o *agentOptions) addFlags(fs *pflag.FlagSet) {
	c := &o.cfg
	fs.StringVar(&o.configFile, "config", "", "YAML config file whose keys are these flag names (env MESHCA_CONFIG)")
	fs.StringSliceVar(&c.CAAddrs, "ca-addr", []string{"127.0.0.1:15012"}, "the CA's gRPC CSR API address; several replicas' addresses comma-separated or repeated, or one name resolving to several")
	fs.StringVar(&c.CARootsFile, "ca-roots", "", "PEM trust bundle (e.g. a mounted ConfigMap): verifies the CA and is served until the CA sends its own (required)")
	fs.StringVar(&c.CAServerName, "ca-server-name", "", "name expected in every CA replica's certificate (default: the host of --ca-addr, localhost for 127.0.0.1; with several, each replica's own)")
	fs.StringVar(&o.trustDomain, "trust-domain", "cluster.local", "trust domain, with --namespace and --service-account")
	fs.StringVar(&o.spiffeID, "spiffe-id", "", "the workload's SPIFFE ID; default spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>")
	fs.StringVar(&o.namespace, "namespace", "", "the workload's namespace (env MESHCA_NAMESPACE, e.g. from the downward API)")
	fs.StringVar(&o.serviceAccount, "service-account", "", "the workload's ServiceAccount (env MESHCA_SERVICE_ACCOUNT)")
	fs.StringVar(&c.TokenFile, "token-file", "", "projected ServiceAccount token, read anew for every request (kubelet rotates it)")
	fs.StringVar(&c.JoinTokenFile, "join-token-file", "", "single-use join token for the first certificate outside Kubernetes; renewals then use the current SVID over mTLS")
	fs.StringVar(&c.KeyType, "key-type", sds.KeyECDSAP256, "workload key type: ecdsa-p256, ecdsa-p384, rsa-2048, rsa-3072 or rsa-4096")
	fs.DurationVar(&c.TTL, "ttl", 0, "requested certificate lifetime (0: the CA's default)")
	fs.Float64Var(&c.RenewFraction, "renew-fraction", sds.DefaultRenewFraction, "renew at this fraction of the lifetime (±10 % jitter)")
	fs.StringVar(&c.SDSSocket, "sds-socket", "/var/run/meshca/sds.sock", "Envoy SDS Unix socket (0660, directory 0700); empty disables")
	fs.StringVar(&c.SDSTCPAddr, "sds-tcp-listen", "", "also serve SDS over TCP with mTLS (e.g. for a gateway's Envoy elsewhere); empty disables")
	fs.StringSliceVar(&o.sdsTCPAllow, "sds-tcp-allow", nil, "SPIFFE IDs allowed on --sds-tcp-listen (default: the workload's own)")
	fs.BoolVar(&c.SDSSPIFFEValidator, "sds-spiffe-validator", false, "serve SDS's ROOTCA, spiffe://<td> and ALL as Envoy SPIFFE validator configs (envoy.tls.cert_validator.spiffe), as SPIRE does")
	fs.DurationVar(&c.FederationRefresh, "federation-refresh", sds.DefaultFederationRefresh, "how often the CA is asked for the bundles of the trust domains it federates with (served in the Workload API's federated bundles, and over SDS with --sds-spiffe-validator)")
	fs.StringVar(&c.WorkloadSocket, "workload-api-socket", "/var/run/meshca/workload.sock", "SPIFFE Workload API Unix socket; empty disables")
	fs.StringVar(&c.MonitorAddr, "monitoring-listen", "127.0.0.1:15020", "plain-HTTP /healthz, /readyz (not ready without a valid SVID) and /metrics; empty disables")
	o.log.AddFlags(fs)
}

func newAgentCmd() *cobra.Command {
	var o agentOptions
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Keep a workload's SVID fresh and serve it to Envoy (SDS) and the SPIFFE Workload API",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := cli.Resolve(cmd.Flags(), &o.configFile); err != nil {
				return err
			}
			log, err := o.log.Logger(cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			cfg, err := o.config()
			if err != nil {
				return err
			}
			cfg.Logger = log
			return agent.Run(cmd.Context(), cfg)
		},
	}
	o.addFlags(cmd.Flags())
	return cmd
}

// config turns the flags into the agent's Config.
func (o *agentOptions) config() (agent.Config, error) {
	cfg := o.cfg
	var err error
	if cfg.ID, err = o.identity(); err != nil {
		return agent.Config{}, err
	}
	switch {
	case cfg.CARootsFile == "":
		return agent.Config{}, errors.New("--ca-roots is required")
	case cfg.TokenFile != "" && cfg.JoinTokenFile != "":
		return agent.Config{}, errors.New("--token-file and --join-token-file: choose one")
	case cfg.TokenFile == "" && cfg.JoinTokenFile == "":
		return agent.Config{}, errors.New("give --token-file (Kubernetes) or --join-token-file (elsewhere)")
	}
	for _, raw := range o.sdsTCPAllow {
		id, err := spiffeid.FromString(raw)
		if err != nil {
			return agent.Config{}, fmt.Errorf("--sds-tcp-allow: %w", err)
		}
		cfg.SDSTCPAllow = append(cfg.SDSTCPAllow, id)
	}
	return cfg, nil
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
