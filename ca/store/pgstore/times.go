package pgstore

import (
	"math"
	"time"

	"github.com/meshca/meshca/ca/store"
)

// Times are stored as Unix nanoseconds (bigint), exact and ordered as the
// Go values are. Records, tokens and revocation times must lie between 1970
// and 2262 (as boltstore requires too); bounds given for a scan or a prune
// may lie anywhere and are clamped (store.StorableTime says which may be
// stored).

// nanos is t in Unix nanoseconds, clamped to the int64 range: a bound
// before 1677 compares below every stored time, one after 2262 above
// (or equal to) every one.
func nanos(t time.Time) int64 {
	switch {
	case t.Before(time.Unix(0, math.MinInt64)):
		return math.MinInt64
	case t.After(store.MaxTime):
		return math.MaxInt64
	}
	return t.UnixNano()
}

// fromNanos is the time of a stored value, in UTC.
func fromNanos(n int64) time.Time {
	return time.Unix(0, n).UTC()
}
