package ca

import (
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshca/meshca/attestor"
	"github.com/meshca/meshca/ca/store"
	"github.com/meshca/meshca/internal/jwtsvid"
)

// Defaults and bounds of JWT-SVIDs.
const (
	// DefaultJWTSVIDTTL is a JWT-SVID's lifetime when none is asked for,
	// SPIRE's default: a bearer token is replayable by whoever sees it,
	// so it lives minutes, not hours.
	DefaultJWTSVIDTTL = 5 * time.Minute
	// DefaultJWTSVIDMaxTTL is the longest a caller may ask for.
	DefaultJWTSVIDMaxTTL = time.Hour
	// MinJWTSVIDTTL is the shortest: under it a token could expire on
	// its way.
	MinJWTSVIDTTL = 30 * time.Second
	// MaxJWTAudiences and MaxJWTAudienceBytes bound a request's
	// audiences: a token is a header, not a database.
	MaxJWTAudiences     = 16
	MaxJWTAudienceBytes = 256
)

// Errors of MintJWTSVID, besides ErrInvalidTTL, ErrIdentityMismatch and
// ErrUnavailable.
var (
	// ErrInvalidJWTRequest: no audience, an empty or overlong one, or too
	// many.
	ErrInvalidJWTRequest = errors.New("invalid JWT-SVID request")
	// ErrJWTUnavailable: this CA does not sign JWT-SVIDs (several replicas
	// share its store: each would need its own key, published by all).
	ErrJWTUnavailable = errors.New("JWT-SVIDs are not available when several replicas share the store")
)

// JWTPrepareTime is when the next JWT signing key is made and published:
// at 40 % of the active key's life, so that it is in every holder's bundle
// for a tenth of that life before the first token it signs.
func JWTPrepareTime(k *store.JWTKey) time.Time { return timeFraction(k.NotBefore, k.NotAfter, 0.4) }

// JWTActivateTime is when the next JWT signing key starts signing: at half
// the active key's life, as for the intermediates.
func JWTActivateTime(k *store.JWTKey) time.Time { return timeFraction(k.NotBefore, k.NotAfter, 0.5) }

func timeFraction(from, to time.Time, f float64) time.Time {
	return from.Add(time.Duration(float64(to.Sub(from)) * f))
}

// jwtSigner is the JWT signing key in effect, and the bundle published
// with it; read lock-free on every MintJWTSVID.
type jwtSigner struct {
	kid      string
	key      crypto.Signer // nil: JWT-SVIDs are not available
	notAfter time.Time
	bundle   *jwtbundle.Bundle
	// next is when the keys next need a rotation step.
	next time.Time
}

// JWTSVID is a JWT-SVID handed out.
type JWTSVID struct {
	Token     string
	ID        spiffeid.ID
	Audience  []string
	KeyID     string
	IssuedAt  time.Time
	ExpiresAt time.Time
}

// JWTBundle returns the public keys that JWT-SVIDs of the trust domain are
// checked with: the active key, the next one once prepared, and retired
// ones until the last token they signed expires. It is empty when several
// replicas share the store (ErrJWTUnavailable). Each rotation makes a new
// Bundle; the caller must not modify it.
func (a *Authority) JWTBundle() *jwtbundle.Bundle {
	if s := a.jwt.Load(); s != nil {
		return s.bundle
	}
	return jwtbundle.New(a.cfg.TrustDomain)
}

// GetJWTBundleForTrustDomain implements jwtbundle.Source with JWTBundle.
func (a *Authority) GetJWTBundleForTrustDomain(td spiffeid.TrustDomain) (*jwtbundle.Bundle, error) {
	return a.JWTBundle().GetJWTBundleForTrustDomain(td)
}

// MintJWTSVID signs a JWT-SVID for the attested identity id with the
// audiences given, valid for ttl (0: Config.JWTSVIDTTL), never past the
// signing key's publication. Every token is parsed and validated against
// JWTBundle before it is returned. JWT-SVIDs are not recorded in the
// issuance log (they live minutes and carry no key); Metrics counts them.
func (a *Authority) MintJWTSVID(ctx context.Context, id attestor.Identity, audiences []string, ttl time.Duration) (*JWTSVID, error) {
	start := a.cfg.Clock.Now()
	svid, err := a.mintJWTSVID(ctx, id, audiences, ttl, start)
	result := "ok"
	switch {
	case err == nil:
	case errors.Is(err, ErrInvalidJWTRequest), errors.Is(err, ErrInvalidTTL):
		result = "invalid"
	case errors.Is(err, ErrIdentityMismatch):
		result = "denied"
	case errors.Is(err, ErrUnavailable), errors.Is(err, ErrJWTUnavailable):
		result = "unavailable"
	default:
		result = "error"
	}
	a.cfg.Metrics.JWTSVIDMinted(id.Kind, result)
	return svid, err
}

func (a *Authority) mintJWTSVID(ctx context.Context, id attestor.Identity, audiences []string, ttl time.Duration, now time.Time) (*JWTSVID, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s := a.jwt.Load()
	if s == nil || s.key == nil {
		return nil, ErrJWTUnavailable
	}
	ttl, err := lifetime(ttl, a.cfg.JWTSVIDTTL, MinJWTSVIDTTL, a.cfg.JWTSVIDMaxTTL, "JWT-SVID ")
	if err != nil {
		return nil, err
	}
	if err := a.inTrustDomain(id.ID); err != nil {
		return nil, err
	}
	if err := checkAudiences(audiences); err != nil {
		return nil, err
	}
	claims := jwtsvid.Claims{ID: id.ID, Audience: slices.Clone(audiences), IssuedAt: now.Truncate(time.Second),
		ExpiresAt: earliest(now.Add(ttl), s.notAfter).Truncate(time.Second)}
	if !now.Before(claims.ExpiresAt) {
		return nil, fmt.Errorf("%w: the JWT signing key has expired", ErrUnavailable)
	}
	tok, err := jwtsvid.Sign(s.key, s.kid, claims)
	if err != nil {
		return nil, fmt.Errorf("ca: %w", err)
	}
	// The same checks a workload's peer makes, against the bundle
	// published now: a token that would not verify never leaves.
	if _, _, err := jwtsvid.Validate(tok, s.bundle, audiences, now); err != nil {
		a.cfg.Logger.Error("minted JWT-SVID refused by the validator", "spiffe_id", id.ID.String(), "err", err)
		return nil, fmt.Errorf("ca: minted JWT-SVID does not validate: %w", err)
	}
	a.cfg.Logger.Debug("minted JWT-SVID", "spiffe_id", id.ID.String(), "kind", id.Kind, "audience", audiences, "kid", s.kid, "expires_at", claims.ExpiresAt)
	return &JWTSVID{Token: tok, ID: id.ID, Audience: claims.Audience, KeyID: s.kid, IssuedAt: claims.IssuedAt, ExpiresAt: claims.ExpiresAt}, nil
}

func checkAudiences(aud []string) error {
	switch {
	case len(aud) == 0:
		return fmt.Errorf("%w: at least one audience is required", ErrInvalidJWTRequest)
	case len(aud) > MaxJWTAudiences:
		return fmt.Errorf("%w: %d audiences, at most %d", ErrInvalidJWTRequest, len(aud), MaxJWTAudiences)
	}
	for _, a := range aud {
		if a == "" || len(a) > MaxJWTAudienceBytes {
			return fmt.Errorf("%w: an audience must be 1 to %d bytes", ErrInvalidJWTRequest, MaxJWTAudienceBytes)
		}
	}
	return nil
}

// rotateJWTKeys brings st's JWT signing keys up to date at now: a usable
// active key, the next one prepared at JWTPrepareTime and switched to at
// JWTActivateTime, the retired ones pruned once no token they signed can
// be valid. It returns the signer to apply once st is saved. Replicas
// sharing the store sign no JWT-SVIDs (ErrJWTUnavailable), so none is
// made.
func (a *Authority) rotateJWTKeys(st *store.CAState, now time.Time) (*jwtSigner, error) {
	if a.cfg.Replica != "" {
		return &jwtSigner{bundle: jwtbundle.New(a.cfg.TrustDomain)}, nil
	}
	k := st.JWTKeys
	if k == nil {
		k = &store.JWTKeys{}
	}
	// A key is of no use once it cannot cover a default token.
	usable := func(j *store.JWTKey) bool { return j != nil && now.Before(j.NotAfter.Add(-a.cfg.JWTSVIDTTL)) }
	retire := func(j *store.JWTKey) {
		if j != nil && now.Before(j.NotAfter) {
			// Nothing it signs from now on: its last token expires by
			// now plus the longest lifetime (and the backdate, for a
			// token minted while this update ran).
			k.Retired = append(k.Retired, store.JWTKey{ID: j.ID, PublicKeyDER: j.PublicKeyDER, NotBefore: j.NotBefore,
				NotAfter: earliest(j.NotAfter, now.Add(a.cfg.JWTSVIDMaxTTL+a.cfg.Backdate))})
		}
	}
	var err error
	if !usable(k.Active) {
		retire(k.Active)
		if k.Active, err = a.newJWTKey(now); err != nil {
			return nil, err
		}
		k.Next = nil // never signed: it goes
	}
	if k.Next != nil && !usable(k.Next) {
		k.Next = nil
	}
	if k.Next == nil && !now.Before(JWTPrepareTime(k.Active)) {
		if k.Next, err = a.newJWTKey(now); err != nil {
			return nil, err
		}
	}
	if k.Next != nil && !now.Before(JWTActivateTime(k.Active)) {
		retire(k.Active)
		k.Active, k.Next = k.Next, nil
	}
	k.Retired = slices.DeleteFunc(k.Retired, func(j store.JWTKey) bool { return !now.Before(j.NotAfter) })
	if len(k.Retired) == 0 {
		k.Retired = nil
	}
	st.JWTKeys = k
	return a.jwtSignerFrom(k)
}

// newJWTKey makes a JWT signing key of Config.KeyType, published until
// Config.JWTKeyTTL from now, sealed for the store.
func (a *Authority) newJWTKey(now time.Time) (*store.JWTKey, error) {
	key, err := generateKey(a.cfg.KeyType)
	if err != nil {
		return nil, err
	}
	kid, err := jwtsvid.KeyID(key.Public())
	if err != nil {
		return nil, err
	}
	der, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		return nil, fmt.Errorf("ca: JWT key: %w", err)
	}
	sealed, err := a.sealer.seal(key)
	if err != nil {
		return nil, err
	}
	a.cfg.Logger.Info("new JWT signing key", "kid", kid, "not_after", now.Add(a.cfg.JWTKeyTTL))
	// Backdated as an intermediate is, so that with the default
	// JWTKeyTTL both rotate in the same update.
	return &store.JWTKey{ID: kid, PublicKeyDER: der, Key: sealed, NotBefore: now.Add(-a.cfg.Backdate), NotAfter: now.Add(a.cfg.JWTKeyTTL)}, nil
}

// jwtSignerFrom opens the active key (reusing the one in effect when it
// is the same) and builds the bundle of every published key.
func (a *Authority) jwtSignerFrom(k *store.JWTKeys) (*jwtSigner, error) {
	b := jwtbundle.New(a.cfg.TrustDomain)
	published := append([]store.JWTKey{*k.Active}, k.Retired...)
	if k.Next != nil {
		published = append(published, *k.Next)
	}
	for _, j := range published {
		pub, err := x509.ParsePKIXPublicKey(j.PublicKeyDER)
		if err != nil {
			return nil, fmt.Errorf("ca: stored JWT key %q: %w", j.ID, err)
		}
		if err := b.AddJWTAuthority(j.ID, pub); err != nil {
			return nil, fmt.Errorf("ca: stored JWT key %q: %w", j.ID, err)
		}
	}
	s := &jwtSigner{kid: k.Active.ID, notAfter: k.Active.NotAfter, bundle: b, next: JWTPrepareTime(k.Active)}
	if k.Next != nil {
		s.next = JWTActivateTime(k.Active)
	}
	if cur := a.jwt.Load(); cur != nil && cur.key != nil && cur.kid == k.Active.ID {
		s.key = cur.key
		return s, nil
	}
	pub, _ := b.FindJWTAuthority(k.Active.ID) // added above
	key, err := a.sealer.open(k.Active.Key, pub)
	if err != nil {
		return nil, fmt.Errorf("ca: JWT signing key %q: %w", k.Active.ID, err)
	}
	s.key = key
	return s, nil
}

// jwtKeyIDs lists the published key IDs of k, active first, for the log.
func jwtKeyIDs(k *store.JWTKeys) (active, next string, retired int) {
	if k == nil {
		return "", "", 0
	}
	if k.Active != nil {
		active = k.Active.ID
	}
	if k.Next != nil {
		next = k.Next.ID
	}
	return active, next, len(k.Retired)
}
