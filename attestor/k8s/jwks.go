package k8s

import (
	"context"
	"errors"
	"fmt"
	"time"

	"k8s.io/apimachinery/pkg/util/cache"

	"github.com/meshca/meshca/attestor"
	"github.com/meshca/meshca/attestor/jwks"
)

// DefaultIssuer is the service-account issuer of most clusters.
const DefaultIssuer = "https://kubernetes.default.svc.cluster.local"

// JWKSAttestor verifies ServiceAccount tokens offline against the cluster's
// JWKS. It cannot see a ServiceAccount deleted after its token was issued;
// projected tokens are short-lived (1h by default) to bound that.
//
// A token it has verified is remembered (JWKSConfig.CacheSize), keyed by the
// token's SHA-256, so the same token presented again (a workload renewing,
// an agent retrying) costs a hash and a lookup instead of a signature
// check. A remembered token answers only what verifying it again would: it
// is used until it expires, and only while the key set holds the same keys
// as when it was verified (jwks.KeySet.Recheck, which also refreshes the set
// when due). Refused tokens are not remembered.
type JWKSAttestor struct {
	cfg      Config
	verifier *jwks.Verifier
	// verified maps a token's SHA-256 to its *verifiedToken. Its clock is
	// cfg.Clock.
	verified *cache.LRUExpireCache
}

// verifiedToken is a token that verified: what it proved, and for how long
// that stands.
type verifiedToken struct {
	p projected // read-only once cached
	// kid and version are the token's key ID and the key set's version
	// when it verified.
	kid     string
	version uint64
	// expires is the token's expiry plus the leeway: the last instant a
	// verification would accept it.
	expires time.Time
}

// DefaultVerifiedCacheSize is JWKSConfig.CacheSize's default.
const DefaultVerifiedCacheSize = 10_000

// JWKSConfig configures NewJWKS.
type JWKSConfig struct {
	// Config holds the settings every Kubernetes attestor shares.
	Config
	// Issuer of the tokens. Default DefaultIssuer.
	Issuer string
	// Keys verify the tokens: the cluster's JWKS. Required.
	Keys *jwks.KeySet
	// CacheSize is the most verified tokens remembered (about 0.6 KB
	// each). Default DefaultVerifiedCacheSize; negative is an error.
	CacheSize int
}

// NewJWKS returns the offline attestor.
func NewJWKS(cfg JWKSConfig) (*JWKSAttestor, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	if cfg.Keys == nil {
		return nil, errors.New("k8s: a JWKS key set is required")
	}
	if cfg.Issuer == "" {
		cfg.Issuer = DefaultIssuer
	}
	switch {
	case cfg.CacheSize == 0:
		cfg.CacheSize = DefaultVerifiedCacheSize
	case cfg.CacheSize < 0:
		return nil, fmt.Errorf("k8s: verified-token cache size %d is negative", cfg.CacheSize)
	}
	return &JWKSAttestor{
		cfg:      cfg.Config,
		verifier: &jwks.Verifier{Issuer: cfg.Issuer, Audiences: cfg.Audiences, Keys: cfg.Keys, Leeway: jwks.DefaultLeeway, Clock: cfg.Clock},
		verified: cache.NewLRUExpireCacheWithClock(cfg.CacheSize, cfg.Clock),
	}, nil
}

// objectRef names an object a token is bound to.
type objectRef struct {
	Name string `json:"name"`
	UID  string `json:"uid"`
}

// k8sClaims are the Kubernetes-specific claims of a projected token: the
// "kubernetes.io" private claim the API server writes (its serviceaccount
// claims.go), with the ServiceAccount and the object the token is bound to,
// if any: a pod (then also the pod's node, name and, when the Node object
// exists, UID), a Secret, or a Node alone.
type k8sClaims struct {
	K8s struct {
		Namespace      string     `json:"namespace"`
		ServiceAccount objectRef  `json:"serviceaccount"`
		Pod            *objectRef `json:"pod"`
		Secret         *objectRef `json:"secret"`
		Node           *objectRef `json:"node"`
	} `json:"kubernetes.io"`
}

// projected is a projected ServiceAccount token verified offline.
type projected struct {
	ns, sa string
	claims k8sClaims
	issued time.Time // iat; zero if the token has none
}

// details are what the issuance log records of the token.
func (p *projected) details() map[string]string {
	d := map[string]string{DetailServiceAccountUID: p.claims.K8s.ServiceAccount.UID}
	if pod := p.claims.K8s.Pod; pod != nil {
		d[DetailPodName], d[DetailPodUID] = pod.Name, pod.UID
	}
	return d
}

// verify checks a bearer token offline: a JWT signed by one of the
// cluster's keys, for this issuer and an accepted audience, not expired,
// whose subject is the ServiceAccount its kubernetes.io claims name. A
// bearer that is not a JWT is attestor.ErrNoCredential.
//
// A token verified before is answered from the cache while that still
// stands (JWKSAttestor).
func (j *JWKSAttestor) verify(ctx context.Context, token string) (projected, error) {
	if !looksLikeJWT(token) {
		return projected{}, attestor.ErrNoCredential
	}
	key := tokenKey(token)
	if p, ok := j.remembered(ctx, key); ok {
		return p, nil
	}
	now := j.cfg.Clock.Now()
	// The version before verifying: if the set changes meanwhile, the
	// entry is stale at its first use and verified again. Before the first
	// fetch there is no version 0 key to verify with: the set this
	// verification loads is version 1 (or later, and then the entry is
	// merely stale).
	version := max(j.verifier.Keys.Version(), 1)
	var p projected
	claims, kid, err := j.verifier.VerifyKeyID(ctx, token, &p.claims)
	if err != nil {
		if errors.Is(err, jwks.ErrUnavailable) {
			return projected{}, fmt.Errorf("%w: %v", attestor.ErrUnavailable, err)
		}
		j.cfg.Metrics.Refused("invalid")
		return projected{}, fmt.Errorf("%w: ServiceAccount token: %v", attestor.ErrUnauthenticated, err)
	}
	var ok bool
	p.ns, p.sa, ok = parseUsername(claims.Subject)
	if !ok || p.claims.K8s.Namespace != p.ns || p.claims.K8s.ServiceAccount.Name != p.sa {
		j.cfg.Metrics.Refused("malformed")
		return projected{}, fmt.Errorf("%w: ServiceAccount token: subject %q does not match its kubernetes.io claims", attestor.ErrUnauthenticated, claims.Subject)
	}
	p.issued = claims.IssuedAt.Time()                       // zero without iat
	expires := claims.Expiry.Time().Add(jwks.DefaultLeeway) // Verify requires exp
	if expires.After(now) {
		j.verified.Add(key, &verifiedToken{p: p, kid: kid, version: version, expires: expires}, expires.Sub(now))
	}
	return p, nil
}

// remembered returns the token cached under key if verifying it again
// would accept it: the cache has dropped it once past its expiry, and its
// key set must still be the one it verified against (Recheck, which may
// wait for a due refresh, so the expiry is checked again after it, as a
// verification reads the clock after its lookup). Otherwise it forgets the
// token, and the caller verifies it, which gives the precise error.
func (j *JWKSAttestor) remembered(ctx context.Context, key string) (projected, bool) {
	v, ok := j.verified.Get(key)
	if !ok {
		return projected{}, false
	}
	e := v.(*verifiedToken)
	if version, err := j.verifier.Keys.Recheck(ctx, e.kid); err == nil && version == e.version && !j.cfg.Clock.Now().After(e.expires) {
		j.cfg.Metrics.VerifiedCacheHit()
		return e.p, true
	}
	j.verified.Remove(key)
	return projected{}, false
}

// Attest implements attestor.Attestor.
func (j *JWKSAttestor) Attest(ctx context.Context, c attestor.Credential) (attestor.Identity, error) {
	p, err := j.verify(ctx, c.BearerToken)
	if err != nil {
		return attestor.Identity{}, err
	}
	return j.cfg.identity(KindJWKS, p.ns, p.sa, p.details())
}
