package main

import (
	"time"

	"github.com/spf13/pflag"

	"github.com/meshca/meshca/attestor/k8s"
	"github.com/meshca/meshca/ca/plane"
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
	fs.StringVar(&o.mode, "k8s-attestation", plane.K8sOff, "ServiceAccount token attestation: off, tokenreview (ask the API server, cached) or jwks (verify offline against the cluster's keys)")
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

func (o *k8sOptions) config() plane.Kubernetes {
	deny := o.deny
	if deny == nil {
		deny = []string{} // --deny-namespaces "" denies nothing
	}
	return plane.Kubernetes{
		Mode: o.mode, Kubeconfig: o.kubeconfig, QPS: o.qps, Burst: o.burst, Audiences: o.audiences, Issuer: o.issuer,
		JWKSURL: o.jwksURL, JWKSFile: o.jwksFile, Allow: o.allow, Deny: deny, CacheTTL: o.cacheTTL, CacheSize: o.cacheSize,
	}
}
