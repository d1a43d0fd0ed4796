package main

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/pflag"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshca/meshca/internal/clock"
)

func TestTokenAttestorsFromFlags(t *testing.T) {
	dir := t.TempDir()
	jwksFile := filepath.Join(dir, "jwks.json")
	os.WriteFile(jwksFile, []byte(`{"keys":[]}`), 0o600)
	oidcFile := filepath.Join(dir, "oidc.yaml")
	os.WriteFile(oidcFile, []byte("issuers:\n- issuer: https://ci.example\n  jwks_file: "+jwksFile+"\n  audiences: [meshca]\n  spiffe_id: 'spiffe://{{td}}/ci/{{.sub}}'\n"), 0o600)
	tests := []struct {
		name    string
		args    []string
		want    int
		wantErr string
	}{
		{"off", nil, 0, ""},
		{"jwks from a file", []string{"--k8s-attestation", "jwks", "--k8s-jwks-file", jwksFile}, 1, ""},
		{"jwks url and file", []string{"--k8s-attestation", "jwks", "--k8s-jwks-file", jwksFile, "--k8s-jwks-url", "https://x"}, 0, "choose one"},
		{"oidc and jwks", []string{"--oidc-config", oidcFile, "--k8s-attestation", "jwks", "--k8s-jwks-file", jwksFile}, 2, ""},
		{"tokenreview with a missing kubeconfig", []string{"--k8s-attestation", "tokenreview", "--kubeconfig", filepath.Join(dir, "absent")}, 0, "--kubeconfig"},
		{"unknown mode", []string{"--k8s-attestation", "magic"}, 0, "must be off, tokenreview or jwks"},
		{"bad deny pattern", []string{"--k8s-attestation", "jwks", "--k8s-jwks-file", jwksFile, "--deny-namespaces", "[x"}, 0, "pattern"},
		{"missing oidc config", []string{"--oidc-config", filepath.Join(dir, "absent.yaml")}, 0, "absent.yaml"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var o serverOptions
			fs := pflag.NewFlagSet("server", pflag.ContinueOnError)
			o.addFlags(fs)
			if err := fs.Parse(tc.args); err != nil {
				t.Fatal(err)
			}
			got, err := o.tokenAttestors(context.Background(), spiffeid.RequireTrustDomainFromString("example.org"), clock.Real{}, slog.New(slog.DiscardHandler), prometheus.NewRegistry())
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || len(got) != tc.want {
				t.Fatalf("got %d attestors, %v; want %d", len(got), err, tc.want)
			}
		})
	}
}
