// Package oidc attests workloads by OIDC ID tokens from configured issuers
// (CI systems, cloud workload identity): the token is verified offline
// against the issuer's JWKS, required claims are checked, and a template
// maps its claims to a SPIFFE ID in the trust domain. A claim value fills at
// most one path segment (path_claims excepted), and an ID takes the
// Kubernetes shape /ns/<ns>/sa/<sa> only where the template's fixed text
// writes it: a CI job can never pass for a ServiceAccount.
package oidc

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"sigs.k8s.io/yaml"

	"github.com/meshca/meshca/attestor"
	"github.com/meshca/meshca/attestor/jwks"
	"github.com/meshca/meshca/internal/clock"
)

// Kind is the credential kind recorded for OIDC tokens.
const Kind = "oidc"

// IssuerConfig configures one trusted issuer.
type IssuerConfig struct {
	// Issuer is the exact "iss" of its tokens.
	Issuer string `json:"issuer"`
	// JWKSURL or JWKSFile locate its signing keys (one is required).
	JWKSURL  string `json:"jwks_url,omitempty"`
	JWKSFile string `json:"jwks_file,omitempty"`
	// Audiences: "aud" must contain one of them. Required.
	Audiences []string `json:"audiences"`
	// SPIFFEID is a template producing the SPIFFE ID from the claims, in
	// text/template syntax restricted to fixed text, {{td}} (the trust
	// domain name), {{.claim}} (also nested, {{.a.b}}) and
	// {{index . "claim" ...}}, e.g. "spiffe://{{td}}/gh/{{.repository}}".
	// A missing claim is an error. Each claim value must be a string that
	// is one valid SPIFFE path segment, so it can never add segments; and
	// the ID may have the Kubernetes shape /ns/<ns>/sa/<sa> only where the
	// template's fixed text writes "ns" and "sa".
	SPIFFEID string `json:"spiffe_id"`
	// RequiredClaims must have exactly these string values.
	RequiredClaims map[string]string `json:"required_claims,omitempty"`
	// PathClaims names the claims the template uses that are paths by
	// nature, such as GitHub's repository ("owner/repo"): their values may
	// hold "/", each segment still a valid SPIFFE path segment. Nested
	// claims are named with dots ("a.b").
	PathClaims []string `json:"path_claims,omitempty"`
}

// File is the --oidc-config file.
type File struct {
	Issuers []IssuerConfig `json:"issuers"`
}

// LoadFile reads and checks an --oidc-config file. Unknown fields are errors.
func LoadFile(path string) ([]IssuerConfig, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("oidc: %w", err)
	}
	var f File
	if err := yaml.UnmarshalStrict(b, &f); err != nil {
		return nil, fmt.Errorf("oidc: %s: %w", path, err)
	}
	return f.Issuers, nil
}

// Attestor verifies tokens of one issuer.
type Attestor struct {
	cfg      IssuerConfig
	td       spiffeid.TrustDomain
	tmpl     *idTemplate
	verifier *jwks.Verifier
}

// Config configures the Attestor of one issuer. Zero fields get the
// documented defaults.
type Config struct {
	// Issuer is the trusted issuer, as read from the --oidc-config file.
	// Required.
	Issuer IssuerConfig
	// TrustDomain of the identities. Required.
	TrustDomain spiffeid.TrustDomain
	// Keys verifies the issuer's signatures. Default: a key set fetched
	// from Issuer.JWKSURL or read from Issuer.JWKSFile, exactly one of
	// which must then be set.
	Keys *jwks.KeySet
	// Clock defaults to the wall clock.
	Clock clock.Clock
}

// New returns the attestor for one issuer.
func New(c Config) (*Attestor, error) {
	cfg, td, keys, clk := c.Issuer, c.TrustDomain, c.Keys, c.Clock
	switch {
	case td.IsZero():
		return nil, errors.New("oidc: trust domain is required")
	case cfg.Issuer == "":
		return nil, errors.New("oidc: issuer is required")
	case len(cfg.Audiences) == 0:
		return nil, fmt.Errorf("oidc: issuer %s: audiences are required", cfg.Issuer)
	case cfg.SPIFFEID == "":
		return nil, fmt.Errorf("oidc: issuer %s: spiffe_id template is required", cfg.Issuer)
	}
	if keys == nil {
		switch {
		case cfg.JWKSURL != "" && cfg.JWKSFile == "":
			keys = jwks.NewKeySet(jwks.KeySetConfig{Fetch: jwks.URLFetcher(nil, cfg.JWKSURL), Clock: clk})
		case cfg.JWKSFile != "" && cfg.JWKSURL == "":
			keys = jwks.NewKeySet(jwks.KeySetConfig{Fetch: jwks.FileFetcher(cfg.JWKSFile), Clock: clk})
		default:
			return nil, fmt.Errorf("oidc: issuer %s: exactly one of jwks_url and jwks_file is required", cfg.Issuer)
		}
	}
	tmpl, err := parseIDTemplate(td, cfg.SPIFFEID, cfg.PathClaims)
	if err != nil {
		return nil, fmt.Errorf("oidc: issuer %s: spiffe_id template: %w", cfg.Issuer, err)
	}
	return &Attestor{
		cfg: cfg, td: td, tmpl: tmpl,
		verifier: &jwks.Verifier{Issuer: cfg.Issuer, Audiences: cfg.Audiences, Keys: keys, Clock: clk},
	}, nil
}

// Attest implements attestor.Attestor. Tokens of other issuers are not this
// attestor's kind.
func (a *Attestor) Attest(ctx context.Context, c attestor.Credential) (attestor.Identity, error) {
	if iss, _, ok := jwks.Peek(c.BearerToken); !ok || iss != a.cfg.Issuer {
		return attestor.Identity{}, attestor.ErrNoCredential
	}
	claims := map[string]any{}
	reg, err := a.verifier.Verify(ctx, c.BearerToken, &claims)
	if err != nil {
		if errors.Is(err, jwks.ErrUnavailable) {
			return attestor.Identity{}, fmt.Errorf("%w: %v", attestor.ErrUnavailable, err)
		}
		return attestor.Identity{}, fmt.Errorf("%w: OIDC token: %v", attestor.ErrUnauthenticated, err)
	}
	for k, want := range a.cfg.RequiredClaims {
		if got, ok := claims[k].(string); !ok || got != want {
			return attestor.Identity{}, fmt.Errorf("%w: OIDC token: claim %q must be %q", attestor.ErrPermissionDenied, k, want)
		}
	}
	id, err := a.tmpl.execute(claims)
	if err != nil {
		return attestor.Identity{}, fmt.Errorf("%w: OIDC token: %v", attestor.ErrPermissionDenied, err)
	}
	return attestor.Identity{ID: id, Kind: Kind, Subject: a.cfg.Issuer + "#" + reg.Subject}, nil
}
