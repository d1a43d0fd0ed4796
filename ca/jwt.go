package ca

import (
	"cmp"
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
	// DefaultJWTPublishDelay is how long a replica's new JWT signing key
	// is published before it signs (Config.JWTPublishDelay): the 30 s
	// other replicas take to read the shared state, plus the minute
	// agents take to fetch the bundle again, with margin.
	DefaultJWTPublishDelay = 2 * time.Minute
	// MinJWTSVIDTTL is the shortest: under it a token could expire on
	// its way.
	MinJWTSVIDTTL = 30 * time.Second
	// MaxJWTAudiences and MaxJWTAudienceBytes bound a request's
	// audiences: a token is a header, not a database.
	MaxJWTAudiences     = 16
	MaxJWTAudienceBytes = 256
)

// ErrInvalidJWTRequest is MintJWTSVID's error for no audience, an empty or
// overlong one, or too many; besides it, MintJWTSVID returns ErrInvalidTTL,
// ErrIdentityMismatch and ErrUnavailable (among them, on a replica whose
// new key is still being published: Config.JWTPublishDelay).
var ErrInvalidJWTRequest = errors.New("invalid JWT-SVID request")

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
	kid string
	key crypto.Signer
	// from is when key starts signing (store.JWTKey.SignsFrom).
	from     time.Time
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
// ones until the last token they signed expires; with several replicas,
// every replica's. Each rotation makes a new Bundle; the caller must not
// modify it.
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
	a.cfg.Metrics.JWTSVIDMinted(id.Kind, result(err))
	return svid, err
}

func (a *Authority) mintJWTSVID(ctx context.Context, id attestor.Identity, audiences []string, ttl time.Duration, now time.Time) (*JWTSVID, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s := a.jwt.Load()
	if s == nil {
		return nil, fmt.Errorf("%w: no JWT signing key", ErrUnavailable)
	}
	if now.Before(s.from) {
		return nil, fmt.Errorf("%w: this replica's new JWT signing key is being published; it signs from %s", ErrUnavailable, s.from.UTC().Format(time.RFC3339))
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

// rotateJWTKeys brings the JWT signing keys up to date at now and returns
// the signer to apply once st is saved. A CA alone keeps its keys, sealed,
// in st.JWTKeys. A replica among several keeps its own in memory and
// records their public keys in st.ReplicaJWTKeys, and its bundle is every
// key recorded there.
func (a *Authority) rotateJWTKeys(st *store.CAState, now time.Time) (*jwtSigner, error) {
	if a.cfg.Replica == "" {
		k, err := a.rotateJWTKeySet(st.JWTKeys, now)
		if err != nil {
			return nil, err
		}
		st.JWTKeys = k
		return a.jwtSignerFrom(k, publishedJWTKeys(k))
	}
	k, err := a.rotateJWTKeySet(a.local.JWTKeys, now)
	if err != nil {
		return nil, err
	}
	// Kept even if the save fails, as the intermediates are: the retry
	// records the same keys.
	a.local.JWTKeys = k
	recordReplicaJWT(st, a.cfg.Replica, k, now, a.cfg.JWTPublishDelay, a.cfg.JWTSVIDMaxTTL+a.cfg.Backdate)
	published := make([]store.JWTKey, 0, len(st.ReplicaJWTKeys))
	for _, r := range st.ReplicaJWTKeys {
		published = append(published, r.JWTKey)
	}
	return a.jwtSignerFrom(k, published)
}

// rotateJWTKeySet brings k (nil: none yet) up to date at now: a usable
// active key, the next one prepared at JWTPrepareTime and switched to at
// JWTActivateTime, the retired ones pruned once no token they signed can
// be valid.
func (a *Authority) rotateJWTKeySet(k *store.JWTKeys, now time.Time) (*store.JWTKeys, error) {
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
	return k, nil
}

// recordReplicaJWT writes replica's JWT keys k into the shared state st as
// public records, keeping the other replicas' until they stop being
// published. A key of replica's not recorded yet, while other keys are,
// signs only from delay after now (store.JWTKey.SignsFrom). A record of
// replica's for a key it no longer holds (an earlier process of the same
// name) is kept as retired, for lastToken more at most: that key signs no
// more.
func recordReplicaJWT(st *store.CAState, replica string, k *store.JWTKeys, now time.Time, delay, lastToken time.Duration) {
	held := map[string]bool{k.Active.ID: true}
	if k.Next != nil {
		held[k.Next.ID] = true
	}
	for _, j := range k.Retired {
		held[j.ID] = true
	}
	recorded := map[string]bool{}
	others := false
	var kept []store.ReplicaJWTKey
	for _, r := range st.ReplicaJWTKeys {
		if !now.Before(r.NotAfter) {
			continue
		}
		if r.Replica == replica && held[r.ID] {
			recorded[r.ID] = true
			continue
		}
		if r.Replica == replica && r.State != "retired" {
			r.State, r.Key, r.NotAfter = "retired", store.SealedKey{}, earliest(r.NotAfter, now.Add(lastToken))
		}
		kept = append(kept, r)
		others = true
	}
	add := func(state string, j *store.JWTKey) {
		if j == nil {
			return
		}
		if others && !recorded[j.ID] && state != "retired" {
			if at := now.Add(delay); j.SignsFrom.Before(at) {
				j.SignsFrom = at
			}
		}
		pub := *j
		pub.Key = store.SealedKey{}
		kept = append(kept, store.ReplicaJWTKey{Replica: replica, State: state, JWTKey: pub})
	}
	add("active", k.Active)
	add("next", k.Next)
	for i := range k.Retired {
		add("retired", &k.Retired[i])
	}
	slices.SortFunc(kept, func(x, y store.ReplicaJWTKey) int {
		return cmp.Or(cmp.Compare(x.Replica, y.Replica), cmp.Compare(x.State, y.State), cmp.Compare(x.ID, y.ID))
	})
	st.ReplicaJWTKeys = kept
}

// publishedJWTKeys are the keys of k in its trust domain's bundle.
func publishedJWTKeys(k *store.JWTKeys) []store.JWTKey {
	published := append([]store.JWTKey{*k.Active}, k.Retired...)
	if k.Next != nil {
		published = append(published, *k.Next)
	}
	return published
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

// jwtSignerFrom opens k's active key (reusing the one in effect when it
// is the same) and builds the bundle of the published keys.
func (a *Authority) jwtSignerFrom(k *store.JWTKeys, published []store.JWTKey) (*jwtSigner, error) {
	b := jwtbundle.New(a.cfg.TrustDomain)
	for _, j := range published {
		pub, err := x509.ParsePKIXPublicKey(j.PublicKeyDER)
		if err != nil {
			return nil, fmt.Errorf("ca: stored JWT key %q: %w", j.ID, err)
		}
		if err := b.AddJWTAuthority(j.ID, pub); err != nil {
			return nil, fmt.Errorf("ca: stored JWT key %q: %w", j.ID, err)
		}
	}
	s := &jwtSigner{kid: k.Active.ID, from: k.Active.SignsFrom, notAfter: k.Active.NotAfter, bundle: b, next: JWTPrepareTime(k.Active)}
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
