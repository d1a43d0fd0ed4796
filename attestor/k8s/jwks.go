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

// k8sClaims are the Kubernetes-specific claims of a projected token.
type k8sClaims struct {
	K8s struct {
		Namespace      string `json:"namespace"`
		ServiceAccount struct {
			Name string `json:"name"`
			UID  string `json:"uid"`
		} `json:"serviceaccount"`
		Pod *struct {
			Name string `json:"name"`
			UID  string `json:"uid"`
		} `json:"pod"`
	} `json:"kubernetes.io"`
}

// Attest implements attestor.Attestor.
func (j *JWKSAttestor) Attest(ctx context.Context, c attestor.Credential) (attestor.Identity, error) {
	if !looksLikeJWT(c.BearerToken) {
		return attestor.Identity{}, attestor.ErrNoCredential
	}
	var kc k8sClaims
	claims, err := j.verifier.Verify(ctx, c.BearerToken, &kc)
	if err != nil {
		if !errors.Is(err, jwks.ErrUnavailable) {
			j.cfg.Metrics.Refused("invalid")
		}
		if errors.Is(err, jwks.ErrUnavailable) {
			return attestor.Identity{}, fmt.Errorf("%w: %v", attestor.ErrUnavailable, err)
		}
		return attestor.Identity{}, fmt.Errorf("%w: ServiceAccount token: %v", attestor.ErrUnauthenticated, err)
	}
	ns, sa, ok := parseUsername(claims.Subject)
	if !ok || kc.K8s.Namespace != ns || kc.K8s.ServiceAccount.Name != sa {
		j.cfg.Metrics.Refused("malformed")
		return attestor.Identity{}, fmt.Errorf("%w: ServiceAccount token: subject %q does not match its kubernetes.io claims", attestor.ErrUnauthenticated, claims.Subject)
	}
	details := map[string]string{"sa-uid": kc.K8s.ServiceAccount.UID}
	if p := kc.K8s.Pod; p != nil {
		details["pod-name"], details["pod-uid"] = p.Name, p.UID
	}
	return j.cfg.identity(KindJWKS, ns, sa, details)
}
