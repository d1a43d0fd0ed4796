package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/meshca/meshca/ca/adminclient"
	"github.com/meshca/meshca/ca/server"

	"github.com/meshca/meshca/internal/cli"
)

// adminFlags are the flags of every command that calls the admin API.
type adminFlags struct {
	configFile string
	cfg        adminclient.Config
}

func (f *adminFlags) addFlags(fs *pflag.FlagSet) {
	fs.StringVar(&f.cfg.Addr, "server", "127.0.0.1:8443", "the server's HTTPS API address (host:port)")
	fs.StringVar(&f.cfg.DataDir, "data-dir", ".meshca", "the server's data directory, for the defaults of --ca-file and --admin-token-file")
	fs.StringVar(&f.cfg.CAFile, "ca-file", "", "PEM roots to verify the server with (default <data-dir>/bundle.pem)")
	fs.StringVar(&f.cfg.TokenFile, "admin-token-file", "", "file holding the admin token (default <data-dir>/admin-token)")
}

// addConfigFlag adds --config: the command then takes MESHCA_* variables
// and the config file too (cli.Resolve).
func (f *adminFlags) addConfigFlag(fs *pflag.FlagSet) {
	fs.StringVar(&f.configFile, "config", "", "YAML config file whose keys are these flag names (env MESHCA_CONFIG)")
}

func newTokenCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "token",
		Short: "Manage join tokens for machines outside Kubernetes",
	}
	cmd.AddCommand(newTokenCreateCmd())
	return cmd
}

func newTokenCreateCmd() *cobra.Command {
	var (
		f      adminFlags
		req    server.JoinTokenRequest
		ttl    time.Duration
		output string
	)
	cmd := &cobra.Command{
		Use:   "create --spiffe-id ID [--ttl 1h]",
		Short: "Create a single-use join token bound to one SPIFFE ID",
		Long: "Create a single-use join token through the server's admin API. The token is printed once\n" +
			"(only its hash is stored); the first CSR that presents it as a bearer token gets a certificate\n" +
			"for exactly that SPIFFE ID, and any later use is refused and logged as a replay.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := cli.Resolve(cmd.Flags(), &f.configFile); err != nil {
				return err
			}
			req.TTL = ttl.String()
			return createToken(cmd.Context(), f.cfg, req, output, cmd.OutOrStdout())
		},
	}
	fs := cmd.Flags()
	f.addConfigFlag(fs)
	f.addFlags(fs)
	fs.StringVar(&req.SPIFFEID, "spiffe-id", "", "SPIFFE ID the token is bound to (required)")
	fs.DurationVar(&ttl, "ttl", time.Hour, "how long the token may be used")
	fs.StringVarP(&output, "output", "o", "text", "output: text (the token alone) or json")
	return cmd
}

func createToken(ctx context.Context, cfg adminclient.Config, req server.JoinTokenRequest, output string, out io.Writer) error {
	if req.SPIFFEID == "" {
		return errors.New("--spiffe-id is required")
	}
	if output != "text" && output != "json" {
		return fmt.Errorf("--output must be text or json, not %q", output)
	}
	c, err := adminclient.New(cfg)
	if err != nil {
		return err
	}
	jt, err := c.CreateJoinToken(ctx, req) // bounded by the client's timeout
	if err != nil {
		return err
	}
	if output == "json" {
		return json.NewEncoder(out).Encode(jt)
	}
	_, err = fmt.Fprintln(out, jt.Token)
	return err
}
