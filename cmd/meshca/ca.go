package main

import (
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/meshca/meshca/ca/adminclient"
	"github.com/meshca/meshca/ca/plane"
	"github.com/meshca/meshca/internal/cli"
)

func newCACmd() *cobra.Command {
	cmd := &cobra.Command{Use: "ca", Short: "Inspect and maintain the CA: status, root and intermediate rotation, sealing keys"}
	cmd.AddCommand(newCASealCmd(),
		newCAAdminCmd(adminclient.CAStatus, "Show the CA's roots, intermediates and rotations (admin API)"),
		newCAAdminCmd(adminclient.CARotateRoot, "Replace the root without downtime: publish a new one, switch to it, retire the old (admin API)"),
		newCAAdminCmd(adminclient.CARotateIntermediate, "Emergency: sign with a fresh intermediate, refuse renewal to what the current one signed (admin API)"))
	return cmd
}

// newCAAdminCmd is `meshca ca <kind>`: one admin API call, its answer
// printed in --output.
func newCAAdminCmd(kind, short string) *cobra.Command {
	var (
		f      adminFlags
		req    = adminclient.CARequest{Kind: kind}
		output string
	)
	cmd := &cobra.Command{Use: kind, Short: short, Args: cobra.NoArgs, RunE: func(cmd *cobra.Command, _ []string) error {
		if err := cli.Resolve(cmd.Flags(), &f.configFile); err != nil {
			return err
		}
		c, err := adminclient.New(f.cfg)
		if err != nil {
			return err
		}
		v, err := c.CA(cmd.Context(), req)
		if err != nil {
			return err
		}
		return cli.Render(cmd.OutOrStdout(), output, v, v.WriteTable)
	}}
	f.addConfigFlag(cmd.Flags())
	f.addFlags(cmd.Flags())
	req.AddFlags(cmd.Flags())
	cmd.Flags().StringVarP(&output, "output", "o", "table", "output: table, json or yaml")
	return cmd
}

// newCASealCmd takes the server's flags, so that the server's --config file
// (or MESHCA_* environment) serves as it is.
func newCASealCmd() *cobra.Command {
	var o serverOptions
	cmd := &cobra.Command{
		Use:   "seal --data-dir DIR (--kek-file FILE | MESHCA_KEK)",
		Short: "Seal CA keys stored in clear with the key-encryption key (server stopped)",
		Long: "With a key-encryption key configured, meshca server refuses a data file that holds CA keys in\n" +
			"clear: whoever can write the file could have planted them. If they are this CA's own keys,\n" +
			"stored before the KEK was configured, seal them with this command while the server is stopped,\n" +
			"then start the server with the same KEK. It takes the server's flags and config file.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := o.planeConfig(cmd)
			if err != nil {
				return err
			}
			if cfg.KEK == nil {
				return errors.New("give the key-encryption key: --kek-file or MESHCA_KEK")
			}
			n, where, err := plane.Seal(cmd.Context(), cfg)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "sealed %d CA key(s) in %s\n", n, where)
			return nil
		},
	}
	o.addFlags(cmd.Flags())
	return cmd
}
