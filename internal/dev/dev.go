// Package dev runs the local development identity plane that `meshca dev`
// and `make run` start: a CA plane on 127.0.0.1 with its data in one
// directory, one demo SVID issued through the real gRPC CSR API with a
// development token, and an agent for that identity serving Envoy SDS and
// the SPIFFE Workload API on Unix sockets.
package dev

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/meshca/meshca/attestor"
	"github.com/meshca/meshca/ca/client"
	"github.com/meshca/meshca/ca/plane"
	"github.com/meshca/meshca/internal/files"
	"github.com/meshca/meshca/internal/pki"
	"github.com/meshca/meshca/sds"
	"github.com/meshca/meshca/sds/agent"
)

// Config configures the development plane.
type Config struct {
	// Plane is the CA's configuration; its DataDir also holds the dev
	// token, the demo SVID and the agent's sockets.
	Plane plane.Config
	// Namespace and ServiceAccount name the demo identity. Defaults
	// "default" and "demo".
	Namespace, ServiceAccount string
	// Once exits after the demo SVID instead of serving.
	Once bool
	// NoAgent serves without starting the agent.
	NoAgent bool
	// Out receives what a person reads: addresses, files, the demo SVID
	// and the Envoy bootstrap snippet. Default os.Stdout.
	Out io.Writer
}

// Run starts the plane, issues the demo SVID, starts the agent, and serves
// until ctx ends (unless Once).
func Run(ctx context.Context, cfg Config) (err error) {
	if cfg.Namespace == "" {
		cfg.Namespace = "default"
	}
	if cfg.ServiceAccount == "" {
		cfg.ServiceAccount = "demo"
	}
	out := cfg.Out
	if out == nil {
		out = os.Stdout
	}
	o := &cfg.Plane
	td := o.TrustDomain
	demoID, err := spiffeid.FromSegments(td, "ns", cfg.Namespace, "sa", cfg.ServiceAccount)
	if err != nil {
		return fmt.Errorf("demo identity: %w", err)
	}
	if err := os.MkdirAll(o.DataDir, 0o700); err != nil {
		return err
	}
	tokenPath := filepath.Join(o.DataDir, "dev-token")
	token, err := files.Token(tokenPath)
	if err != nil {
		return err
	}
	o.Extra = append(o.Extra, attestor.NewStaticTokens(map[string]spiffeid.ID{token: demoID}))
	p, err := plane.Start(ctx, *o)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, p.Stop()) }()
	printPlane(out, p, tokenPath, demoID)
	if p.Addr("grpc") == nil {
		return errors.New("dev: the demo needs the gRPC API (--grpc-listen)")
	}
	if err := issueDemo(ctx, p, demoID, token, filepath.Join(o.DataDir, "demo"), out); err != nil {
		return err
	}
	if cfg.Once {
		return nil
	}
	if cfg.NoAgent {
		fmt.Fprintln(out, "serving; press Ctrl-C to stop")
		<-ctx.Done()
		return nil
	}
	// An agent for the demo identity beside the CA, as on a workload's host.
	sockets, err := filepath.Abs(filepath.Join(o.DataDir, "sockets"))
	if err != nil {
		return err
	}
	ac := agent.Config{
		ID: demoID, CAAddr: p.Addr("grpc").String(), CAServerName: "localhost", CARootsFile: p.Config().BundlePath(),
		TokenFile: tokenPath, KeyType: sds.KeyECDSAP256, RenewFraction: sds.DefaultRenewFraction,
		SDSSocket: filepath.Join(sockets, "sds.sock"), WorkloadSocket: filepath.Join(sockets, "workload.sock"),
		Logger: o.Logger,
	}
	a, err := agent.Start(ctx, ac)
	if err != nil {
		return fmt.Errorf("dev: agent: %w", err)
	}
	defer func() { err = errors.Join(err, a.Stop()) }()
	fmt.Fprintf(out, "agent for %s:\n", demoID)
	fmt.Fprintf(out, "  Envoy SDS:     unix://%s (resources \"default\" and \"ROOTCA\")\n", ac.SDSSocket)
	fmt.Fprintf(out, "  Workload API:  unix://%s (SPIFFE_ENDPOINT_SOCKET)\n", ac.WorkloadSocket)
	fmt.Fprintf(out, "Envoy bootstrap snippet:\n%s", EnvoySnippet(ac.SDSSocket))
	fmt.Fprintln(out, "serving; press Ctrl-C to stop")
	<-ctx.Done()
	return nil
}

// printPlane says where the running plane listens and keeps its files.
func printPlane(out io.Writer, p *plane.Plane, tokenPath string, demoID spiffeid.ID) {
	cfg := p.Config()
	fmt.Fprintf(out, "meshca dev: identity plane running (trust domain %s)\n", cfg.TrustDomain.Name())
	fmt.Fprintf(out, "  trust bundle:  %s\n", cfg.BundlePath())
	if a := p.Addr("grpc"); a != nil {
		fmt.Fprintf(out, "  gRPC CSR API:  %s (istio.v1.auth.IstioCertificateService)\n", a)
	}
	if a := p.Addr("https"); a != nil {
		fmt.Fprintf(out, "  HTTPS API:     https://%s (POST /v1/sign, GET /v1/bundle)\n", a)
	}
	if a := p.Addr("monitor"); a != nil {
		fmt.Fprintf(out, "  monitoring:    http://%s (/healthz, /readyz, /metrics)\n", a)
	}
	fmt.Fprintf(out, "  dev token:     %s (proves %s)\n", tokenPath, demoID)
	fmt.Fprintf(out, "  admin token:   %s (meshca token create --data-dir %s --spiffe-id ...)\n", cfg.AdminTokenPath(), cfg.DataDir)
}

// EnvoySnippet is the Envoy configuration that takes the workload's
// certificate and trust bundle from the agent over SDS.
func EnvoySnippet(sdsSocket string) string {
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
func issueDemo(ctx context.Context, p *plane.Plane, id spiffeid.ID, token, dir string, out io.Writer) error {
	key, err := pki.GenerateKey(pki.KeyECDSAP256)
	if err != nil {
		return err
	}
	csr, err := client.NewCSR(key, id)
	if err != nil {
		return err
	}
	roots := x509.NewCertPool()
	for _, r := range p.Authority().Bundle().X509Authorities() {
		roots.AddCert(r)
	}
	c, err := client.New(client.Config{Addr: p.Addr("grpc").String(), Roots: roots, ServerName: "localhost"})
	if err != nil {
		return err
	}
	defer func() { _ = c.Close() }()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	chainPEM, err := c.Sign(ctx, csr, 0, token)
	if err != nil {
		return fmt.Errorf("dev: demo issuance: %w", err)
	}
	// The last element holds the roots: one, or during a root rotation
	// (meshca ca rotate-root) the old and the new one together, as Istio's
	// protocol has it. An SVID file holds the leaf and intermediates.
	if len(chainPEM) < 2 {
		return fmt.Errorf("dev: CA returned %d chain elements, want the leaf, intermediates and roots", len(chainPEM))
	}
	var chain []*x509.Certificate
	for _, s := range chainPEM[:len(chainPEM)-1] {
		cert, err := pki.ParseCertificate(s)
		if err != nil {
			return fmt.Errorf("dev: CA returned a bad certificate: %w", err)
		}
		chain = append(chain, cert)
	}
	rootCerts, err := pki.ParseCertificates([]byte(chainPEM[len(chainPEM)-1]))
	if err != nil {
		return fmt.Errorf("dev: CA returned bad roots: %w", err)
	}
	if _, _, err := x509svid.Verify(chain, p.Authority().Bundle()); err != nil {
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
		if err := files.WriteAtomic(filepath.Join(dir, f.name), f.data, f.mode); err != nil {
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
	for i, c := range append(chain, rootCerts...) {
		name := c.Subject.CommonName
		if i == 0 {
			name = c.URIs[0].String()
		}
		fmt.Fprintf(out, "    [%d] %-48s not after %s\n", i, name, c.NotAfter.UTC().Format(time.RFC3339))
	}
	fmt.Fprintln(out, "  verified against the trust bundle with go-spiffe x509svid.Verify")
	return nil
}
