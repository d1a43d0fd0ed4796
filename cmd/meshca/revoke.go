package main

import (
	"encoding/json"

	"github.com/spf13/cobra"

	"github.com/meshca/meshca/ca/adminclient"
	"github.com/meshca/meshca/ca/server"
	"github.com/meshca/meshca/internal/cli"
)

func newRevokeCmd() *cobra.Command {
	var (
		f   adminFlags
		req server.RevokeRequest
	)
	cmd := &cobra.Command{
		Use:   "revoke (--serial HEX | --spiffe-id ID) [--reason TEXT]",
		Short: "Put a certificate serial, or every current certificate of an identity, on the deny-list",
		Long: "Revoke through the server's admin API. A revoked certificate can no longer be used to renew\n" +
			"over mTLS. Revoking a SPIFFE ID revokes every certificate of it issued until now (not later\n" +
			"ones, which need a fresh credential); revoking a serial does not follow renewals already made\n" +
			"with it, so revoke the SPIFFE ID to cut off a stolen key.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := cli.Resolve(cmd.Flags(), &f.configFile); err != nil {
				return err
			}
			c, err := adminclient.New(f.cfg)
			if err != nil {
				return err
			}
			resp, err := c.Revoke(cmd.Context(), req)
			if err != nil {
				return err
			}
			return json.NewEncoder(cmd.OutOrStdout()).Encode(resp)
		},
	}
	fs := cmd.Flags()
	f.addConfigFlag(fs)
	f.addFlags(fs)
	fs.StringVar(&req.Serial, "serial", "", "certificate serial number (hex)")
	fs.StringVar(&req.SPIFFEID, "spiffe-id", "", "revoke every certificate of this identity issued until now")
	fs.StringVar(&req.Reason, "reason", "", "why, for the record")
	return cmd
}
