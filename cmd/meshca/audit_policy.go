package main

import (
	"context"
	"fmt"
	"io"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/meshca/meshca/internal/audit"
	"github.com/meshca/meshca/internal/kubeclient"
	"github.com/meshca/meshca/policy"
	"github.com/meshca/meshca/policy/kube"

	"github.com/meshca/meshca/internal/cli"
)

// policyFlags are shared by audit authz, mtls and lint.
type policyFlags struct {
	paths       []string
	kube        bool
	kubeconfig  string
	rootNS      string
	trustDomain string
	tdAliases   []string
	pathNorm    string
	requestFile string
	req         policy.Request    // from the request flags
	claims      map[string]string // --claim, into req
}

func (f *policyFlags) addLoad(fs *pflag.FlagSet) {
	fs.StringSliceVar(&f.paths, "policies", nil, "YAML files or directories of PeerAuthentication and AuthorizationPolicy (required unless --kube)")
	fs.StringVar(&f.rootNS, "root-namespace", "istio-system", "Istio's root namespace: policies there apply mesh-wide")
	fs.StringVar(&f.trustDomain, "trust-domain", "cluster.local", "the mesh trust domain")
	fs.StringArrayVar(&f.tdAliases, "trust-domain-alias", nil, "a trust domain alias (repeatable)")
	fs.StringVar(&f.pathNorm, "path-normalization", "BASE", "meshConfig.pathNormalization: NONE, BASE, MERGE_SLASHES or DECODE_AND_MERGE_SLASHES")
	fs.BoolVar(&f.kube, "kube", false, "read the policies from the cluster (security.istio.io CRDs) instead of files")
	fs.StringVar(&f.kubeconfig, "kubeconfig", "", "kubeconfig for --kube (default: in-cluster, then $KUBECONFIG / ~/.kube/config)")
}

func (f *policyFlags) load(ctx context.Context) (*policy.Set, error) {
	src := audit.PolicySource{Paths: f.paths}
	if f.kube {
		kc := f.kubeConfig()
		src.Kube = &kc
	}
	set, err := audit.LoadPolicies(ctx, src, policy.Options{RootNamespace: f.rootNS, TrustDomain: f.trustDomain,
		TrustDomainAliases: f.tdAliases, PathNormalization: policy.PathNormalization(f.pathNorm)})
	if err != nil {
		return nil, cli.Usage("%v", err)
	}
	return set, nil
}

// kube is the configuration of --kube: in-cluster, else --kubeconfig or
// client-go's default loading rules ($KUBECONFIG, ~/.kube/config).
func (f *policyFlags) kubeConfig() kubeclient.Config {
	return kubeclient.Config{Kubeconfig: f.kubeconfig, FallBack: true, UserAgent: "meshca/" + version}
}

func newAuditAuthzCmd() *cobra.Command {
	var f policyFlags
	cmd := &cobra.Command{
		Use:   "authz --policies PATH... (--request FILE|- | --namespace NS [request flags])",
		Short: "Would the mesh allow this request? Exit 0 allow, 1 deny, 2 usage or input error",
		Args:  cli.UsageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			set, err := f.load(cmd.Context())
			if err != nil {
				return err
			}
			req, err := audit.Request(f.requestFile, cmd.InOrStdin(), f.req, f.claims)
			if err != nil {
				return cli.Usage("%v", err)
			}
			d := set.Authorize(req)
			if err := render(cmd, d, func(w io.Writer) { audit.DecisionTable(w, d) }); err != nil {
				return err
			}
			if d.Decision != policy.Allow {
				return &cli.ExitError{Code: 1, Err: fmt.Errorf("denied: %s", d.Reason)}
			}
			return nil
		},
	}
	fs := cmd.Flags()
	f.addLoad(fs)
	fs.StringVar(&f.requestFile, "request", "", "the request as JSON (a file, or - for standard input); instead of the flags below")
	fs.StringVar(&f.req.Protocol, "protocol", "HTTP", "HTTP or TCP")
	fs.StringVar(&f.req.Workload.Namespace, "namespace", "", "the destination workload's namespace")
	fs.StringToStringVar(&f.req.Workload.Labels, "labels", nil, "the destination workload's labels k=v,...")
	fs.StringVar(&f.req.Source.Principal, "source-principal", "", "the peer's mTLS identity (empty: plaintext)")
	fs.StringVar(&f.req.Source.Namespace, "source-namespace", "", "the peer's namespace")
	fs.StringVar(&f.req.Source.IP, "source-ip", "", "the peer's IP")
	fs.StringVar(&f.req.Source.RemoteIP, "remote-ip", "", "the original client IP (default --source-ip)")
	fs.StringVar(&f.req.Request.Principal, "request-principal", "", "the JWT principal iss/sub")
	fs.StringToStringVar(&f.claims, "claim", nil, "a JWT claim k=v (repeatable)")
	fs.StringVar(&f.req.Request.Method, "method", "", "HTTP method")
	fs.StringVar(&f.req.Request.Path, "path", "", "HTTP path")
	fs.StringVar(&f.req.Request.Host, "host", "", "HTTP host")
	fs.Uint32Var(&f.req.Destination.Port, "port", 0, "destination port")
	fs.StringToStringVar(&f.req.Request.Headers, "header", nil, "an HTTP header k=v (repeatable)")
	fs.StringVar(&f.req.Connection.SNI, "sni", "", "TLS SNI")
	return cmd
}

func newAuditMTLSCmd() *cobra.Command {
	var f policyFlags
	cmd := &cobra.Command{
		Use:   "mtls --policies PATH... --namespace NS [--labels k=v,...] [--port N]",
		Short: "The effective PeerAuthentication mTLS mode of a workload and port",
		Args:  cli.UsageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			set, err := f.load(cmd.Context())
			if err != nil {
				return err
			}
			if f.req.Workload.Namespace == "" {
				return cli.Usage("--namespace is required")
			}
			mode, pol := set.MTLSMode(f.req.Workload.Namespace, f.req.Workload.Labels, f.req.Destination.Port)
			res := audit.MTLS{Mode: mode, Policy: pol}
			return render(cmd, res, res.WriteTable)
		},
	}
	fs := cmd.Flags()
	f.addLoad(fs)
	fs.StringVar(&f.req.Workload.Namespace, "namespace", "", "the workload's namespace (required)")
	fs.StringToStringVar(&f.req.Workload.Labels, "labels", nil, "the workload's labels k=v,...")
	fs.Uint32Var(&f.req.Destination.Port, "port", 0, "the port (0: the workload as a whole)")
	return cmd
}

func newAuditLintCmd() *cobra.Command {
	var f policyFlags
	cmd := &cobra.Command{
		Use:   "lint --policies PATH...|--kube",
		Short: "Validate policies and warn about rules that do not do what they seem to (exit 1 on warnings)",
		Args:  cli.UsageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			set, err := f.load(cmd.Context())
			if err != nil {
				return err
			}
			opts := policy.LintOptions{ServedTrustDomains: append([]string{f.trustDomain}, f.tdAliases...)}
			if f.kube {
				// Selectors are checked against the pods that exist.
				cs, err := f.kubeConfig().Clientset()
				if err != nil {
					return cli.Usage("%v", err)
				}
				if opts.Workloads, err = kube.Workloads(cmd.Context(), cs); err != nil {
					return cli.Usage("%v", err)
				}
			}
			findings := set.Lint(opts)
			if findings == nil {
				findings = []policy.Finding{}
			}
			if err := render(cmd, findings, func(w io.Writer) { audit.FindingsTable(w, findings) }); err != nil {
				return err
			}
			if len(findings) > 0 {
				return &cli.ExitError{Code: 1, Err: fmt.Errorf("%d finding(s)", len(findings))}
			}
			return nil
		},
	}
	f.addLoad(cmd.Flags())
	return cmd
}
