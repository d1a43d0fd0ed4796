package main

import (
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/meshca/meshca/ca/plane"
)

func newCACmd() *cobra.Command {
	cmd := &cobra.Command{Use: "ca", Short: "Maintain the CA's data file"}
	cmd.AddCommand(newCASealCmd())
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
			n, err := plane.Seal(cmd.Context(), cfg.DataDir, cfg.KEK, cfg.Logger)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "sealed %d CA key(s) in %s\n", n, cfg.DataDir)
			return nil
		},
	}
	o.addFlags(cmd.Flags())
	return cmd
}
