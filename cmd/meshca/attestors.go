package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/pflag"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/meshca/meshca/attestor"
	"github.com/meshca/meshca/attestor/jwks"
	"github.com/meshca/meshca/attestor/k8s"
	"github.com/meshca/meshca/attestor/oidc"
	"github.com/meshca/meshca/internal/clock"
	"github.com/meshca/meshca/internal/metrics"
)

// k8sOptions are the flags of Kubernetes ServiceAccount token attestation.
type k8sOptions struct {
	mode        string
	kubeconfig  string
	qps         float32
	burst       int
	audiences   []string
	issuer      string
	jwksURL     string
	jwksFile    string
	allow, deny []string
	cacheTTL    time.Duration
	cacheSize   int
}

func (o *k8sOptions) addFlags(fs *pflag.FlagSet) {
	fs.StringVar(&o.mode, "k8s-attestation", "off", "ServiceAccount token attestation: off, tokenreview (ask the API server, cached) or jwks (verify offline against the cluster's keys)")
	fs.StringVar(&o.kubeconfig, "kubeconfig", "", "kubeconfig for the API server; empty: in-cluster configuration")
	fs.Float32Var(&o.qps, "k8s-qps", 50, "client-go rate limit for API calls (TokenReviews, JWKS), queries per second; client-go's own default is 5")
	fs.IntVar(&o.burst, "k8s-burst", 100, "client-go burst above --k8s-qps")
	fs.StringSliceVar(&o.audiences, "token-audiences", k8s.DefaultAudiences, "accepted ServiceAccount token audiences (add istio-ca for istio-agent)")
	fs.StringVar(&o.issuer, "k8s-issuer", k8s.DefaultIssuer, "ServiceAccount token issuer (jwks mode)")
	fs.StringVar(&o.jwksURL, "k8s-jwks-url", "", "JWKS URL (jwks mode); default: /openid/v1/jwks through the API server")
	fs.StringVar(&o.jwksFile, "k8s-jwks-file", "", "JWKS file (jwks mode), instead of fetching it")
	fs.StringSliceVar(&o.allow, "allow-namespaces", nil, "if set, only these namespaces (ns) or ServiceAccounts (ns/sa) get certificates; glob patterns allowed")
	fs.StringSliceVar(&o.deny, "deny-namespaces", k8s.DefaultDeny, "namespaces (ns) or ServiceAccounts (ns/sa) refused; wins over --allow-namespaces")
	fs.DurationVar(&o.cacheTTL, "tokenreview-cache-ttl", time.Minute, "how long a positive TokenReview is trusted (never past the token's expiry)")
	fs.IntVar(&o.cacheSize, "tokenreview-cache-size", 10000, "most TokenReview results cached")
}

// tokenAttestors builds the bearer-token attestors the options ask for:
// OIDC issuers first (each claims only its own tokens), then Kubernetes.
func (o *serverOptions) tokenAttestors(ctx context.Context, td spiffeid.TrustDomain, clk clock.Clock, log *slog.Logger, reg prometheus.Registerer) ([]attestor.Attestor, error) {
	var out []attestor.Attestor
	if o.oidcConfig != "" {
		issuers, err := oidc.LoadFile(o.oidcConfig)
		if err != nil {
			return nil, err
		}
		for _, ic := range issuers {
			a, err := oidc.New(ic, td, nil, clk)
			if err != nil {
				return nil, err
			}
			out = append(out, a)
		}
	}
	k := &o.k8s
	if k.mode == "off" {
		return out, nil
	}
	cfg := k8s.Config{TrustDomain: td, Audiences: k.audiences, Allow: k.allow, Deny: k.deny, Clock: clk, Logger: log, Metrics: metrics.NewK8s(reg)}
	if cfg.Deny == nil {
		cfg.Deny = []string{} // an explicitly empty list denies nothing
	}
	switch k.mode {
	case "tokenreview":
		client, err := k.client()
		if err != nil {
			return nil, err
		}
		a, err := k8s.NewTokenReview(cfg, k8s.ClientReviewer{Client: client}, k8s.CacheConfig{TTL: k.cacheTTL, Size: k.cacheSize})
		if err != nil {
			return nil, err
		}
		return append(out, a), nil
	case "jwks":
		var fetch jwks.Fetcher
		switch {
		case k.jwksURL != "" && k.jwksFile != "":
			return nil, errors.New("--k8s-jwks-url and --k8s-jwks-file: choose one")
		case k.jwksURL != "":
			fetch = jwks.URLFetcher(nil, k.jwksURL)
		case k.jwksFile != "":
			fetch = jwks.FileFetcher(k.jwksFile)
		default:
			client, err := k.client()
			if err != nil {
				return nil, err
			}
			fetch = func(ctx context.Context) ([]byte, error) {
				return client.Discovery().RESTClient().Get().AbsPath("/openid/v1/jwks").DoRaw(ctx)
			}
		}
		a, err := k8s.NewJWKS(cfg, k.issuer, jwks.NewKeySet(jwks.KeySetConfig{Fetch: fetch, Clock: clk}))
		if err != nil {
			return nil, err
		}
		return append(out, a), nil
	}
	return nil, fmt.Errorf("--k8s-attestation must be off, tokenreview or jwks, not %q", k.mode)
}

// client returns a Kubernetes client with the configured rate limits.
func (o *k8sOptions) client() (kubernetes.Interface, error) {
	var (
		cfg *rest.Config
		err error
	)
	if o.kubeconfig == "" {
		if cfg, err = rest.InClusterConfig(); err != nil {
			return nil, fmt.Errorf("kubernetes: not running in a cluster (%v): give --kubeconfig", err)
		}
	} else if cfg, err = clientcmd.BuildConfigFromFlags("", o.kubeconfig); err != nil {
		return nil, fmt.Errorf("--kubeconfig: %w", err)
	}
	cfg.QPS, cfg.Burst = o.qps, o.burst
	cfg.UserAgent = "meshca/" + version
	return kubernetes.NewForConfig(cfg)
}
