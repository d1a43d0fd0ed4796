package k8s_test

import (
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshca/meshca/attestor/jwks"
	"github.com/meshca/meshca/attestor/k8s"
)

// TestConstructorsRefuseMissingParts: a missing reviewer, key set or cache is an
// error when the attestor is built, not on the first token.
func TestConstructorsRefuseMissingParts(t *testing.T) {
	base := k8s.Config{TrustDomain: spiffeid.RequireTrustDomainFromString("example.org")}
	tests := []struct {
		name string
		new  func() error
		want string
	}{
		{"TokenReview without a reviewer", func() error { _, err := k8s.NewTokenReview(k8s.TokenReviewConfig{Config: base}); return err }, "reviewer is required"},
		{"TokenReview without a trust domain", func() error { _, err := k8s.NewTokenReview(k8s.TokenReviewConfig{}); return err }, "trust domain"},
		{"JWKS without keys", func() error { _, err := k8s.NewJWKS(k8s.JWKSConfig{Config: base}); return err }, "key set is required"},
		{"informer without keys", func() error {
			_, err := k8s.NewInformer(k8s.InformerConfig{JWKSConfig: k8s.JWKSConfig{Config: base}})
			return err
		}, "key set is required"},
		{"informer without Informers", func() error {
			_, err := k8s.NewInformer(k8s.InformerConfig{JWKSConfig: k8s.JWKSConfig{Config: base, Keys: jwks.NewKeySet(jwks.KeySetConfig{Fetch: jwks.FileFetcher("x")})}})
			return err
		}, "needs Informers"},
		{"Informers without a client", func() error { _, err := k8s.NewInformers(k8s.InformersConfig{}); return err }, "need a Kubernetes client"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.new(); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
}
