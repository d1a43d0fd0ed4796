package main

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/meshca/meshca/attestor"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/ca/client"
	"github.com/meshca/meshca/sds"
)

func newDevCmd() *cobra.Command {
	var (
		o       serverOptions
		once    bool
		noAgent bool
		ns      string
		sa      string
	)
	cmd := &cobra.Command{
		Use:   "dev",
		Short: "Run a local identity plane for development (what `make run` starts)",
		Long: "Run the CA on 127.0.0.1 with its data under .meshca/, write the trust bundle, and issue one\n" +
			"demo SVID to .meshca/demo/ through the real gRPC CSR API, authenticated with a development\n" +
			"token (.meshca/dev-token) that proves the demo identity. A second run reuses the same root.\n" +
			"The development token attestor exists only in this command.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := o.resolve(cmd.Flags()); err != nil {
				return err
			}
			log, err := o.log.logger(cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			return runDev(cmd.Context(), &o, devDemo{namespace: ns, serviceAccount: sa, once: once, agent: !noAgent}, cmd.OutOrStdout(), log)
		},
	}
	o.addFlags(cmd.Flags())
	fs := cmd.Flags()
	for name, val := range map[string]string{
		"data-dir":          ".meshca",
		"grpc-listen":       "127.0.0.1:15012",
		"https-listen":      "127.0.0.1:8443",
		"monitoring-listen": "127.0.0.1:15014",
		"log-level":         "warn",
	} {
		f := fs.Lookup(name)
		f.DefValue = val
		f.Value.Set(val)
	}
	fs.BoolVar(&once, "once", false, "exit after issuing the demo SVID instead of serving until interrupted")
	fs.BoolVar(&noAgent, "no-agent", false, "do not start the agent (SDS and Workload API on <data-dir>/sockets/)")
	fs.StringVar(&ns, "demo-namespace", "default", "namespace of the demo identity")
	fs.StringVar(&sa, "demo-service-account", "demo", "service account of the demo identity")
	return cmd
}

type devDemo struct {
	namespace, serviceAccount string
	once, agent               bool
}

func runDev(ctx context.Context, o *serverOptions, demo devDemo, out io.Writer, logger *slog.Logger) error {
	td, err := spiffeid.TrustDomainFromString(o.trustDomain)
	if err != nil {
		return fmt.Errorf("--trust-domain: %w", err)
	}
	demoID, err := spiffeid.FromSegments(td, "ns", demo.namespace, "sa", demo.serviceAccount)
	if err != nil {
		return fmt.Errorf("demo identity: %w", err)
	}
	if err := os.MkdirAll(o.dataDir, 0o700); err != nil {
		return err
	}
	tokenPath := filepath.Join(o.dataDir, "dev-token")
	token, err := secretFile(tokenPath)
	if err != nil {
		return err
	}
	p, err := startPlane(ctx, o, []attestor.Attestor{attestor.NewStaticTokens(map[string]spiffeid.ID{token: demoID})}, logger)
	if err != nil {
		return err
	}
	defer p.stop()

	bundlePath := filepath.Join(o.dataDir, "bundle.pem") // written by startPlane
	fmt.Fprintf(out, "meshca dev: identity plane running (trust domain %s)\n", td.Name())
	fmt.Fprintf(out, "  trust bundle:  %s\n", bundlePath)
	if a := p.srv.Addr("grpc"); a != nil {
		fmt.Fprintf(out, "  gRPC CSR API:  %s (istio.v1.auth.IstioCertificateService)\n", a)
	}
	if a := p.srv.Addr("https"); a != nil {
		fmt.Fprintf(out, "  HTTPS API:     https://%s (POST /v1/sign, GET /v1/bundle)\n", a)
	}
	if a := p.srv.Addr("monitor"); a != nil {
		fmt.Fprintf(out, "  monitoring:    http://%s (/healthz, /readyz, /metrics)\n", a)
	}
	fmt.Fprintf(out, "  dev token:     %s (proves %s)\n", tokenPath, demoID)
	fmt.Fprintf(out, "  admin token:   %s (meshca token create --data-dir %s --spiffe-id ...)\n", o.adminTokenPath(), o.dataDir)

	if p.srv.Addr("grpc") == nil {
		return errors.New("dev: the demo needs the gRPC API (--grpc-listen)")
	}
	demoDir := filepath.Join(o.dataDir, "demo")
	if err := issueDemo(ctx, p, demoID, token, demoDir, out); err != nil {
		return err
	}
	if demo.once {
		return nil
	}
	if !demo.agent {
		fmt.Fprintln(out, "serving; press Ctrl-C to stop")
		<-ctx.Done()
		return nil
	}
	// An agent for the demo identity beside the CA, as on a workload's host.
	sockets, err := filepath.Abs(filepath.Join(o.dataDir, "sockets"))
	if err != nil {
		return err
	}
	ao := agentOptions{
		caAddr: p.srv.Addr("grpc").String(), caServerName: "localhost", caRoots: bundlePath, spiffeID: demoID.String(),
		tokenFile: tokenPath, keyType: sds.KeyECDSAP256, renewFraction: sds.DefaultRenewFraction,
		sdsSocket: filepath.Join(sockets, "sds.sock"), workloadSocket: filepath.Join(sockets, "workload.sock"),
	}
	a, err := startAgent(ctx, &ao, logger, nil)
	if err != nil {
		return fmt.Errorf("dev: agent: %w", err)
	}
	defer a.stop()
	fmt.Fprintf(out, "agent for %s:\n", demoID)
	fmt.Fprintf(out, "  Envoy SDS:     unix://%s (resources \"default\" and \"ROOTCA\")\n", ao.sdsSocket)
	fmt.Fprintf(out, "  Workload API:  unix://%s (SPIFFE_ENDPOINT_SOCKET)\n", ao.workloadSocket)
	fmt.Fprintf(out, "Envoy bootstrap snippet:\n%s", envoySnippet(ao.sdsSocket))
	fmt.Fprintln(out, "serving; press Ctrl-C to stop")
	<-ctx.Done()
	return nil
}

// envoySnippet is the Envoy configuration that takes the workload's
// certificate and trust bundle from the agent over SDS.
func envoySnippet(sdsSocket string) string {
	return `static_resources:
  clusters:
  - name: meshca_sds
    type: STATIC
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {http2_protocol_options: {}}
    load_assignment:
      cluster_name: meshca_sds
      endpoints:
      - lb_endpoints:
        - endpoint: {address: {pipe: {path: ` + sdsSocket + `}}}
# in a listener's or cluster's transport_socket:
#   typed_config:
#     "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
#     common_tls_context:
#       tls_certificate_sds_secret_configs:
#       - name: default
#         sds_config: {resource_api_version: V3, api_config_source: {api_type: GRPC, transport_api_version: V3, grpc_services: [{envoy_grpc: {cluster_name: meshca_sds}}]}}
#       validation_context_sds_secret_config:
#         name: ROOTCA
#         sds_config: {resource_api_version: V3, api_config_source: {api_type: GRPC, transport_api_version: V3, grpc_services: [{envoy_grpc: {cluster_name: meshca_sds}}]}}
`
}

// issueDemo asks the running CA for an SVID exactly as a workload would:
// local key, CSR, gRPC over TLS verified against the bundle, bearer token.
func issueDemo(ctx context.Context, p *plane, id spiffeid.ID, token, dir string, out io.Writer) error {
	key, err := ca.GenerateKey(ca.KeyECDSAP256)
	if err != nil {
		return err
	}
	csr, err := client.NewCSR(key, id)
	if err != nil {
		return err
	}
	roots := x509.NewCertPool()
	for _, r := range p.auth.Bundle().X509Authorities() {
		roots.AddCert(r)
	}
	c, err := client.New(client.Config{Addr: p.srv.Addr("grpc").String(), Roots: roots, ServerName: "localhost"})
	if err != nil {
		return err
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	chainPEM, err := c.Sign(ctx, csr, 0, token)
	if err != nil {
		return fmt.Errorf("dev: demo issuance: %w", err)
	}
	var chain []*x509.Certificate
	for _, s := range chainPEM {
		b, _ := pem.Decode([]byte(s))
		if b == nil {
			return errors.New("dev: CA returned a chain entry that is not PEM")
		}
		cert, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return fmt.Errorf("dev: CA returned a bad certificate: %w", err)
		}
		chain = append(chain, cert)
	}
	// The root is last; an SVID file holds the leaf and intermediates.
	if _, _, err := x509svid.Verify(chain[:len(chain)-1], p.auth.Bundle()); err != nil {
		return fmt.Errorf("dev: demo SVID does not verify: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	svidPEM := strings.Join(chainPEM[:len(chainPEM)-1], "")
	for _, f := range []struct {
		name string
		data []byte
		mode fs.FileMode
	}{
		{"svid.pem", []byte(svidPEM), 0o644},
		{"svid-key.pem", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600},
		{"bundle.pem", []byte(chainPEM[len(chainPEM)-1]), 0o644},
	} {
		if err := writeFile(filepath.Join(dir, f.name), f.data, f.mode); err != nil {
			return err
		}
	}
	leaf := chain[0]
	fmt.Fprintf(out, "demo SVID written to %s/ (svid.pem, svid-key.pem, bundle.pem)\n", dir)
	fmt.Fprintf(out, "  SPIFFE ID:  %s\n", id)
	fmt.Fprintf(out, "  serial:     %s\n", leaf.SerialNumber.Text(16))
	fmt.Fprintf(out, "  valid:      %s to %s (%s)\n", leaf.NotBefore.UTC().Format(time.RFC3339),
		leaf.NotAfter.UTC().Format(time.RFC3339), leaf.NotAfter.Sub(leaf.NotBefore).Round(time.Second))
	fmt.Fprintln(out, "  chain:")
	for i, c := range chain {
		name := c.Subject.CommonName
		if i == 0 {
			name = c.URIs[0].String()
		}
		fmt.Fprintf(out, "    [%d] %-48s not after %s\n", i, name, c.NotAfter.UTC().Format(time.RFC3339))
	}
	fmt.Fprintln(out, "  verified against the trust bundle with go-spiffe x509svid.Verify")
	return nil
}
