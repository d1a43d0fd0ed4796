package main

import (
	"context"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/meshca/meshca/ca/adminclient"
	"github.com/meshca/meshca/internal/audit"

	"github.com/meshca/meshca/internal/cli"
)

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
		src            audit.Source
		bundlePath, td string
		maxLifetime    time.Duration
		now            string
	)
	cmd := &cobra.Command{
		Use:   "cert [FILE] [--sds SOCKET | --workload-api SOCKET] [--bundle FILE]",
		Short: "Show what a certificate really says: SPIFFE ID, serial, validity, key, chain, warnings",
		Args:  cli.UsageArgs(cobra.MaximumNArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			at := time.Now()
			if now != "" {
				t, err := time.Parse(time.RFC3339, now)
				if err != nil {
					return cli.Usage("--now: %v", err)
				}
				at = t
			}
			if len(args) == 1 {
				src.File = args[0]
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 15*time.Second)
			defer cancel()
			name, chain, err := src.Fetch(ctx)
			if err != nil {
				return cli.Usage("%v", err)
			}
			opts := audit.CertOptions{MaxLifetime: maxLifetime}
			if bundlePath != "" {
				if opts.Bundle, err = audit.LoadBundle(bundlePath, td, chain[0]); err != nil {
					return cli.Usage("%v", err)
				}
			}
			r := audit.Cert(name, chain, at, opts)
			return render(cmd, r, r.WriteTable)
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&src.SDS, "sds", "", "read the certificate from an agent's SDS socket (resource \"default\")")
	fs.StringVar(&src.WorkloadAPI, "workload-api", "", "read the X509-SVID from a SPIFFE Workload API socket")
	fs.StringVar(&bundlePath, "bundle", "", "PEM trust bundle to verify the chain against")
	fs.StringVar(&td, "trust-domain", "", "trust domain of --bundle (default: the certificate's)")
	fs.DurationVar(&maxLifetime, "max-lifetime", 72*time.Hour, "warn about certificates living longer")
	fs.StringVar(&now, "now", "", "judge validity at this RFC 3339 time instead of now")
	_ = fs.MarkHidden("now") // the flag exists: no error
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
		Args:  cli.UsageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := adminclient.New(f.cfg) // no MESHCA_* or config file: flags only, as before
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
			return render(cmd, rep, rep.WriteTable)
		},
	}
	fs := cmd.Flags()
	f.addFlags(fs)
	fs.StringVar(&id, "spiffe-id", "", "only this identity")
	fs.DurationVar(&since, "since", 24*time.Hour, "only certificates issued this recently")
	return cmd
}
