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
	// A kubeconfig for an API server that is not there: building the
	// attestors does not call it.
	kubeconfig := filepath.Join(dir, "kubeconfig")
	os.WriteFile(kubeconfig, []byte("apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: 'https://127.0.0.1:1'}}]\n"+
		"users: [{name: u, user: {token: t}}]\ncontexts: [{name: x, context: {cluster: c, user: u}}]\ncurrent-context: x\n"), 0o600)
	oidcFile := filepath.Join(dir, "oidc.yaml")
	os.WriteFile(oidcFile, []byte("issuers:\n- issuer: https://ci.example\n  jwks_file: "+jwksFile+"\n  audiences: [meshca]\n  spiffe_id: 'spiffe://{{td}}/ci/{{.sub}}'\n"), 0o600)
	tests := []struct {
		name    string
		oidc    string
		k8s     Kubernetes
		want    int    // attestors after mTLS and join tokens
		ready   string // an attestor is not ready yet, saying this
		wantErr string
	}{
		{name: "off"},
		{name: "off by name", k8s: Kubernetes{Mode: K8sOff}},
		{name: "jwks from a file", k8s: Kubernetes{Mode: K8sJWKS, JWKSFile: jwksFile}, want: 1},
		{name: "jwks url and file", k8s: Kubernetes{Mode: K8sJWKS, JWKSFile: jwksFile, JWKSURL: "https://x"}, wantErr: "choose one"},
		{name: "oidc and jwks", oidc: oidcFile, k8s: Kubernetes{Mode: K8sJWKS, JWKSFile: jwksFile}, want: 2},
		{name: "informer", k8s: Kubernetes{Mode: K8sInformer, Kubeconfig: kubeconfig}, want: 1, ready: "informer caches not synced"},
		{name: "informer with keys from a file", k8s: Kubernetes{Mode: K8sInformer, Kubeconfig: kubeconfig, JWKSFile: jwksFile}, want: 1, ready: "not synced"},
		{name: "informer with a missing kubeconfig", k8s: Kubernetes{Mode: K8sInformer, Kubeconfig: filepath.Join(dir, "absent"), JWKSFile: jwksFile}, wantErr: "kubeconfig"},
		{name: "tokenreview with a missing kubeconfig", k8s: Kubernetes{Mode: K8sTokenReview, Kubeconfig: filepath.Join(dir, "absent")}, wantErr: "kubeconfig"},
		{name: "unknown mode", k8s: Kubernetes{Mode: "magic"}, wantErr: "must be off, informer, tokenreview or jwks"},
		{name: "bad deny pattern", k8s: Kubernetes{Mode: K8sJWKS, JWKSFile: jwksFile, Deny: []string{"[x"}}, wantErr: "pattern"},
		{name: "informer with trusted node accounts", k8s: Kubernetes{Mode: K8sInformer, Kubeconfig: kubeconfig, TrustedNodeAccounts: []string{"istio-system/ztunnel"}},
			want: 1, ready: "not synced"},
		{name: "jwks with trusted node accounts (refused at each request)", k8s: Kubernetes{Mode: K8sJWKS, JWKSFile: jwksFile, TrustedNodeAccounts: []string{"istio-system/ztunnel"}},
			want: 1},
		{name: "malformed trusted node account", k8s: Kubernetes{Mode: K8sInformer, Kubeconfig: kubeconfig, TrustedNodeAccounts: []string{"ztunnel"}},
			wantErr: "not <namespace>/<serviceaccount>"},
		{name: "missing oidc config", oidc: filepath.Join(dir, "absent.yaml"), wantErr: "absent.yaml"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := Config{TrustDomain: spiffeid.RequireTrustDomainFromString("example.org"), DataDir: dir, OIDCConfigFile: tc.oidc, Kubernetes: tc.k8s}
			if err := cfg.setDefaults(); err != nil {
				t.Fatal(err)
			}
			got, kube, err := cfg.tokenAttestors(prometheus.NewRegistry())
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || len(got) != tc.want {
				t.Fatalf("got %d attestors, %v; want %d", len(got), err, tc.want)
			}
			var waitFor []background
			for _, a := range got {
				if b, ok := a.(background); ok {
					waitFor = append(waitFor, b)
				}
			}
			// Their background work is never started here: not ready.
			if ready := readyAll(waitFor, nil); tc.ready == "" && ready != nil {
				t.Errorf("an attestor has background work")
			} else if tc.ready != "" {
				if ready == nil {
					t.Fatal("no attestor has background work")
				}
				if err := ready(context.Background()); err == nil || !strings.Contains(err.Error(), tc.ready) {
					t.Errorf("readiness before the attestors run = %v, want %q", err, tc.ready)
				}
			}
			// Renewals pass the allow and deny lists in every mode: the
			// default Deny refuses kube-system.
			err = kube.admission.Admit(context.Background(), spiffeid.RequireFromString("spiffe://example.org/ns/kube-system/sa/x"))
			if !errors.Is(err, attestor.ErrPermissionDenied) {
				t.Errorf("renewal admission of kube-system = %v, want ErrPermissionDenied", err)
			}
			// Every mode has a node authorizer: without the informer mode
			// (or trusted node accounts) it refuses every impersonation.
			if kube.nodes == nil {
				t.Error("no node authorizer")
			}
		})
	}
}
