// Package k8s attests workloads by their projected Kubernetes ServiceAccount
// tokens, three ways: offline verification against the cluster's OIDC JWKS
// followed by a check, in client-go informer caches, that the ServiceAccount
// and pod the token is bound to still exist (InformerAttestor: TokenReview's
// guarantees with no API call per CSR); a TokenReview through client-go (the
// API server decides, so deleted ServiceAccounts and pods are refused;
// results cached briefly); or offline verification alone (JWKSAttestor: no
// API call, but a deleted ServiceAccount is not noticed until its token
// expires). Either way the identity is spiffe://<td>/ns/<namespace>/sa/<name>,
// subject to namespace and ServiceAccount allow and deny lists. Admission
// puts renewals over mTLS of such identities to the same lists and to the
// ServiceAccount still existing (a cached lookup, or the informer cache).
package k8s

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"path"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshca/meshca/attestor"
	"github.com/meshca/meshca/internal/clock"
)

// Credential kinds recorded in the issuance log.
const (
	KindTokenReview = "k8s-tokenreview"
	KindJWKS        = "k8s-jwks"
	KindInformer    = "k8s-informer"
	// KindImpersonation is recorded for a certificate that a trusted node
	// agent obtained for a pod on its node (NodeAuthorizer).
	KindImpersonation = "k8s-node-impersonation"
)

// Keys of attestor.Identity.Details set by the Kubernetes attestors: the
// pod a token is bound to, and its ServiceAccount's UID. NodeAuthorizer
// adds the impersonation's keys.
const (
	DetailPodName           = "pod-name"
	DetailPodUID            = "pod-uid"
	DetailServiceAccountUID = "sa-uid"
	DetailImpersonatedBy    = "impersonated-by"
	DetailNode              = "node"
)

// DefaultAudiences are the token audiences accepted by default.
var DefaultAudiences = []string{"meshca"}

// DefaultDeny refuses the cluster's own control plane unless allowed.
var DefaultDeny = []string{"kube-system"}

// Config is shared by every mode. Zero fields get the documented defaults.
type Config struct {
	// TrustDomain of the identities. Required.
	TrustDomain spiffeid.TrustDomain
	// Audiences: the token must be for one of them. Default ["meshca"];
	// add "istio-ca" to accept istio-agent's tokens.
	Audiences []string
	// Allow, when not empty, lists the only namespaces ("ns") or
	// ServiceAccounts ("ns/sa") that may get certificates; path.Match
	// patterns ("team-*") are allowed. Deny wins over Allow. Default Deny is
	// ["kube-system"]; set Deny to an empty non-nil slice to deny nothing.
	Allow, Deny []string
	// Clock defaults to the wall clock; Logger to discarding; Metrics to
	// a no-op.
	Clock   clock.Clock
	Logger  *slog.Logger
	Metrics Metrics
}

// Metrics is what the Kubernetes attestors and the renewal admission
// report.
type Metrics interface {
	// Review observes one TokenReview sent: result is "ok",
	// "unauthenticated" or "error".
	Review(result string, took time.Duration)
	// CacheHit counts a token answered from the cache of successful
	// TokenReviews, NegativeCacheHit one answered from the cache of
	// refusals.
	CacheHit()
	NegativeCacheHit()
	// VerifiedCacheHit counts a token the jwks or informer mode had
	// verified before and did not verify again (JWKSAttestor).
	VerifiedCacheHit()
	// ReviewsInFlight reports how many TokenReviews are being sent now.
	ReviewsInFlight(n int)
	// Throttled counts a request that gave up waiting for a TokenReview
	// slot (TokenReviewConfig.MaxInFlight).
	Throttled()
	// Refused counts a token refused, by reason ("malformed", "issuer",
	// "audience", "expired", "unauthenticated", "denied", and in the
	// informer mode "serviceaccount-gone", "pod-gone", "pod-node",
	// "unsupported-binding", ...).
	Refused(reason string)
	// ServiceAccountLookup observes one ServiceAccount lookup sent to the
	// API server for a renewal: result is "found", "not-found" or "error".
	ServiceAccountLookup(result string, took time.Duration)
	// Renewal counts a renewal of a Kubernetes-shaped identity by the
	// admission's decision: "ok", "stale" (admitted on an earlier lookup
	// because the API server cannot be reached), "denied" (allow/deny
	// lists), "deleted" (no such ServiceAccount) or "unavailable".
	Renewal(result string)
	// Impersonation counts a node agent's request for another identity
	// (NodeAuthorizer) by its result: "ok" or the reason it was refused.
	Impersonation(result string)
}

type nopMetrics struct{}

func (nopMetrics) Review(string, time.Duration)               {}
func (nopMetrics) CacheHit()                                  {}
func (nopMetrics) NegativeCacheHit()                          {}
func (nopMetrics) VerifiedCacheHit()                          {}
func (nopMetrics) ReviewsInFlight(int)                        {}
func (nopMetrics) Throttled()                                 {}
func (nopMetrics) Refused(string)                             {}
func (nopMetrics) ServiceAccountLookup(string, time.Duration) {}
func (nopMetrics) Renewal(string)                             {}
func (nopMetrics) Impersonation(string)                       {}

func (c *Config) setDefaults() error {
	if c.TrustDomain.IsZero() {
		return errors.New("k8s: trust domain is required")
	}
	if len(c.Audiences) == 0 {
		c.Audiences = DefaultAudiences
	}
	if c.Deny == nil {
		c.Deny = DefaultDeny
	}
	for _, p := range append(append([]string{}, c.Allow...), c.Deny...) {
		if _, err := path.Match(p, ""); err != nil {
			return fmt.Errorf("k8s: bad allow/deny pattern %q: %w", p, err)
		}
	}
	c.Clock = clock.OrReal(c.Clock)
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Metrics == nil {
		c.Metrics = nopMetrics{}
	}
	return nil
}

// usernamePrefix starts the username of every ServiceAccount.
const usernamePrefix = "system:serviceaccount:"

// parseUsername splits "system:serviceaccount:<ns>:<sa>".
func parseUsername(u string) (ns, sa string, ok bool) {
	rest, found := strings.CutPrefix(u, usernamePrefix)
	if !found {
		return "", "", false
	}
	ns, sa, ok = strings.Cut(rest, ":")
	return ns, sa, ok && ns != "" && sa != "" && !strings.Contains(sa, ":")
}

// admit applies the allow and deny lists to the ServiceAccount ns/sa. It is
// the one check both first issuance (identity) and renewal (Admission)
// make: an error wraps attestor.ErrPermissionDenied.
func (c *Config) admit(ns, sa string) error {
	matches := func(patterns []string) bool {
		for _, p := range patterns {
			target := ns
			if strings.Contains(p, "/") {
				target = ns + "/" + sa
			}
			if ok, _ := path.Match(p, target); ok {
				return true
			}
		}
		return false
	}
	if matches(c.Deny) || (len(c.Allow) > 0 && !matches(c.Allow)) {
		return fmt.Errorf("%w: ServiceAccount %s/%s may not get certificates from this CA", attestor.ErrPermissionDenied, ns, sa)
	}
	return nil
}

// identity builds the SPIFFE ID for ns/sa and applies the allow and deny
// lists.
func (c *Config) identity(kind, ns, sa string, details map[string]string) (attestor.Identity, error) {
	if err := c.admit(ns, sa); err != nil {
		c.Metrics.Refused("denied")
		return attestor.Identity{}, err
	}
	id, err := spiffeid.FromSegments(c.TrustDomain, "ns", ns, "sa", sa)
	if err != nil {
		c.Metrics.Refused("malformed")
		return attestor.Identity{}, fmt.Errorf("%w: ServiceAccount %s/%s makes no valid SPIFFE ID: %v", attestor.ErrUnauthenticated, ns, sa, err)
	}
	return attestor.Identity{ID: id, Kind: kind, Subject: usernamePrefix + ns + ":" + sa, Details: details}, nil
}

// tokenKey is what the caches key a token by: its SHA-256, never the token
// itself.
func tokenKey(token string) string {
	sum := sha256.Sum256([]byte(token))
	return string(sum[:])
}

// looksLikeJWT reports whether a bearer token has the shape of a compact
// JWS; other tokens belong to other attestors.
func looksLikeJWT(tok string) bool {
	return strings.Count(tok, ".") == 2 && !strings.ContainsAny(tok, " \t")
}
