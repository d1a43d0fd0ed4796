package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"

	"github.com/meshca/meshca/internal/kubeclient"
	"github.com/meshca/meshca/policy"
	"github.com/meshca/meshca/policy/kube"

	"github.com/meshca/meshca/internal/cli"
)

// policyFlags are shared by audit authz and audit mtls.
type policyFlags struct {
	paths        []string
	kube         bool
	kubeconfig   string
	rootNS       string
	trustDomain  string
	tdAliases    []string
	namespace    string
	labels       map[string]string
	port         uint32
	requestFile  string
	protocol     string
	srcPrincipal string
	srcNS        string
	srcIP        string
	remoteIP     string
	reqPrincipal string
	claims       map[string]string
	method       string
	path         string
	host         string
	headers      map[string]string
	sni          string
}

func (f *policyFlags) addLoad(fs *pflag.FlagSet) {
	fs.StringSliceVar(&f.paths, "policies", nil, "YAML files or directories of PeerAuthentication and AuthorizationPolicy (required)")
	fs.StringVar(&f.rootNS, "root-namespace", "istio-system", "Istio's root namespace: policies there apply mesh-wide")
	fs.StringVar(&f.trustDomain, "trust-domain", "cluster.local", "the mesh trust domain")
	fs.StringArrayVar(&f.tdAliases, "trust-domain-alias", nil, "a trust domain alias (repeatable)")
	fs.BoolVar(&f.kube, "kube", false, "read the policies from the cluster (security.istio.io CRDs) instead of files")
	fs.StringVar(&f.kubeconfig, "kubeconfig", "", "kubeconfig for --kube (default: in-cluster, then $KUBECONFIG / ~/.kube/config)")
}

func (f *policyFlags) load(ctx context.Context) (*policy.Set, error) {
	opts := policy.Options{RootNamespace: f.rootNS, TrustDomain: f.trustDomain, TrustDomainAliases: f.tdAliases}
	switch {
	case f.kube && len(f.paths) > 0:
		return nil, cli.Usage("--policies and --kube: choose one")
	case f.kube:
		cfg, err := f.kubeConfig().REST()
		if err != nil {
			return nil, cli.Usage("%v", err)
		}
		dc, err := dynamic.NewForConfig(cfg)
		if err != nil {
			return nil, cli.Usage("%v", err)
		}
		ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		set, err := kube.Load(ctx, dc, opts)
		if err != nil {
			return nil, cli.Usage("%v", err)
		}
		return set, nil
	case len(f.paths) == 0:
		return nil, cli.Usage("--policies (or --kube) is required")
	}
	set, err := opts.Load(f.paths...)
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
		Args:  usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			set, err := f.load(cmd.Context())
			if err != nil {
				return err
			}
			req, err := f.request(cmd)
			if err != nil {
				return err
			}
			d := set.Authorize(req)
			if err := render(cmd, d, func(w io.Writer) {
				fmt.Fprintf(w, "DECISION\t%s\n", d.Decision)
				if d.Action != "" {
					fmt.Fprintf(w, "ACTION\t%s\n", d.Action)
				}
				if d.Policy != "" {
					fmt.Fprintf(w, "POLICY\t%s\n", d.Policy)
				}
				if d.Rule >= 0 {
					fmt.Fprintf(w, "RULE\t%d\n", d.Rule)
				}
				fmt.Fprintf(w, "REASON\t%s\n", d.Reason)
			}); err != nil {
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
	fs.StringVar(&f.protocol, "protocol", "HTTP", "HTTP or TCP")
	fs.StringVar(&f.namespace, "namespace", "", "the destination workload's namespace")
	fs.StringToStringVar(&f.labels, "labels", nil, "the destination workload's labels k=v,...")
	fs.StringVar(&f.srcPrincipal, "source-principal", "", "the peer's mTLS identity (empty: plaintext)")
	fs.StringVar(&f.srcNS, "source-namespace", "", "the peer's namespace")
	fs.StringVar(&f.srcIP, "source-ip", "", "the peer's IP")
	fs.StringVar(&f.remoteIP, "remote-ip", "", "the original client IP (default --source-ip)")
	fs.StringVar(&f.reqPrincipal, "request-principal", "", "the JWT principal iss/sub")
	fs.StringToStringVar(&f.claims, "claim", nil, "a JWT claim k=v (repeatable)")
	fs.StringVar(&f.method, "method", "", "HTTP method")
	fs.StringVar(&f.path, "path", "", "HTTP path")
	fs.StringVar(&f.host, "host", "", "HTTP host")
	fs.Uint32Var(&f.port, "port", 0, "destination port")
	fs.StringToStringVar(&f.headers, "header", nil, "an HTTP header k=v (repeatable)")
	fs.StringVar(&f.sni, "sni", "", "TLS SNI")
	return cmd
}

// request reads --request, or builds the request from the flags.
func (f *policyFlags) request(cmd *cobra.Command) (policy.Request, error) {
	var req policy.Request
	if f.requestFile != "" {
		var r io.Reader = cmd.InOrStdin()
		if f.requestFile != "-" {
			file, err := os.Open(f.requestFile)
			if err != nil {
				return req, cli.Usage("--request: %v", err)
			}
			defer file.Close()
			r = file
		}
		dec := json.NewDecoder(io.LimitReader(r, 1<<20))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil {
			return req, cli.Usage("--request: not a request: %v", err)
		}
	} else {
		if f.namespace == "" {
			return req, cli.Usage("give --request, or at least --namespace")
		}
		claims := map[string]any{}
		for k, v := range f.claims {
			claims[k] = v
		}
		req = policy.Request{
			Protocol: strings.ToUpper(f.protocol),
			Workload: policy.Workload{Namespace: f.namespace, Labels: f.labels},
			Source:   policy.Source{Principal: f.srcPrincipal, Namespace: f.srcNS, IP: f.srcIP, RemoteIP: f.remoteIP},
			Request: policy.HTTPRequest{Principal: f.reqPrincipal, Claims: claims, Method: f.method, Path: f.path,
				Host: f.host, Headers: f.headers},
			Destination: policy.Destination{Port: f.port},
			Connection:  policy.Connection{SNI: f.sni},
		}
	}
	if p := strings.ToUpper(req.Protocol); p != "" && p != "HTTP" && p != "TCP" {
		return req, cli.Usage("protocol must be HTTP or TCP, not %q", req.Protocol)
	}
	if req.Workload.Namespace == "" {
		return req, cli.Usage("the request names no workload namespace")
	}
	for name, ip := range map[string]string{"source.ip": req.Source.IP, "source.remote_ip": req.Source.RemoteIP, "destination.ip": req.Destination.IP} {
		if _, err := netip.ParseAddr(ip); ip != "" && err != nil {
			return req, cli.Usage("%s %q is not an IP address", name, ip)
		}
	}
	for provider, v := range req.CustomVerdicts {
		if v != policy.Allow && v != policy.Deny {
			return req, cli.Usage("custom_verdicts[%s] must be ALLOW or DENY, not %q", provider, v)
		}
	}
	return req, nil
}

// MTLSResult is the output of audit mtls.
type MTLSResult struct {
	Mode   string `json:"mode"`
	Policy string `json:"policy"`
}

func newAuditMTLSCmd() *cobra.Command {
	var f policyFlags
	cmd := &cobra.Command{
		Use:   "mtls --policies PATH... --namespace NS [--labels k=v,...] [--port N]",
		Short: "The effective PeerAuthentication mTLS mode of a workload and port",
		Args:  usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			set, err := f.load(cmd.Context())
			if err != nil {
				return err
			}
			if f.namespace == "" {
				return cli.Usage("--namespace is required")
			}
			mode, pol := set.MTLSMode(f.namespace, f.labels, f.port)
			res := MTLSResult{Mode: mode, Policy: pol}
			return render(cmd, res, func(w io.Writer) {
				fmt.Fprintf(w, "MODE\t%s\n", res.Mode)
				p := res.Policy
				if p == "" {
					p = "(none: the default)"
				}
				fmt.Fprintf(w, "POLICY\t%s\n", p)
			})
		},
	}
	fs := cmd.Flags()
	f.addLoad(fs)
	fs.StringVar(&f.namespace, "namespace", "", "the workload's namespace (required)")
	fs.StringToStringVar(&f.labels, "labels", nil, "the workload's labels k=v,...")
	fs.Uint32Var(&f.port, "port", 0, "the port (0: the workload as a whole)")
	return cmd
}

func newAuditLintCmd() *cobra.Command {
	var f policyFlags
	cmd := &cobra.Command{
		Use:   "lint --policies PATH...|--kube",
		Short: "Validate policies and warn about rules that do not do what they seem to (exit 1 on warnings)",
		Args:  usageArgs(cobra.NoArgs),
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
				pods, err := cs.CoreV1().Pods("").List(cmd.Context(), metav1.ListOptions{})
				if err != nil {
					return cli.Usage("list pods: %v", err)
				}
				opts.Workloads = []policy.WorkloadInfo{}
				for _, p := range pods.Items {
					opts.Workloads = append(opts.Workloads, policy.WorkloadInfo{Namespace: p.Namespace, Labels: p.Labels})
				}
			}
			findings := set.Lint(opts)
			if findings == nil {
				findings = []policy.Finding{}
			}
			if err := render(cmd, findings, func(w io.Writer) {
				if len(findings) == 0 {
					fmt.Fprintln(w, "no findings")
					return
				}
				fmt.Fprintln(w, "SEVERITY\tPOLICY\tRULE\tMESSAGE")
				for _, fd := range findings {
					rule := "-"
					if fd.Rule >= 0 {
						rule = fmt.Sprint(fd.Rule)
					}
					fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", fd.Severity, fd.Policy, rule, fd.Message)
				}
			}); err != nil {
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
