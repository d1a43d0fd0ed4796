// Package jwtsvid mints and validates JWT-SVIDs (SPIFFE JWT-SVID
// standard) with the time as a parameter: the CA signs with it and
// re-checks every token before it leaves, and the agent validates tokens
// for ValidateJWTSVID against the JWT bundles it holds.
//
// go-spiffe's svid/jwtsvid reads the wall clock and allows a minute past
// expiry (go-jose's default leeway); here an expired token is refused at
// its exp, and only iat and nbf are given Skew, for a peer whose clock is a
// little ahead.
//
// A token is a JWS in compact form with the header fields alg, kid and typ
// "JWT", and the claims sub (the SPIFFE ID), aud (one or more), exp and
// iat. Keys are ECDSA P-256 (ES256), P-384 (ES384) or RSA (RS256), and a
// key's ID is its RFC 7638 thumbprint.
package jwtsvid

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"encoding/base64"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Skew is how far in the future a token's iat and nbf may be: the clock
// of the CA that signed it may be ahead of the validator's.
const Skew = time.Minute

// MaxTokenBytes bounds a token given to Parse: a JWT-SVID is a few
// hundred bytes (RSA 4096 signatures under 1 KiB).
const MaxTokenBytes = 16 << 10

// Errors of Validate, for callers that tell them apart; each is wrapped
// with a reason.
var (
	// ErrMalformed: not a JWT-SVID (syntax, header, claims).
	ErrMalformed = errors.New("jwtsvid: malformed token")
	// ErrUntrusted: no bundle for the token's trust domain, no key of its
	// kid in it, or a signature that does not verify.
	ErrUntrusted = errors.New("jwtsvid: untrusted token")
	// ErrExpired: now is at or past exp, or before iat/nbf beyond Skew.
	ErrExpired = errors.New("jwtsvid: token not valid now")
	// ErrAudience: no audience asked for is in aud.
	ErrAudience = errors.New("jwtsvid: audience mismatch")
)

// Algorithm returns the JOSE signature algorithm for key's public half:
// ES256 for P-256, ES384 for P-384, RS256 for RSA.
func Algorithm(pub crypto.PublicKey) (jose.SignatureAlgorithm, error) {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256():
			return jose.ES256, nil
		case elliptic.P384():
			return jose.ES384, nil
		}
	case *rsa.PublicKey:
		return jose.RS256, nil
	}
	return "", fmt.Errorf("jwtsvid: no JWT signature algorithm for a %T key", pub)
}

// KeyID returns the ID of a public key: its RFC 7638 SHA-256 thumbprint,
// base64url without padding.
func KeyID(pub crypto.PublicKey) (string, error) {
	sum, err := (&jose.JSONWebKey{Key: pub}).Thumbprint(crypto.SHA256)
	if err != nil {
		return "", fmt.Errorf("jwtsvid: key ID: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(sum), nil
}

// Claims are what a JWT-SVID says.
type Claims struct {
	ID        spiffeid.ID
	Audience  []string
	IssuedAt  time.Time
	ExpiresAt time.Time
}

// Sign makes a JWT-SVID of c signed by key under the key ID kid. Times are
// truncated to whole seconds, as JWT carries them.
func Sign(key crypto.Signer, kid string, c Claims) (string, error) {
	alg, err := Algorithm(key.Public())
	if err != nil {
		return "", err
	}
	if c.ID.IsZero() || len(c.Audience) == 0 || slices.Contains(c.Audience, "") {
		return "", errors.New("jwtsvid: a SPIFFE ID and non-empty audiences are required")
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: jose.JSONWebKey{Key: key, KeyID: kid}},
		(&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		return "", fmt.Errorf("jwtsvid: signer: %w", err)
	}
	tok, err := jwt.Signed(signer).Claims(jwt.Claims{
		Subject:  c.ID.String(),
		Audience: jwt.Audience(c.Audience),
		IssuedAt: jwt.NewNumericDate(c.IssuedAt.Truncate(time.Second)),
		Expiry:   jwt.NewNumericDate(c.ExpiresAt.Truncate(time.Second)),
	}).Serialize()
	if err != nil {
		return "", fmt.Errorf("jwtsvid: sign: %w", err)
	}
	return tok, nil
}

// algorithms are those a token may be signed with (those of Algorithm, and
// the other RSA and ECDSA ones go-spiffe accepts from other issuers).
var algorithms = []jose.SignatureAlgorithm{jose.ES256, jose.ES384, jose.ES512, jose.RS256, jose.RS384, jose.RS512, jose.PS256, jose.PS384, jose.PS512}

// Token is a parsed JWT-SVID whose signature is not yet verified.
type Token struct {
	Claims
	KeyID string
	jws   *jwt.JSONWebToken
	raw   jwt.Claims
}

// Parse reads a JWT-SVID without verifying it: its syntax, header (kid
// present, typ JWT or JOSE if present, an allowed alg) and claims (sub a
// SPIFFE ID, aud not empty, exp present).
func Parse(token string) (*Token, error) {
	if len(token) > MaxTokenBytes {
		return nil, fmt.Errorf("%w: over %d bytes", ErrMalformed, MaxTokenBytes)
	}
	jws, err := jwt.ParseSigned(token, algorithms)
	if err != nil {
		return nil, fmt.Errorf("%w: not a signed JWT", ErrMalformed)
	}
	h := jws.Headers[0]
	if typ, ok := h.ExtraHeaders[jose.HeaderType]; ok && typ != "JWT" && typ != "JOSE" {
		return nil, fmt.Errorf("%w: typ is not JWT or JOSE", ErrMalformed)
	}
	if h.KeyID == "" {
		return nil, fmt.Errorf("%w: no kid", ErrMalformed)
	}
	var c jwt.Claims
	if err := jws.UnsafeClaimsWithoutVerification(&c); err != nil {
		return nil, fmt.Errorf("%w: claims: %v", ErrMalformed, err) //nolint:errorlint // the cause is go-jose's wording, not an error to match
	}
	id, err := spiffeid.FromString(c.Subject)
	switch {
	case err != nil:
		return nil, fmt.Errorf("%w: sub is not a SPIFFE ID", ErrMalformed)
	case len(c.Audience) == 0:
		return nil, fmt.Errorf("%w: no aud", ErrMalformed)
	case c.Expiry == nil:
		return nil, fmt.Errorf("%w: no exp", ErrMalformed)
	}
	t := &Token{Claims: Claims{ID: id, Audience: c.Audience, ExpiresAt: c.Expiry.Time()}, KeyID: h.KeyID, jws: jws, raw: c}
	if c.IssuedAt != nil {
		t.IssuedAt = c.IssuedAt.Time()
	}
	return t, nil
}

// Verify checks t's signature with the key of its kid in the bundle of its
// trust domain, that it is valid at now, and that its aud holds one of
// audiences (none given: any audience is accepted, as for the Workload
// API's ValidateJWTSVID without one). It returns the token's claims as a
// map, for the Workload API's ValidateJWTSVID.
func (t *Token) Verify(bundles jwtbundle.Source, audiences []string, now time.Time) (map[string]any, error) {
	b, err := bundles.GetJWTBundleForTrustDomain(t.ID.TrustDomain())
	if err != nil {
		return nil, fmt.Errorf("%w: no JWT bundle for trust domain %q", ErrUntrusted, t.ID.TrustDomain().Name())
	}
	pub, ok := b.FindJWTAuthority(t.KeyID)
	if !ok {
		return nil, fmt.Errorf("%w: no key %q in the bundle of %q", ErrUntrusted, t.KeyID, t.ID.TrustDomain().Name())
	}
	claims := map[string]any{}
	if err := t.jws.Claims(pub, &claims); err != nil {
		return nil, fmt.Errorf("%w: the signature does not verify", ErrUntrusted)
	}
	switch {
	case !now.Before(t.ExpiresAt):
		return nil, fmt.Errorf("%w: expired at %s", ErrExpired, t.ExpiresAt.UTC().Format(time.RFC3339))
	case t.raw.IssuedAt != nil && now.Add(Skew).Before(t.IssuedAt):
		return nil, fmt.Errorf("%w: issued in the future", ErrExpired)
	case t.raw.NotBefore != nil && now.Add(Skew).Before(t.raw.NotBefore.Time()):
		return nil, fmt.Errorf("%w: not valid before %s", ErrExpired, t.raw.NotBefore.Time().UTC().Format(time.RFC3339))
	}
	if len(audiences) > 0 && !slices.ContainsFunc(audiences, func(a string) bool { return slices.Contains(t.Audience, a) }) {
		return nil, fmt.Errorf("%w: want one of %q, token has %q", ErrAudience, audiences, t.Audience)
	}
	return claims, nil
}

// Validate is Parse then Verify.
func Validate(token string, bundles jwtbundle.Source, audiences []string, now time.Time) (*Token, map[string]any, error) {
	t, err := Parse(token)
	if err != nil {
		return nil, nil, err
	}
	claims, err := t.Verify(bundles, audiences, now)
	if err != nil {
		return nil, nil, err
	}
	return t, claims, nil
}
