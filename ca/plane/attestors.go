package plane

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshca/meshca/attestor"
	"github.com/meshca/meshca/attestor/jwks"
	"github.com/meshca/meshca/attestor/k8s"
	"github.com/meshca/meshca/attestor/oidc"
	"github.com/meshca/meshca/internal/clock"
	"github.com/meshca/meshca/internal/kubeclient"
	"github.com/meshca/meshca/internal/metrics"
)

// Kubernetes attestation modes.
const (
	K8sOff         = "off"
	K8sTokenReview = "tokenreview"
	K8sJWKS        = "jwks"
)

// Kubernetes configures ServiceAccount token attestation.
type Kubernetes struct {
	// Mode is K8sOff (default), K8sTokenReview (ask the API server, cached)
	// or K8sJWKS (verify offline against the cluster's keys).
	Mode string
	// Kubeconfig is the API server's kubeconfig; "" the in-cluster one.
	Kubeconfig string
	// QPS and Burst rate-limit API calls (TokenReviews, JWKS). Zero keeps
	// client-go's defaults (5 and 10); meshca's flags default to 50 and 100.
	QPS   float32
	Burst int
	// Audiences accepted; default k8s.DefaultAudiences.
	Audiences []string
	// Issuer of the tokens; default k8s.DefaultIssuer. JWKS mode verifies
	// it; TokenReview mode refuses, before any review, a token of another
	// issuer.
	Issuer string
	// JWKSURL or JWKSFile is where the keys are (JWKS mode; at most one);
	// neither: /openid/v1/jwks through the API server.
	JWKSURL, JWKSFile string
	// Allow and Deny are namespace or namespace/ServiceAccount globs. Nil
	// Deny is k8s.DefaultDeny; an empty non-nil Deny denies nothing.
	Allow, Deny []string
	// CacheTTL and CacheSize bound the TokenReview cache (defaults in
	// k8s.CacheConfig).
	CacheTTL  time.Duration
	CacheSize int
	// MaxInFlightReviews bounds the TokenReviews sent at once (default
	// k8s.DefaultMaxInFlight).
	MaxInFlightReviews int
}

// attestor builds the Kubernetes attestor, or nil when Mode is off.
func (k *Kubernetes) attestor(ctx context.Context, td spiffeid.TrustDomain, userAgent string, clk clock.Clock, log *slog.Logger, reg prometheus.Registerer) (attestor.Attestor, error) {
	if k.Mode == "" || k.Mode == K8sOff {
		return nil, nil
	}
	cfg := k8s.Config{TrustDomain: td, Audiences: k.Audiences, Allow: k.Allow, Deny: k.Deny, Clock: clk, Logger: log, Metrics: metrics.NewK8s(reg)}
	kc := kubeclient.Config{Kubeconfig: k.Kubeconfig, QPS: k.QPS, Burst: k.Burst, UserAgent: userAgent}
	switch k.Mode {
	case K8sTokenReview:
		client, err := kc.Clientset()
		if err != nil {
			return nil, err
		}
		return k8s.NewTokenReview(k8s.TokenReviewConfig{Config: cfg, Reviewer: k8s.ClientReviewer{Client: client}, Issuer: k.Issuer,
			Cache: k8s.CacheConfig{TTL: k.CacheTTL, Size: k.CacheSize}, MaxInFlight: k.MaxInFlightReviews})
	case K8sJWKS:
		var fetch jwks.Fetcher
		switch {
		case k.JWKSURL != "" && k.JWKSFile != "":
			return nil, errors.New("plane: a JWKS URL and a JWKS file: choose one")
		case k.JWKSURL != "":
			fetch = jwks.URLFetcher(nil, k.JWKSURL)
		case k.JWKSFile != "":
			fetch = jwks.FileFetcher(k.JWKSFile)
		default:
			client, err := kc.Clientset()
			if err != nil {
				return nil, err
			}
			fetch = func(ctx context.Context) ([]byte, error) {
				return client.Discovery().RESTClient().Get().AbsPath("/openid/v1/jwks").DoRaw(ctx)
			}
		}
		return k8s.NewJWKS(k8s.JWKSConfig{Config: cfg, Issuer: k.Issuer, Keys: jwks.NewKeySet(jwks.KeySetConfig{Fetch: fetch, Clock: clk})})
	}
	return nil, fmt.Errorf("plane: Kubernetes attestation must be off, tokenreview or jwks, not %q", k.Mode)
}

// tokenAttestors builds the bearer-token attestors: one per OIDC issuer
// (each claims only its own tokens), then Kubernetes.
func (c *Config) tokenAttestors(ctx context.Context, reg prometheus.Registerer) ([]attestor.Attestor, error) {
	var out []attestor.Attestor
	if c.OIDCConfigFile != "" {
		issuers, err := oidc.LoadFile(c.OIDCConfigFile)
		if err != nil {
			return nil, err
		}
		for _, ic := range issuers {
			a, err := oidc.New(oidc.Config{Issuer: ic, TrustDomain: c.TrustDomain, Clock: c.Clock})
			if err != nil {
				return nil, err
			}
			out = append(out, a)
		}
	}
	k, err := c.Kubernetes.attestor(ctx, c.TrustDomain, c.UserAgent, c.Clock, c.Logger, reg)
	if err != nil || k == nil {
		return out, err
	}
	return append(out, k), nil
}
