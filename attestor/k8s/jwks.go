package k8s

import (
	"context"
	"errors"
	"fmt"

	"github.com/meshca/meshca/attestor"
	"github.com/meshca/meshca/attestor/jwks"
)

// DefaultIssuer is the service-account issuer of most clusters.
const DefaultIssuer = "https://kubernetes.default.svc.cluster.local"

// JWKSAttestor verifies ServiceAccount tokens offline against the cluster's
// JWKS. It cannot see a ServiceAccount deleted after its token was issued;
// projected tokens are short-lived (1h by default) to bound that.
type JWKSAttestor struct {
	cfg      Config
	verifier *jwks.Verifier
}

// JWKSConfig configures NewJWKS.
type JWKSConfig struct {
	// Config holds the settings every Kubernetes attestor shares.
	Config
	// Issuer of the tokens. Default DefaultIssuer.
	Issuer string
	// Keys verify the tokens: the cluster's JWKS. Required.
	Keys *jwks.KeySet
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
	return &JWKSAttestor{cfg: cfg.Config, verifier: &jwks.Verifier{Issuer: cfg.Issuer, Audiences: cfg.Audiences, Keys: cfg.Keys, Clock: cfg.Clock}}, nil
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
func (j *JWKSAttestor) verify(ctx context.Context, token string) (projected, error) {
	if !looksLikeJWT(token) {
		return projected{}, attestor.ErrNoCredential
	}
	var p projected
	claims, err := j.verifier.Verify(ctx, token, &p.claims)
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
	return p, nil
}

// Attest implements attestor.Attestor.
func (j *JWKSAttestor) Attest(ctx context.Context, c attestor.Credential) (attestor.Identity, error) {
	p, err := j.verify(ctx, c.BearerToken)
	if err != nil {
		return attestor.Identity{}, err
	}
	return j.cfg.identity(KindJWKS, p.ns, p.sa, p.details())
}
