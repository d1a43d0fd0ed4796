// Package jwks verifies JWTs offline against a JSON Web Key Set: signature
// (RS256 or ES256), issuer, audience, and expiry with bounded clock skew.
// Before anything is decoded a token must be at most MaxTokenBytes of
// base64url in three parts; a token without a key ID is checked only when
// exactly one key of the set fits its algorithm. The
// key set is fetched from a URL, a file, or any function, and cached. It is
// fetched again, lazily when a token needs it and shared among the tokens
// arriving meanwhile, once it is RefreshInterval old (a fetched set replaces
// the cached one, so keys the issuer removed stop verifying), and when a
// token names a key ID it does not hold, at most once per MinRefresh so a
// flood of forged key IDs cannot hammer the issuer. When a fetch fails the
// cached keys go on verifying.
package jwks

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"golang.org/x/sync/singleflight"

	"github.com/meshca/meshca/internal/clock"
)

// Algorithms are the signature algorithms accepted: what Kubernetes and the
// common OIDC issuers sign with. "none" and HMAC are never accepted.
var Algorithms = []jose.SignatureAlgorithm{jose.RS256, jose.ES256}

// DefaultMinRefresh is the default shortest interval between two fetches.
const DefaultMinRefresh = 30 * time.Second

// DefaultRefreshInterval is the default age at which a key set is fetched
// again. A key the issuer removes is trusted at most this long afterwards
// while the issuer answers.
const DefaultRefreshInterval = 5 * time.Minute

// DefaultLeeway is the default clock skew allowed on exp, nbf and iat.
const DefaultLeeway = time.Minute

// maxJWKSBytes bounds a fetched key set.
const maxJWKSBytes = 1 << 20

// MaxTokenBytes bounds a token: longer ones are refused before anything is
// decoded. Kubernetes and CI tokens are 1 to 2 KiB; the largest common ones
// (Entra ID with groups) stay under 16 KiB.
const MaxTokenBytes = 64 << 10

// Fetcher returns the raw JWKS document.
type Fetcher func(ctx context.Context) ([]byte, error)

// URLFetcher fetches the key set from url with client (nil: a client with a
// 10s timeout).
//
// Its errors, like FileFetcher's, name the request and carry no "jwks: "
// prefix: they are causes, which KeySet reports inside its own errors.
func URLFetcher(client *http.Client, url string) Fetcher {
	if client == nil {
		client = &http.Client{Timeout: 10 * time.Second}
	}
	return func(ctx context.Context) ([]byte, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return nil, err
		}
		resp, err := client.Do(req)
		if err != nil {
			return nil, err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
		}
		b, err := io.ReadAll(io.LimitReader(resp.Body, maxJWKSBytes+1))
		if err == nil && len(b) > maxJWKSBytes {
			return nil, fmt.Errorf("GET %s: key set larger than %d bytes", url, maxJWKSBytes)
		}
		return b, err
	}
}

// FileFetcher reads the key set from a file on every fetch.
func FileFetcher(path string) Fetcher {
	return func(context.Context) ([]byte, error) { return os.ReadFile(path) }
}

// KeySet is a cached JWKS.
type KeySet struct {
	fetch           Fetcher
	clock           clock.Clock
	minRefresh      time.Duration
	refreshInterval time.Duration

	// fetches shares one fetch among the lookups that need it.
	fetches singleflight.Group

	mu       sync.Mutex
	keys     jose.JSONWebKeySet
	loaded   bool      // a fetch has succeeded
	loadedAt time.Time // when the last successful fetch started
	failedAt time.Time // when the last fetch failed
	// sum is the SHA-256 of the last document fetched, and version counts
	// the fetches that brought a different one (Version).
	sum     [sha256.Size]byte
	version uint64
}

// retryFailedAfter limits fetches while the issuer is failing.
const retryFailedAfter = time.Second

// slowFetchWait is how long a token whose key is cached waits for a
// scheduled refresh before the cached keys answer: a hung issuer (a
// black-holed API server) adds at most this to a CSR.
const slowFetchWait = time.Second

// KeySetConfig configures a KeySet. Zero fields get the documented defaults.
type KeySetConfig struct {
	// Fetch returns the key set. Required.
	Fetch Fetcher
	// MinRefresh is the shortest interval between two fetches for unknown
	// key IDs. Default DefaultMinRefresh.
	MinRefresh time.Duration
	// RefreshInterval is the age at which the key set is fetched again when
	// a token needs it, so that keys the issuer removed stop verifying.
	// Default DefaultRefreshInterval.
	RefreshInterval time.Duration
	// Clock defaults to the wall clock.
	Clock clock.Clock
}

// NewKeySet returns a key set that loads lazily with cfg.Fetch. It panics
// when cfg.Fetch is nil.
func NewKeySet(cfg KeySetConfig) *KeySet {
	if cfg.Fetch == nil {
		panic("jwks: NewKeySet without a Fetch")
	}
	if cfg.MinRefresh == 0 {
		cfg.MinRefresh = DefaultMinRefresh
	}
	if cfg.RefreshInterval <= 0 {
		cfg.RefreshInterval = DefaultRefreshInterval
	}
	return &KeySet{fetch: cfg.Fetch, clock: clock.OrReal(cfg.Clock), minRefresh: cfg.MinRefresh, refreshInterval: cfg.RefreshInterval}
}

// lookup returns the keys that may have signed a token with this key ID
// (all of them when kid is empty), fetching first when plan says so.
// Lookups that need a fetch at the same time share one; each stops waiting
// for it when its own ctx ends.
//
// Its errors carry no "jwks: " prefix: Verify wraps every one.
func (k *KeySet) lookup(ctx context.Context, kid string) ([]jose.JSONWebKey, error) {
	for {
		k.mu.Lock()
		keys, fetch, err := k.plan(kid, k.clock.Now())
		k.mu.Unlock()
		if err != nil || !fetch {
			return keys, err
		}
		// Only the lookup whose function runs sets ran; it learns the
		// outcome of the fetch. The others look again, as if they had
		// arrived after it.
		var ran bool
		ch := k.fetches.DoChan("", func() (any, error) {
			ran = true
			return k.refresh(ctx, kid)
		})
		// A scheduled refresh waits for a slow issuer only briefly: then
		// the cached keys answer, as when the fetch fails. The fetch goes
		// on, and serves the tokens after it.
		var slow <-chan time.Time
		if keys != nil {
			slow = k.clock.After(slowFetchWait)
		}
		select {
		case <-slow:
			return keys, nil
		case r := <-ch:
			// The function returned before its result was sent: reading
			// ran here is no race.
			if !ran || !r.Val.(bool) {
				continue
			}
			k.mu.Lock()
			m := k.match(kid)
			k.mu.Unlock()
			switch {
			case len(m) > 0: // fetched, or kept when the fetch failed
				return m, nil
			case r.Err != nil:
				return nil, r.Err
			}
			return nil, fmt.Errorf("%w %q", errUnknownKey, kid)
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// plan says how a lookup for kid is answered at now: from the cache (keys),
// by fetching first (fetch), or not at all (err). Callers hold mu.
//
//   - Nothing loaded yet: fetch, at most once per retryFailedAfter.
//   - kid known: the cached keys, fetching first once the set is
//     refreshInterval old, so that removed keys are dropped. After a failed
//     fetch the cached keys go on verifying (an issuer outage must not stop
//     attestation) and the next try waits minRefresh.
//   - kid unknown: fetch if the set is at least minRefresh old (a flood of
//     forged key IDs cannot hammer the issuer), at most once per
//     retryFailedAfter while fetches fail.
func (k *KeySet) plan(kid string, now time.Time) (keys []jose.JSONWebKey, fetch bool, err error) {
	failedRecently := func(d time.Duration) bool { return !k.failedAt.IsZero() && now.Sub(k.failedAt) < d }
	if !k.loaded {
		if failedRecently(retryFailedAfter) {
			return nil, false, errors.New("key set fetch failed moments ago")
		}
		return nil, true, nil
	}
	if m := k.match(kid); len(m) > 0 {
		return m, now.Sub(k.loadedAt) >= k.refreshInterval && !failedRecently(k.minRefresh), nil
	}
	switch {
	case now.Sub(k.loadedAt) < k.minRefresh:
		return nil, false, fmt.Errorf("%w %q", errUnknownKey, kid)
	case failedRecently(retryFailedAfter):
		return nil, false, errors.New("key set fetch failed moments ago")
	}
	return nil, true, nil
}

// refresh fetches the key set, unless a fetch that ended since the caller
// looked makes it unneeded for kid; it reports whether it fetched. A fetched
// set replaces the cached one entirely; a failed fetch keeps it.
func (k *KeySet) refresh(ctx context.Context, kid string) (bool, error) {
	k.mu.Lock()
	now := k.clock.Now()
	if _, fetch, _ := k.plan(kid, now); !fetch {
		k.mu.Unlock()
		return false, nil
	}
	k.mu.Unlock()

	// Fetch without holding mu, so tokens with known keys are not held up
	// by a slow issuer; a caller giving up does not fail the others.
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	set, sum, err := fetchSet(fctx, k.fetch)
	cancel()

	k.mu.Lock()
	defer k.mu.Unlock()
	if err != nil {
		k.failedAt = now
		return true, err
	}
	if !k.loaded || sum != k.sum {
		k.version++
	}
	k.keys, k.sum, k.loaded, k.loadedAt, k.failedAt = set, sum, true, now, time.Time{}
	return true, nil
}

func fetchSet(ctx context.Context, fetch Fetcher) (jose.JSONWebKeySet, [sha256.Size]byte, error) {
	var set jose.JSONWebKeySet
	raw, err := fetch(ctx)
	if err != nil {
		return set, [sha256.Size]byte{}, fmt.Errorf("fetch key set: %w", err)
	}
	if err := json.Unmarshal(raw, &set); err != nil {
		return set, [sha256.Size]byte{}, fmt.Errorf("key set is not a JWKS: %w", err)
	}
	return set, sha256.Sum256(raw), nil
}

// Version returns the version of the cached keys: 0 before the first
// fetch, then a number that changes whenever a fetch brings a different key
// set, and only then. A verification made while Version returned v stands
// for as long as Recheck returns v for the token's key ID.
func (k *KeySet) Version() uint64 {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.version
}

// Recheck does for a token signed by key kid (as its header names it) what
// verifying it would do with the key set: fetch first when the set is due
// for a refresh, or when kid is unknown and a fetch is allowed. It returns
// the set's version afterwards, or an error when no key fits kid. A caller
// that caches verified tokens (keyed by the whole token) calls it on every
// hit, so that a cached token stops verifying when its key leaves the set,
// as a verification would.
func (k *KeySet) Recheck(ctx context.Context, kid string) (uint64, error) {
	if _, err := k.lookup(ctx, kid); err != nil {
		return 0, err
	}
	return k.Version(), nil
}

// match returns the keys for kid (all keys for ""). Callers hold mu.
func (k *KeySet) match(kid string) []jose.JSONWebKey {
	if kid == "" {
		return k.keys.Keys
	}
	return k.keys.Key(kid)
}

var errUnknownKey = errors.New("unknown key ID")

// Errors a Verifier returns, wrapped with details safe to show the caller.
var (
	// ErrInvalid: malformed, badly signed, expired, wrong issuer or audience.
	ErrInvalid = errors.New("jwks: invalid token")
	// ErrUnavailable: the key set could not be fetched.
	ErrUnavailable = errors.New("jwks: key set unavailable")
)

// Verifier checks tokens of one issuer.
type Verifier struct {
	// Issuer is the required "iss". Required.
	Issuer string
	// Audiences: "aud" must contain at least one of them. Required.
	Audiences []string
	// Keys verifies signatures. Required.
	Keys *KeySet
	// Leeway is the clock skew allowed. Default DefaultLeeway.
	Leeway time.Duration
	// Clock defaults to the wall clock.
	Clock clock.Clock
}

// Verify checks token and decodes its claims into extra (may be nil), besides
// returning the registered claims. The token must carry "exp". Every error
// wraps ErrInvalid or ErrUnavailable, and so starts "jwks: ".
func (v *Verifier) Verify(ctx context.Context, token string, extra any) (*jwt.Claims, error) {
	claims, _, err := v.VerifyKeyID(ctx, token, extra)
	return claims, err
}

// VerifyKeyID is Verify, and also returns the key ID ("kid") the token's
// header names ("" for none), as the verification read it: what a caller
// that remembers verified tokens passes to KeySet.Recheck.
func (v *Verifier) VerifyKeyID(ctx context.Context, token string, extra any) (*jwt.Claims, string, error) {
	tok, err := parse(token)
	if err != nil {
		return nil, "", fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if len(tok.Headers) != 1 {
		return nil, "", fmt.Errorf("%w: want exactly one signature", ErrInvalid)
	}
	h := tok.Headers[0]
	keys, err := v.Keys.lookup(ctx, h.KeyID)
	if err != nil {
		if errors.Is(err, errUnknownKey) {
			return nil, "", fmt.Errorf("%w: signed by an unknown key (%v)", ErrInvalid, err)
		}
		return nil, "", fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	keys = slices.DeleteFunc(slices.Clone(keys), func(k jose.JSONWebKey) bool { return !fits(k, h.Algorithm) })
	switch {
	case len(keys) == 0 && h.KeyID == "":
		return nil, "", fmt.Errorf("%w: no key in the key set is for signing with %s", ErrInvalid, h.Algorithm)
	case len(keys) == 0:
		return nil, "", fmt.Errorf("%w: key %q is not for signing with %s", ErrInvalid, h.KeyID, h.Algorithm)
	case h.KeyID == "" && len(keys) > 1:
		// Trying each would let one token cost as many verifications as
		// the set has keys; real issuers name the key.
		return nil, "", fmt.Errorf("%w: no key ID (kid), and %d keys could have signed with %s", ErrInvalid, len(keys), h.Algorithm)
	}
	var claims jwt.Claims
	var verified bool
	for _, key := range keys {
		if tok.Claims(key.Key, &claims) == nil {
			verified = true
			break
		}
	}
	if !verified {
		return nil, "", fmt.Errorf("%w: signature does not verify", ErrInvalid)
	}
	// The signature verified above; decoding the rest is safe now.
	if extra != nil {
		if err := tok.UnsafeClaimsWithoutVerification(extra); err != nil {
			return nil, "", fmt.Errorf("%w: malformed claims: %v", ErrInvalid, err)
		}
	}
	now := clock.OrReal(v.Clock).Now()
	leeway := v.Leeway
	if leeway == 0 {
		leeway = DefaultLeeway
	}
	switch {
	case claims.Issuer != v.Issuer:
		return nil, "", fmt.Errorf("%w: issuer %q is not %q", ErrInvalid, claims.Issuer, v.Issuer)
	case !slices.ContainsFunc(v.Audiences, func(a string) bool { return claims.Audience.Contains(a) }):
		return nil, "", fmt.Errorf("%w: audience %v does not include %s", ErrInvalid, []string(claims.Audience), strings.Join(v.Audiences, " or "))
	case claims.Expiry == nil:
		return nil, "", fmt.Errorf("%w: no expiry (exp)", ErrInvalid)
	case now.After(claims.Expiry.Time().Add(leeway)):
		return nil, "", fmt.Errorf("%w: expired at %s", ErrInvalid, claims.Expiry.Time().UTC().Format(time.RFC3339))
	case claims.NotBefore != nil && now.Add(leeway).Before(claims.NotBefore.Time()):
		return nil, "", fmt.Errorf("%w: not valid before %s", ErrInvalid, claims.NotBefore.Time().UTC().Format(time.RFC3339))
	case claims.IssuedAt != nil && now.Add(leeway).Before(claims.IssuedAt.Time()):
		return nil, "", fmt.Errorf("%w: issued in the future", ErrInvalid)
	}
	return &claims, h.KeyID, nil
}

// parse checks that token is one compact JWS of at most MaxTokenBytes, in
// base64url without padding or white space (which Go's base64 decoder would
// skip, making one token many), and signed with one of Algorithms; then
// parses it. Its errors carry no "jwks: " prefix.
func parse(token string) (*jwt.JSONWebToken, error) {
	if len(token) > MaxTokenBytes {
		return nil, fmt.Errorf("token of %d bytes is larger than %d", len(token), MaxTokenBytes)
	}
	if n := strings.Count(token, "."); n != 2 {
		return nil, fmt.Errorf("not a compact JWS: %d parts, want three", n+1)
	}
	for i := 0; i < len(token); i++ {
		if c := token[i]; !(c == '.' || c == '-' || c == '_' || '0' <= c && c <= '9' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z') {
			return nil, fmt.Errorf("not a compact JWS: byte %d is not base64url", i)
		}
	}
	tok, err := jwt.ParseSigned(token, Algorithms)
	if err != nil {
		return nil, fmt.Errorf("not a signed JWT with an accepted algorithm (%v): %v", Algorithms, err)
	}
	return tok, nil
}

// fits reports whether key may verify a signature made with alg: a public
// key of alg's type, published for signing ("use" absent or "sig") and for
// alg ("alg" absent or alg).
func fits(key jose.JSONWebKey, alg string) bool {
	if (key.Use != "" && key.Use != "sig") || (key.Algorithm != "" && key.Algorithm != alg) {
		return false
	}
	switch k := key.Public().Key.(type) {
	case *rsa.PublicKey:
		return alg == string(jose.RS256)
	case *ecdsa.PublicKey:
		return alg == string(jose.ES256) && k.Curve == elliptic.P256()
	}
	return false
}

// Peek returns a token's issuer and expiry without verifying anything. It
// is for routing a token to its verifier and for bounding cache lifetimes,
// never for trusting the token. Tokens Verify calls malformed are not ok.
func Peek(token string) (issuer string, expiry time.Time, ok bool) {
	tok, err := parse(token)
	if err != nil {
		return "", time.Time{}, false
	}
	var c jwt.Claims
	if tok.UnsafeClaimsWithoutVerification(&c) != nil {
		return "", time.Time{}, false
	}
	if c.Expiry != nil {
		expiry = c.Expiry.Time()
	}
	return c.Issuer, expiry, true
}
