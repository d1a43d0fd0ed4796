package main

import (
	"context"
	"crypto/x509"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshca/meshca/internal/audit"

	"github.com/meshca/meshca/internal/cli"
)

// usageArgs makes an argument check fail with exit code 2.
func usageArgs(check cobra.PositionalArgs) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if err := check(cmd, args); err != nil {
			return cli.Usage("%v", err)
		}
		return nil
	}
}

func newAuditCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "audit",
		Short: "Check identities and certificates (exit 2 on usage or input errors)",
	}
	cmd.PersistentFlags().StringP("output", "o", "table", "output: table, json or yaml")
	cmd.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return cli.Usage("%v", err) })
	cmd.AddCommand(newAuditAuthzCmd(), newAuditMTLSCmd(), newAuditLintCmd(), newAuditCertCmd(), newAuditIssuedCmd())
	return cmd
}

// render writes v in the --output format, or calls table.
func render(cmd *cobra.Command, v any, table func(w io.Writer)) error {
	out, _ := cmd.Flags().GetString("output")
	return cli.Render(cmd.OutOrStdout(), out, v, table)
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
					return cli.Usage("--now: %v", err)
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
				return cli.Usage("give exactly one of FILE, --sds or --workload-api")
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
				chain, err = audit.ChainFromFile(args[0])
			case sdsSocket != "":
				source = "sds:" + sdsSocket
				chain, err = audit.ChainFromSDS(ctx, sdsSocket)
			default:
				source = "workload-api:" + wlSocket
				chain, err = audit.ChainFromWorkloadAPI(ctx, wlSocket)
			}
			if err != nil {
				return cli.Usage("%s: %v", source, err)
			}
			opts := audit.CertOptions{MaxLifetime: maxLifetime}
			if bundlePath != "" {
				roots, err := audit.ChainFromFile(bundlePath)
				if err != nil {
					return cli.Usage("--bundle: %v", err)
				}
				tdv := spiffeid.TrustDomain{}
				if td != "" {
					if tdv, err = spiffeid.TrustDomainFromString(td); err != nil {
						return cli.Usage("--trust-domain: %v", err)
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

func newAuditIssuedCmd() *cobra.Command {
	var (
		f     adminFlags
		id    string
		since time.Duration
	)
	cmd := &cobra.Command{
		Use:   "issued --server ADDR [--spiffe-id ID] [--since 24h]",
		Short: "Who holds which identity, from the CA's issuance log (admin API)",
		Args:  usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := f.client(cmd.Flags())
			if err != nil {
				return cli.Usage("%v", err)
			}
			ir, err := c.Issuances(cmd.Context(), id, since)
			if err != nil {
				return cli.Usage("%v", err)
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
	f.addFlags(fs)
	fs.StringVar(&id, "spiffe-id", "", "only this identity")
	fs.DurationVar(&since, "since", 24*time.Hour, "only certificates issued this recently")
	return cmd
}
