package plane

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshca/meshca/attestor"
)

func TestTokenAttestorsFromConfig(t *testing.T) {
	dir := t.TempDir()
	jwksFile := filepath.Join(dir, "jwks.json")
	os.WriteFile(jwksFile, []byte(`{"keys":[]}`), 0o600)
	oidcFile := filepath.Join(dir, "oidc.yaml")
	os.WriteFile(oidcFile, []byte("issuers:\n- issuer: https://ci.example\n  jwks_file: "+jwksFile+"\n  audiences: [meshca]\n  spiffe_id: 'spiffe://{{td}}/ci/{{.sub}}'\n"), 0o600)
	tests := []struct {
		name    string
		oidc    string
		k8s     Kubernetes
		want    int // attestors after mTLS and join tokens
		wantErr string
	}{
		{name: "off"},
		{name: "off by name", k8s: Kubernetes{Mode: K8sOff}},
		{name: "jwks from a file", k8s: Kubernetes{Mode: K8sJWKS, JWKSFile: jwksFile}, want: 1},
		{name: "jwks url and file", k8s: Kubernetes{Mode: K8sJWKS, JWKSFile: jwksFile, JWKSURL: "https://x"}, wantErr: "choose one"},
		{name: "oidc and jwks", oidc: oidcFile, k8s: Kubernetes{Mode: K8sJWKS, JWKSFile: jwksFile}, want: 2},
		{name: "tokenreview with a missing kubeconfig", k8s: Kubernetes{Mode: K8sTokenReview, Kubeconfig: filepath.Join(dir, "absent")}, wantErr: "kubeconfig"},
		{name: "unknown mode", k8s: Kubernetes{Mode: "magic"}, wantErr: "must be off, informer, tokenreview or jwks"},
		{name: "bad deny pattern", k8s: Kubernetes{Mode: K8sJWKS, JWKSFile: jwksFile, Deny: []string{"[x"}}, wantErr: "pattern"},
		{name: "missing oidc config", oidc: filepath.Join(dir, "absent.yaml"), wantErr: "absent.yaml"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := Config{TrustDomain: spiffeid.RequireTrustDomainFromString("example.org"), DataDir: dir, OIDCConfigFile: tc.oidc, Kubernetes: tc.k8s}
			if err := cfg.setDefaults(); err != nil {
				t.Fatal(err)
			}
			got, admission, err := cfg.tokenAttestors(prometheus.NewRegistry())
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || len(got) != tc.want {
				t.Fatalf("got %d attestors, %v; want %d", len(got), err, tc.want)
			}
			// Renewals pass the allow and deny lists in every mode: the
			// default Deny refuses kube-system.
			err = admission.Admit(context.Background(), spiffeid.RequireFromString("spiffe://example.org/ns/kube-system/sa/x"))
			if !errors.Is(err, attestor.ErrPermissionDenied) {
				t.Errorf("renewal admission of kube-system = %v, want ErrPermissionDenied", err)
			}
		})
	}
}
