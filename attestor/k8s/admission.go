package k8s

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/sync/singleflight"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/cache"
	"k8s.io/client-go/kubernetes"

	"github.com/meshca/meshca/attestor"
)

// ServiceAccounts tells whether a ServiceAccount exists.
type ServiceAccounts interface {
	// Exists reports whether the ServiceAccount ns/name exists; an error
	// means it cannot tell (the API server is unreachable, RBAC forbids the
	// lookup, ...).
	Exists(ctx context.Context, ns, name string) (bool, error)
}

// ClientServiceAccounts looks ServiceAccounts up through client-go. meshca
// needs RBAC "get" on serviceaccounts in the namespaces it serves.
type ClientServiceAccounts struct{ Client kubernetes.Interface }

// Exists implements ServiceAccounts.
func (c ClientServiceAccounts) Exists(ctx context.Context, ns, name string) (bool, error) {
	_, err := c.Client.CoreV1().ServiceAccounts(ns).Get(ctx, name, metav1.GetOptions{})
	switch {
	case err == nil:
		return true, nil
	case apierrors.IsNotFound(err):
		return false, nil
	}
	return false, err
}

// LookupConfig bounds the ServiceAccount lookup cache. Zero fields get
// defaults.
type LookupConfig struct {
	// Size is the most ServiceAccounts remembered. Default 10,000; negative
	// is an error.
	Size int
	// TTL is how long a ServiceAccount found is trusted to exist without
	// asking again: a ServiceAccount deleted meanwhile renews for at most
	// that long. Default 1 minute.
	TTL time.Duration
	// NegativeTTL is how long a ServiceAccount not found stays refused
	// without asking again. Default 5s.
	NegativeTTL time.Duration
	// MaxStale is how long after the last lookup that found it a
	// ServiceAccount keeps renewing while the API server cannot be reached.
	// Default 24 hours.
	MaxStale time.Duration
}

// AdmissionConfig configures NewAdmission.
type AdmissionConfig struct {
	// Config holds the settings every Kubernetes attestor shares: the
	// trust domain, the allow and deny lists, clock, logger and metrics
	// (Audiences are not used).
	Config
	// ServiceAccounts, when set, is asked whether the ServiceAccount of a
	// renewing identity still exists. Nil applies the allow and deny lists
	// alone (Kubernetes attestation off). *Informers is asked on every
	// renewal, without the lookup cache: its answer costs no API call and
	// is as fresh as its watch.
	ServiceAccounts ServiceAccounts
	// Lookup bounds the cache of ServiceAccount lookups; zero fields get
	// LookupConfig's defaults.
	Lookup LookupConfig
}

// Admission applies to a renewing identity the admission of first issuance.
// Identities of the Kubernetes shape, spiffe://<td>/ns/<ns>/sa/<sa>, must
// pass the allow and deny lists, and, with ServiceAccounts set, their
// ServiceAccount must still exist. Identities of any other shape (join
// tokens, OIDC) are admitted: revocation, which the mTLS attestor checks on
// every renewal, is what ends them.
//
// The existence check is a cached lookup:
//   - found: trusted for TTL; a deleted ServiceAccount is refused at most TTL
//     after its deletion (plus the lookup's own latency);
//   - not found: refused (ErrPermissionDenied), remembered for NegativeTTL;
//   - the API server unreachable: a ServiceAccount found within MaxStale is
//     admitted, so renewals go on through an outage; one never found, or
//     found longer ago, is refused with ErrUnavailable: the workload keeps
//     its current SVID and retries. meshca does not admit an identity it
//     has never confirmed: that would let a deleted ServiceAccount renew
//     for ever across CA restarts during an outage, the very hole this
//     closes. A CA restarted while the API server is down thus renews
//     Kubernetes identities again only once the API server answers.
//
// With Informers as ServiceAccounts nothing above is cached: every renewal
// reads the informer cache, so a deleted ServiceAccount is refused as soon
// as its watch event arrives, and until the caches have synced renewals are
// refused with ErrUnavailable. While the API server cannot be reached the
// caches keep what they last saw.
//
// A ServiceAccount deleted and recreated under the same name is the same
// identity: the lookup is by name, as the SPIFFE ID is.
type Admission struct {
	cfg     Config
	lc      LookupConfig
	lookups ServiceAccounts
	// watched is lookups when it answers from informer caches.
	watched *Informers
	// cache maps "ns/sa" to its *lookup. Entries live MaxStale (found) or
	// NegativeTTL (not found); the lookup's own time says whether it is
	// fresh.
	cache   *cache.LRUExpireCache
	flights singleflight.Group
}

// lookup is the result of one ServiceAccount lookup.
type lookup struct {
	exists bool
	at     time.Time
}

// lookupTimeout bounds one ServiceAccount lookup, so that an API server
// that does not answer delays a renewal by at most this much.
const lookupTimeout = 5 * time.Second

// NewAdmission returns the renewal admission.
func NewAdmission(ac AdmissionConfig) (*Admission, error) {
	cfg, lc := ac.Config, ac.Lookup
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	switch {
	case lc.Size == 0:
		lc.Size = 10_000
	case lc.Size < 0:
		return nil, fmt.Errorf("k8s: ServiceAccount cache size %d is negative", lc.Size)
	}
	for _, d := range []struct {
		v   *time.Duration
		def time.Duration
	}{{&lc.TTL, time.Minute}, {&lc.NegativeTTL, 5 * time.Second}, {&lc.MaxStale, 24 * time.Hour}} {
		if *d.v <= 0 {
			*d.v = d.def
		}
	}
	lc.MaxStale = max(lc.MaxStale, lc.TTL)
	a := &Admission{cfg: cfg, lc: lc, lookups: ac.ServiceAccounts, cache: cache.NewLRUExpireCacheWithClock(lc.Size, cfg.Clock)}
	a.watched, _ = ac.ServiceAccounts.(*Informers)
	return a, nil
}

// ServiceAccountOf returns the namespace and ServiceAccount of an identity
// of the Kubernetes shape, /ns/<ns>/sa/<sa>, whatever its trust domain.
func ServiceAccountOf(id spiffeid.ID) (ns, sa string, ok bool) {
	seg := strings.Split(id.Path(), "/")
	if len(seg) != 5 || seg[0] != "" || seg[1] != "ns" || seg[3] != "sa" || seg[2] == "" || seg[4] == "" {
		return "", "", false
	}
	return seg[2], seg[4], true
}

// Admit implements attestor.Admit.
func (a *Admission) Admit(ctx context.Context, id spiffeid.ID) error {
	ns, sa, ok := ServiceAccountOf(id)
	if !ok {
		return nil
	}
	if err := a.cfg.admit(ns, sa); err != nil {
		a.cfg.Metrics.Renewal("denied")
		return fmt.Errorf("k8s: %w", err)
	}
	if a.lookups == nil {
		a.cfg.Metrics.Renewal("ok")
		return nil
	}
	key := ns + "/" + sa
	var (
		exists bool
		err    error
	)
	if a.watched != nil {
		exists, err = a.watched.Exists(ctx, ns, sa)
	} else {
		var stale bool
		if exists, stale, err = a.cachedExists(ctx, key, ns, sa); stale {
			return nil
		}
	}
	switch {
	case err != nil:
		a.cfg.Metrics.Renewal("unavailable")
		level := slog.LevelWarn
		if errors.Is(err, ErrNotSynced) { // start-up: no news
			level = slog.LevelDebug
		}
		a.cfg.Logger.Log(ctx, level, "ServiceAccount lookup failed; renewal refused until it succeeds", "serviceaccount", key, "err", err)
		return fmt.Errorf("%w: k8s: cannot confirm that ServiceAccount %s still exists: %w", attestor.ErrUnavailable, key, err)
	case !exists:
		a.cfg.Metrics.Renewal("deleted")
		return fmt.Errorf("%w: k8s: ServiceAccount %s no longer exists", attestor.ErrPermissionDenied, key)
	}
	a.cfg.Metrics.Renewal("ok")
	return nil
}

// cachedExists answers from the lookup cache, or looks up. When the lookup
// fails and the stale rule admits the ServiceAccount on an earlier lookup,
// it says so (stale), counted and logged.
func (a *Admission) cachedExists(ctx context.Context, key, ns, sa string) (exists, stale bool, err error) {
	now := a.cfg.Clock.Now()
	last, known := a.last(key)
	if known && a.fresh(last, now) {
		return last.exists, false, nil
	}
	answer, err := a.lookup(ctx, key, ns, sa)
	if err == nil {
		return answer.exists, false, nil
	}
	if known && last.exists && now.Sub(last.at) < a.lc.MaxStale {
		a.cfg.Metrics.Renewal("stale")
		a.cfg.Logger.Warn("ServiceAccount lookup failed; admitting a renewal on an earlier lookup",
			"serviceaccount", key, "found_at", last.at, "err", err)
		return true, true, nil
	}
	return false, false, err
}

func (a *Admission) last(key string) (lookup, bool) {
	v, ok := a.cache.Get(key)
	if !ok {
		return lookup{}, false
	}
	return v.(lookup), true
}

func (a *Admission) fresh(l lookup, now time.Time) bool {
	ttl := a.lc.TTL
	if !l.exists {
		ttl = a.lc.NegativeTTL
	}
	return now.Sub(l.at) < ttl
}

// lookup asks the API server, once for all concurrent renewals of key, and
// caches the answer. The lookup runs on its own deadline: a caller giving up
// does not fail the others waiting on it. A failure is not cached, so the
// entry from the last success stays for the stale rule.
func (a *Admission) lookup(ctx context.Context, key, ns, sa string) (lookup, error) {
	ch := a.flights.DoChan(key, func() (any, error) {
		lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), lookupTimeout)
		defer cancel()
		start := a.cfg.Clock.Now()
		exists, err := a.lookups.Exists(lctx, ns, sa)
		took := a.cfg.Clock.Now().Sub(start)
		if err != nil {
			a.cfg.Metrics.ServiceAccountLookup("error", took)
			return nil, err
		}
		l := lookup{exists: exists, at: start}
		ttl := a.lc.MaxStale
		if exists {
			a.cfg.Metrics.ServiceAccountLookup("found", took)
		} else {
			a.cfg.Metrics.ServiceAccountLookup("not-found", took)
			ttl = a.lc.NegativeTTL
		}
		a.cache.Add(key, l, ttl)
		return l, nil
	})
	select {
	case r := <-ch:
		if r.Err != nil {
			return lookup{}, r.Err
		}
		return r.Val.(lookup), nil
	case <-ctx.Done():
		return lookup{}, ctx.Err()
	}
}
