package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/meshca/meshca/ca/server"
)

func newTokenCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "token",
		Short: "Manage join tokens for machines outside Kubernetes",
	}
	cmd.AddCommand(newTokenCreateCmd())
	return cmd
}

type tokenOptions struct {
	configFile     string
	server         string
	dataDir        string
	caFile         string
	adminTokenFile string
	spiffeID       string
	ttl            time.Duration
	output         string
}

func newTokenCreateCmd() *cobra.Command {
	var o tokenOptions
	cmd := &cobra.Command{
		Use:   "create --spiffe-id ID [--ttl 1h]",
		Short: "Create a single-use join token bound to one SPIFFE ID",
		Long: "Create a single-use join token through the server's admin API. The token is printed once\n" +
			"(only its hash is stored); the first CSR that presents it as a bearer token gets a certificate\n" +
			"for exactly that SPIFFE ID, and any later use is refused and logged as a replay.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := resolveFlags(cmd.Flags(), &o.configFile); err != nil {
				return err
			}
			return createToken(cmd.Context(), &o, cmd.OutOrStdout())
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&o.configFile, "config", "", "YAML config file whose keys are these flag names (env MESHCA_CONFIG)")
	fs.StringVar(&o.server, "server", "127.0.0.1:8443", "the server's HTTPS API address (host:port)")
	fs.StringVar(&o.dataDir, "data-dir", ".meshca", "the server's data directory, for the defaults of --ca-file and --admin-token-file")
	fs.StringVar(&o.caFile, "ca-file", "", "PEM roots to verify the server with (default <data-dir>/bundle.pem)")
	fs.StringVar(&o.adminTokenFile, "admin-token-file", "", "file holding the admin token (default <data-dir>/admin-token)")
	fs.StringVar(&o.spiffeID, "spiffe-id", "", "SPIFFE ID the token is bound to (required)")
	fs.DurationVar(&o.ttl, "ttl", time.Hour, "how long the token may be used")
	fs.StringVarP(&o.output, "output", "o", "text", "output: text (the token alone) or json")
	return cmd
}

func createToken(ctx context.Context, o *tokenOptions, out interface{ Write([]byte) (int, error) }) error {
	if o.spiffeID == "" {
		return errors.New("--spiffe-id is required")
	}
	if o.output != "text" && o.output != "json" {
		return fmt.Errorf("--output must be text or json, not %q", o.output)
	}
	c, err := newAdminClient(o.server, o.dataDir, o.caFile, o.adminTokenFile)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var jt server.JoinTokenResponse
	if err := c.do(ctx, "POST", "/v1/admin/join-tokens", server.JoinTokenRequest{SPIFFEID: o.spiffeID, TTL: o.ttl.String()}, &jt); err != nil {
		return err
	}
	if o.output == "json" {
		return json.NewEncoder(out).Encode(jt)
	}
	_, err = fmt.Fprintln(out, jt.Token)
	return err
}
