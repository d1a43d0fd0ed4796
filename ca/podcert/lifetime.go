package podcert

import (
	"hash/fnv"
	"time"

	"k8s.io/apimachinery/pkg/types"
)

// The API server's rules for an issued pod certificate (Kubernetes 1.35,
// ValidatePodCertificateRequestStatusUpdate).
const (
	// MinLifetime is the shortest NotAfter−NotBefore it accepts.
	MinLifetime = time.Hour
	// DefaultMaxExpiration is spec.maxExpirationSeconds when the request
	// leaves it out (the API server sets it; a request built elsewhere may
	// not have).
	DefaultMaxExpiration = 24 * time.Hour
	// NotBeforeWindow is how far notBefore may be from the API server's
	// clock.
	NotBeforeWindow = 5 * time.Minute
	// RefreshMargin is how far beginRefreshAt must be from notBefore and
	// from notAfter.
	RefreshMargin = 10 * time.Minute
)

// resendMargin keeps a re-sent certificate's notBefore this far inside
// NotBeforeWindow, for the time the update takes and the clocks' skew.
const resendMargin = 30 * time.Second

// Lifetime is the validity, NotAfter−NotBefore, of the certificate for a
// request whose spec.maxExpirationSeconds is maxExpirationSeconds (nil:
// DefaultMaxExpiration): that maximum, capped by the CA's maxTTL
// (--max-ttl). When it is under MinLifetime (a --max-ttl under an hour) no
// certificate can satisfy the API server, and the request fails.
func Lifetime(maxExpirationSeconds *int32, maxTTL time.Duration) time.Duration {
	want := DefaultMaxExpiration
	if maxExpirationSeconds != nil {
		want = time.Duration(*maxExpirationSeconds) * time.Second
	}
	return min(want, maxTTL)
}

// RefreshAt is the beginRefreshAt of a certificate valid from notBefore to
// notAfter: at half its life, as the meshca agent renews, moved by up to
// ±5 % of the life so that pods started together do not all renew at the
// same moment. The shift is a hash of the request's UID, so the same
// request always gets the same time. The result is kept RefreshMargin away
// from both ends, as the API server requires (possible for a life of
// 2 × RefreshMargin or more; MinLifetime is three times that).
func RefreshAt(notBefore, notAfter time.Time, uid types.UID) time.Time {
	life := notAfter.Sub(notBefore)
	h := fnv.New64a()
	_, _ = h.Write([]byte(uid)) // a hash.Hash never fails
	// permille in [450, 550).
	permille := 450 + int64(h.Sum64()%100)
	at := notBefore.Add(time.Duration(int64(life) / 1000 * permille)).Truncate(time.Second)
	earliest, latest := notBefore.Add(RefreshMargin), notAfter.Add(-RefreshMargin)
	switch {
	case at.Before(earliest):
		return earliest
	case at.After(latest):
		return latest
	}
	return at
}
