package main

import (
	"encoding/json"

	"github.com/spf13/cobra"

	"github.com/meshca/meshca/ca/server"
)

func newRevokeCmd() *cobra.Command {
	var (
		configFile, srv, dataDir, caFile, adminFile string
		req                                         server.RevokeRequest
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
			if err := resolveFlags(cmd.Flags(), &configFile); err != nil {
				return err
			}
			c, err := newAdminClient(srv, dataDir, caFile, adminFile)
			if err != nil {
				return err
			}
			var resp server.RevokeResponse
			if err := c.do(cmd.Context(), "POST", "/v1/admin/revocations", req, &resp); err != nil {
				return err
			}
			return json.NewEncoder(cmd.OutOrStdout()).Encode(resp)
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&configFile, "config", "", "YAML config file whose keys are these flag names (env MESHCA_CONFIG)")
	fs.StringVar(&srv, "server", "127.0.0.1:8443", "the server's HTTPS API address")
	fs.StringVar(&dataDir, "data-dir", ".meshca", "the server's data directory, for the defaults below")
	fs.StringVar(&caFile, "ca-file", "", "PEM roots to verify the server (default <data-dir>/bundle.pem)")
	fs.StringVar(&adminFile, "admin-token-file", "", "admin token (default <data-dir>/admin-token)")
	fs.StringVar(&req.Serial, "serial", "", "certificate serial number (hex)")
	fs.StringVar(&req.SPIFFEID, "spiffe-id", "", "revoke every certificate of this identity issued until now")
	fs.StringVar(&req.Reason, "reason", "", "why, for the record")
	return cmd
}
