package plane

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"k8s.io/client-go/kubernetes"

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
	K8sInformer    = "informer"
	K8sTokenReview = "tokenreview"
	K8sJWKS        = "jwks"
)

// Kubernetes configures ServiceAccount token attestation.
type Kubernetes struct {
	// Mode is K8sOff (default), K8sInformer (verify offline against the
	// cluster's keys, then check the bound ServiceAccount and pod in
	// informer caches: the recommended mode), K8sTokenReview (ask the API
	// server, cached) or K8sJWKS (verify offline only).
	Mode string
	// Kubeconfig is the API server's kubeconfig; "" the in-cluster one.
	Kubeconfig string
	// QPS and Burst rate-limit API calls (TokenReviews, JWKS, lists). Zero keeps
	// client-go's defaults (5 and 10); meshca's flags default to 50 and 100.
	QPS   float32
	Burst int
	// Audiences accepted; default k8s.DefaultAudiences.
	Audiences []string
	// Issuer of the tokens; default k8s.DefaultIssuer. The informer and
	// JWKS modes verify it; TokenReview mode refuses, before any review, a
	// token of another issuer.
	Issuer string
	// JWKSURL or JWKSFile is where the keys are (informer and JWKS modes;
	// at most one); neither: /openid/v1/jwks through the API server.
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
	// ServiceAccountTTL and ServiceAccountMaxStale bound the ServiceAccount
	// lookups made when a Kubernetes identity renews over mTLS (defaults in
	// k8s.LookupConfig): a deleted ServiceAccount renews for at most
	// ServiceAccountTTL; one seen within ServiceAccountMaxStale renews while
	// the API server is unreachable. The informer mode reads its cache
	// instead, and uses neither.
	ServiceAccountTTL, ServiceAccountMaxStale time.Duration
	// TrustedNodeAccounts ("ns/sa") may ask for the identities of the pods
	// on their node (Istio ambient's ztunnel; k8s.NodeAuthorizer). It
	// needs the informer mode: in the others every such request is
	// refused, with a warning at start and in the log of each.
	TrustedNodeAccounts []string
}

// kubeParts are what Kubernetes builds: the attestor (nil when off), the
// admission of renewals over mTLS, and the node authorizer of
// impersonation requests.
type kubeParts struct {
	attestor  attestor.Attestor
	admission *k8s.Admission
	nodes     *k8s.NodeAuthorizer
}

// build returns the Kubernetes attestor, nil when Mode is off; the
// admission for renewals over mTLS, which applies to identities of the
// Kubernetes shape the allow and deny lists (always, whichever way the
// identity was first issued) and, with Kubernetes attestation on, checks
// that the ServiceAccount still exists: in the informer mode in the
// attestor's informer cache, otherwise by asking the API server; and the
// node authorizer, which reads the informer mode's pod cache.
func (k *Kubernetes) build(td spiffeid.TrustDomain, userAgent string, clk clock.Clock, log *slog.Logger, reg prometheus.Registerer) (kubeParts, error) {
	cfg := k8s.Config{TrustDomain: td, Audiences: k.Audiences, Allow: k.Allow, Deny: k.Deny, Clock: clk, Logger: log, Metrics: metrics.NewK8s(reg)}
	parts := func(a attestor.Attestor, sas k8s.ServiceAccounts, pods *k8s.Informers) (kubeParts, error) {
		adm, err := k8s.NewAdmission(k8s.AdmissionConfig{Config: cfg, ServiceAccounts: sas,
			Lookup: k8s.LookupConfig{TTL: k.ServiceAccountTTL, MaxStale: k.ServiceAccountMaxStale}})
		if err != nil {
			return kubeParts{}, err
		}
		nodes, err := k8s.NewNodeAuthorizer(k8s.NodeAuthorizerConfig{Config: cfg, TrustedNodeAccounts: k.TrustedNodeAccounts, Informers: pods})
		return kubeParts{attestor: a, admission: adm, nodes: nodes}, err
	}
	if k.Mode == "" || k.Mode == K8sOff {
		return parts(nil, nil, nil)
	}
	kc := kubeclient.Config{Kubeconfig: k.Kubeconfig, QPS: k.QPS, Burst: k.Burst, UserAgent: userAgent}
	if k.JWKSURL != "" && k.JWKSFile != "" {
		return kubeParts{}, errors.New("plane: a JWKS URL and a JWKS file: choose one")
	}
	switch k.Mode {
	case K8sInformer:
		client, err := kc.Clientset()
		if err != nil {
			return kubeParts{}, err
		}
		objects, err := k8s.NewInformers(k8s.InformersConfig{Client: client, Logger: log})
		if err != nil {
			return kubeParts{}, err
		}
		inf, err := k8s.NewInformer(k8s.InformerConfig{JWKSConfig: k.jwksConfig(cfg, client, clk), Informers: objects})
		if err != nil {
			return kubeParts{}, err
		}
		return parts(inf, objects, objects)
	case K8sTokenReview:
		client, err := kc.Clientset()
		if err != nil {
			return kubeParts{}, err
		}
		tr, err := k8s.NewTokenReview(k8s.TokenReviewConfig{Config: cfg, Reviewer: k8s.ClientReviewer{Client: client}, Issuer: k.Issuer,
			Cache: k8s.CacheConfig{TTL: k.CacheTTL, Size: k.CacheSize}, MaxInFlight: k.MaxInFlightReviews})
		if err != nil {
			return kubeParts{}, err
		}
		return parts(tr, k8s.ClientServiceAccounts{Client: client}, nil)
	case K8sJWKS:
		var sas k8s.ServiceAccounts
		// The keys need the API server only when they are fetched through
		// it; renewals need it to see deleted ServiceAccounts. Without one,
		// say what is lost.
		client, err := kc.Clientset()
		switch {
		case err == nil:
			sas = k8s.ClientServiceAccounts{Client: client}
		case k.JWKSURL == "" && k.JWKSFile == "":
			return kubeParts{}, err
		default:
			log.Warn("no API server for JWKS mode: renewals over mTLS check the allow and deny lists only, and an SVID of a deleted ServiceAccount renews until its SPIFFE ID is revoked", "err", err)
		}
		jw, err := k8s.NewJWKS(k.jwksConfig(cfg, client, clk))
		if err != nil {
			return kubeParts{}, err
		}
		return parts(jw, sas, nil)
	}
	return kubeParts{}, fmt.Errorf("plane: Kubernetes attestation must be off, informer, tokenreview or jwks, not %q", k.Mode)
}

// jwksConfig says where the cluster's keys come from: JWKSFile, JWKSURL,
// or else /openid/v1/jwks through the API server (client, which is nil
// only when one of the others is set).
func (k *Kubernetes) jwksConfig(cfg k8s.Config, client kubernetes.Interface, clk clock.Clock) k8s.JWKSConfig {
	var fetch jwks.Fetcher
	switch {
	case k.JWKSFile != "":
		fetch = jwks.FileFetcher(k.JWKSFile)
	case k.JWKSURL != "":
		fetch = jwks.URLFetcher(nil, k.JWKSURL)
	default:
		fetch = func(ctx context.Context) ([]byte, error) {
			return client.Discovery().RESTClient().Get().AbsPath("/openid/v1/jwks").DoRaw(ctx)
		}
	}
	return k8s.JWKSConfig{Config: cfg, Issuer: k.Issuer, Keys: jwks.NewKeySet(jwks.KeySetConfig{Fetch: fetch, Clock: clk})}
}

// tokenAttestors builds the bearer-token attestors: one per OIDC issuer
// (each claims only its own tokens), then Kubernetes; and Kubernetes'
// other parts (the admission of renewals, the node authorizer).
func (c *Config) tokenAttestors(reg prometheus.Registerer) ([]attestor.Attestor, kubeParts, error) {
	var out []attestor.Attestor
	if c.OIDCConfigFile != "" {
		issuers, err := oidc.LoadFile(c.OIDCConfigFile)
		if err != nil {
			return nil, kubeParts{}, err
		}
		for _, ic := range issuers {
			a, err := oidc.New(oidc.Config{Issuer: ic, TrustDomain: c.TrustDomain, Clock: c.Clock})
			if err != nil {
				return nil, kubeParts{}, err
			}
			out = append(out, a)
		}
	}
	k, err := c.Kubernetes.build(c.TrustDomain, c.UserAgent, c.Clock, c.Logger, reg)
	if err != nil {
		return nil, kubeParts{}, err
	}
	if k.attestor != nil {
		out = append(out, k.attestor)
	}
	return out, k, nil
}
