package plane

import (
	"time"

	"github.com/spf13/pflag"

	"github.com/meshca/meshca/attestor/k8s"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/ca/leader"
)

// AddFlags registers the flags of `meshca server` for Kubernetes
// ServiceAccount token attestation into k (docs/configuration.md lists
// them).
func (k *Kubernetes) AddFlags(fs *pflag.FlagSet) {
	fs.StringVar(&k.Mode, "k8s-attestation", K8sOff, "ServiceAccount token attestation: off, informer (recommended: verify offline against the cluster's keys, then check the bound ServiceAccount and pod in informer caches; needs list/watch on serviceaccounts and pods), tokenreview (ask the API server, cached) or jwks (verify offline only)")
	fs.StringVar(&k.Kubeconfig, "kubeconfig", "", "kubeconfig for the API server; empty: in-cluster configuration")
	fs.Float32Var(&k.QPS, "k8s-qps", 50, "client-go rate limit for API calls (TokenReviews, JWKS, informer lists), queries per second; client-go's own default is 5")
	fs.IntVar(&k.Burst, "k8s-burst", 100, "client-go burst above --k8s-qps")
	fs.StringSliceVar(&k.Audiences, "token-audiences", k8s.DefaultAudiences, "accepted ServiceAccount token audiences (add istio-ca for istio-agent)")
	fs.StringVar(&k.Issuer, "k8s-issuer", k8s.DefaultIssuer, "ServiceAccount token issuer (every mode: tokenreview refuses other issuers offline)")
	fs.StringVar(&k.JWKSURL, "k8s-jwks-url", "", "JWKS URL (informer and jwks modes); default: /openid/v1/jwks through the API server")
	fs.StringVar(&k.JWKSFile, "k8s-jwks-file", "", "JWKS file (informer and jwks modes), instead of fetching it")
	fs.StringSliceVar(&k.Allow, "allow-namespaces", nil, "if set, only these namespaces (ns) or ServiceAccounts (ns/sa) get certificates; glob patterns allowed")
	fs.StringSliceVar(&k.Deny, "deny-namespaces", k8s.DefaultDeny, "namespaces (ns) or ServiceAccounts (ns/sa) refused; wins over --allow-namespaces")
	fs.DurationVar(&k.CacheTTL, "tokenreview-cache-ttl", time.Minute, "how long a positive TokenReview is trusted (never past the token's expiry)")
	fs.IntVar(&k.CacheSize, "tokenreview-cache-size", 10000, "most TokenReview results cached")
	fs.IntVar(&k.MaxInFlightReviews, "k8s-max-inflight-reviews", 16, "most TokenReviews sent at once; more callers wait for a slot")
	fs.DurationVar(&k.ServiceAccountTTL, "serviceaccount-cache-ttl", time.Minute, "how long a ServiceAccount found by renewal admission is trusted (a deleted one renews at most this long; not used by the informer mode)")
	fs.DurationVar(&k.ServiceAccountMaxStale, "serviceaccount-max-stale", 24*time.Hour, "while the API server is unreachable, ServiceAccounts seen this recently keep renewing")
	fs.StringSliceVar(&k.TrustedNodeAccounts, "trusted-node-accounts", nil, "ServiceAccounts (ns/sa, exact) that may get certificates for the pods on their node, as Istio's CA_TRUSTED_NODE_ACCOUNTS (Istio ambient: istio-system/ztunnel); needs --k8s-attestation=informer")
}

// JWT sets the JWT-SVIDs' lifetimes and their signing key's; zero fields
// get ca.Config's defaults.
type JWT struct {
	TTL, MaxTTL, KeyTTL time.Duration
	// PublishDelay is ca.Config.JWTPublishDelay (replicas only).
	PublishDelay time.Duration
}

// AddFlags registers the flags of `meshca server` for JWT-SVIDs into j
// (docs/configuration.md lists them).
func (j *JWT) AddFlags(fs *pflag.FlagSet) {
	fs.DurationVar(&j.TTL, "jwt-svid-ttl", ca.DefaultJWTSVIDTTL, "JWT-SVID lifetime when none is requested (the Workload API requests none)")
	fs.DurationVar(&j.MaxTTL, "jwt-svid-max-ttl", ca.DefaultJWTSVIDMaxTTL, "longest JWT-SVID lifetime a caller may request; at most half of --jwt-key-ttl")
	fs.DurationVar(&j.KeyTTL, "jwt-key-ttl", 0, "lifetime of the JWT signing key: the next is made and published at 40 %, signs from 50 %; 0: --intermediate-ttl")
	fs.DurationVar(&j.PublishDelay, "jwt-key-publish-delay", ca.DefaultJWTPublishDelay, "with several replicas, how long a replica's new JWT signing key is published before it signs (agents fetch the JWT bundle every minute)")
}

// AddFlags registers the flags of `meshca server` for leader election into
// l (docs/configuration.md lists them).
func (l *LeaderElection) AddFlags(fs *pflag.FlagSet) {
	fs.BoolVar(&l.Enabled, "leader-elect", false, "elect one leader among replicas sharing a store (PostgreSQL) on a Kubernetes Lease: only the leader takes root rotation steps, prunes, writes the bundle ConfigMaps and ClusterTrustBundle and answers PodCertificateRequests; every replica serves CSRs")
	fs.StringVar(&l.Namespace, "leader-elect-namespace", "", "namespace of the leader Lease; empty: the pod's namespace, else "+leader.DefaultNamespace)
	fs.StringVar(&l.Name, "leader-elect-name", leader.DefaultName, "name of the leader Lease")
	fs.StringVar(&l.Identity, "leader-elect-identity", "", "this replica's holder identity in the Lease, unique among running replicas; empty: <hostname>_<pid> (in a pod, the hostname is the pod's name)")
	fs.DurationVar(&l.LeaseDuration, "leader-elect-lease-duration", leader.DefaultLeaseDuration, "how long the other replicas wait, after the leader's last renewal, before taking the Lease (whole seconds)")
	fs.DurationVar(&l.RenewDeadline, "leader-elect-renew-deadline", leader.DefaultRenewDeadline, "how long the leader tries to renew before it stops its jobs; plus --leader-elect-retry-period, must be below --leader-elect-lease-duration")
	fs.DurationVar(&l.RetryPeriod, "leader-elect-retry-period", leader.DefaultRetryPeriod, "how often the leader renews the Lease and the others try to take it")
}
