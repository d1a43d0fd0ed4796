package main

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"sigs.k8s.io/yaml"

	"github.com/meshca/meshca/ca/server"
	"github.com/meshca/meshca/internal/audit"
)

// exitError carries a process exit code other than 1: `meshca audit` exits
// 2 on usage and input errors (and `audit authz` 1 for a denial).
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// usageArgs makes an argument check fail with exit code 2.
func usageArgs(check cobra.PositionalArgs) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if err := check(cmd, args); err != nil {
			return usageErr("%v", err)
		}
		return nil
	}
}

func usageErr(format string, args ...any) error {
	return &exitError{code: 2, err: fmt.Errorf(format, args...)}
}

func newAuditCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "audit",
		Short: "Check identities and certificates (exit 2 on usage or input errors)",
	}
	cmd.PersistentFlags().StringP("output", "o", "table", "output: table, json or yaml")
	cmd.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageErr("%v", err) })
	cmd.AddCommand(newAuditAuthzCmd(), newAuditMTLSCmd(), newAuditLintCmd(), newAuditCertCmd(), newAuditIssuedCmd())
	return cmd
}

// render writes v as JSON or YAML, or calls table.
func render(cmd *cobra.Command, v any, table func(w io.Writer)) error {
	out, _ := cmd.Flags().GetString("output")
	w := cmd.OutOrStdout()
	switch out {
	case "json":
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	case "yaml":
		b, err := yaml.Marshal(v)
		if err != nil {
			return err
		}
		_, err = w.Write(b)
		return err
	case "table":
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		table(tw)
		return tw.Flush()
	}
	return usageErr("--output must be table, json or yaml, not %q", out)
}

func newAuditCertCmd() *cobra.Command {
	var (
		sdsSocket, wlSocket, bundlePath, td string
		maxLifetime                         time.Duration
		now                                 string
	)
	cmd := &cobra.Command{
		Use:   "cert [FILE] [--sds SOCKET | --workload-api SOCKET] [--bundle FILE]",
		Short: "Show what a certificate really says: SPIFFE ID, serial, validity, key, chain, warnings",
		Args:  usageArgs(cobra.MaximumNArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			at := time.Now()
			if now != "" {
				t, err := time.Parse(time.RFC3339, now)
				if err != nil {
					return usageErr("--now: %v", err)
				}
				at = t
			}
			sources := 0
			for _, s := range []bool{len(args) == 1, sdsSocket != "", wlSocket != ""} {
				if s {
					sources++
				}
			}
			if sources != 1 {
				return usageErr("give exactly one of FILE, --sds or --workload-api")
			}
			var (
				chain  []*x509.Certificate
				source string
				err    error
			)
			ctx, cancel := context.WithTimeout(cmd.Context(), 15*time.Second)
			defer cancel()
			switch {
			case len(args) == 1:
				source = args[0]
				chain, err = readChain(args[0])
			case sdsSocket != "":
				source = "sds:" + sdsSocket
				chain, err = chainFromSDS(ctx, sdsSocket)
			default:
				source = "workload-api:" + wlSocket
				chain, err = chainFromWorkloadAPI(ctx, wlSocket)
			}
			if err != nil {
				return usageErr("%s: %v", source, err)
			}
			opts := audit.CertOptions{MaxLifetime: maxLifetime}
			if bundlePath != "" {
				roots, err := readChain(bundlePath)
				if err != nil {
					return usageErr("--bundle: %v", err)
				}
				tdv := spiffeid.TrustDomain{}
				if td != "" {
					if tdv, err = spiffeid.TrustDomainFromString(td); err != nil {
						return usageErr("--trust-domain: %v", err)
					}
				} else if id, err := spiffeid.FromURI(chain[0].URIs[0]); err == nil {
					tdv = id.TrustDomain()
				}
				opts.Bundle = x509bundle.FromX509Authorities(tdv, roots)
			}
			r := audit.Cert(source, chain, at, opts)
			return render(cmd, r, func(w io.Writer) {
				fmt.Fprintf(w, "SOURCE\t%s\n", r.Source)
				fmt.Fprintf(w, "SPIFFE ID\t%s\n", r.SPIFFEID)
				fmt.Fprintf(w, "URI SANS\t%s\n", strings.Join(r.URISANs, ", "))
				fmt.Fprintf(w, "SERIAL\t%s\n", r.Serial)
				fmt.Fprintf(w, "ISSUER\t%s\n", r.Issuer)
				fmt.Fprintf(w, "VALID\t%s to %s\n", r.NotBefore.Format(time.RFC3339), r.NotAfter.Format(time.RFC3339))
				fmt.Fprintf(w, "TIME LEFT\t%s\n", r.TimeLeft)
				fmt.Fprintf(w, "KEY\t%s\n", r.KeyType)
				fmt.Fprintf(w, "CHAIN\t%d certificate(s)\n", r.ChainLen)
				if r.Verified != nil {
					v := "verified against the bundle"
					if !*r.Verified {
						v = "NOT verified: " + r.VerifyError
					}
					fmt.Fprintf(w, "TRUST\t%s\n", v)
				}
				for _, warn := range r.Warnings {
					fmt.Fprintf(w, "WARNING\t%s\n", warn)
				}
			})
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&sdsSocket, "sds", "", "read the certificate from an agent's SDS socket (resource \"default\")")
	fs.StringVar(&wlSocket, "workload-api", "", "read the X509-SVID from a SPIFFE Workload API socket")
	fs.StringVar(&bundlePath, "bundle", "", "PEM trust bundle to verify the chain against")
	fs.StringVar(&td, "trust-domain", "", "trust domain of --bundle (default: the certificate's)")
	fs.DurationVar(&maxLifetime, "max-lifetime", 72*time.Hour, "warn about certificates living longer")
	fs.StringVar(&now, "now", "", "judge validity at this RFC 3339 time instead of now")
	fs.MarkHidden("now")
	return cmd
}

func readChain(path string) ([]*x509.Certificate, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return parseChainPEM(b)
}

func parseChainPEM(b []byte) ([]*x509.Certificate, error) {
	var chain []*x509.Certificate
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, err
		}
		chain = append(chain, c)
	}
	if len(chain) == 0 {
		return nil, errors.New("no PEM certificates")
	}
	return chain, nil
}

func chainFromSDS(ctx context.Context, socket string) ([]*x509.Certificate, error) {
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	resp, err := secretv3.NewSecretDiscoveryServiceClient(conn).FetchSecrets(ctx, &discovery.DiscoveryRequest{
		TypeUrl: "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret", ResourceNames: []string{"default"}})
	if err != nil {
		return nil, err
	}
	for _, res := range resp.GetResources() {
		var sec tlsv3.Secret
		if err := res.UnmarshalTo(&sec); err != nil {
			return nil, err
		}
		if tc := sec.GetTlsCertificate(); tc != nil {
			return parseChainPEM(tc.GetCertificateChain().GetInlineBytes())
		}
	}
	return nil, errors.New("no \"default\" certificate served")
}

func chainFromWorkloadAPI(ctx context.Context, socket string) ([]*x509.Certificate, error) {
	svid, err := workloadapi.FetchX509SVID(ctx, workloadapi.WithAddr("unix://"+socket))
	if err != nil {
		return nil, err
	}
	return svid.Certificates, nil
}

func newAuditIssuedCmd() *cobra.Command {
	var (
		srv, dataDir, caFile, adminFile, id string
		since                               time.Duration
	)
	cmd := &cobra.Command{
		Use:   "issued --server ADDR [--spiffe-id ID] [--since 24h]",
		Short: "Who holds which identity, from the CA's issuance log (admin API)",
		Args:  usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := newAdminClient(srv, dataDir, caFile, adminFile)
			if err != nil {
				return usageErr("%v", err)
			}
			q := url.Values{}
			if id != "" {
				q.Set("spiffe_id", id)
			}
			if since > 0 {
				q.Set("since", since.String())
			}
			var ir server.IssuancesResponse
			if err := c.do(cmd.Context(), "GET", "/v1/admin/issuances?"+q.Encode(), nil, &ir); err != nil {
				return usageErr("%v", err)
			}
			recs := make([]audit.Issued, 0, len(ir.Issuances))
			for _, r := range ir.Issuances {
				recs = append(recs, audit.Issued{Serial: r.Serial, SPIFFEID: r.SPIFFEID, NotBefore: r.NotBefore, NotAfter: r.NotAfter,
					CredentialKind: r.CredentialKind, Requester: r.Requester, Peer: r.Peer, IssuedAt: r.IssuedAt, Revoked: r.Revoked})
			}
			rep := audit.Summarize(recs, ir.Now, since)
			return render(cmd, rep, func(w io.Writer) {
				fmt.Fprintln(w, "SPIFFE ID\tISSUED\tLIVE\tREVOKED\tLAST ISSUED\tCREDENTIALS")
				for _, i := range rep.Identities {
					fmt.Fprintf(w, "%s\t%d\t%d\t%d\t%s\t%s\n", i.SPIFFEID, i.Issued, i.Live, i.Revoked, i.LastIssued.UTC().Format(time.RFC3339), strings.Join(i.Credentials, ","))
				}
				for _, r := range rep.Revoked {
					fmt.Fprintf(w, "REVOKED\t%s\t%s\n", r.Serial, r.SPIFFEID)
				}
				for _, warn := range rep.Warnings {
					fmt.Fprintf(w, "WARNING\t%s\n", warn)
				}
			})
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&srv, "server", "127.0.0.1:8443", "the CA's HTTPS API address")
	fs.StringVar(&dataDir, "data-dir", ".meshca", "the server's data directory, for the defaults below")
	fs.StringVar(&caFile, "ca-file", "", "PEM roots to verify the server (default <data-dir>/bundle.pem)")
	fs.StringVar(&adminFile, "admin-token-file", "", "admin token (default <data-dir>/admin-token)")
	fs.StringVar(&id, "spiffe-id", "", "only this identity")
	fs.DurationVar(&since, "since", 24*time.Hour, "only certificates issued this recently")
	return cmd
}
