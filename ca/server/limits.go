package server

import (
	"errors"
	"net"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/meshca/meshca/internal/clock"
)

// limitListener accepts at most cap(slots) connections at a time: Accept
// takes a slot before accepting, and the connection gives it back when
// closed. Past the cap, new connections wait in the kernel's accept queue
// (and are dropped by it when that is full) instead of costing the process
// a descriptor and a goroutine each.
type limitListener struct {
	net.Listener
	slots chan struct{}
	done  chan struct{}
	once  sync.Once
}

func newLimitListener(l net.Listener, n int) *limitListener {
	return &limitListener{Listener: l, slots: make(chan struct{}, n), done: make(chan struct{})}
}

func (l *limitListener) Accept() (net.Conn, error) {
	select {
	case l.slots <- struct{}{}:
	case <-l.done:
		return nil, net.ErrClosed
	}
	c, err := l.Listener.Accept()
	if err != nil {
		<-l.slots
		return nil, err
	}
	return &limitConn{Conn: c, release: func() { <-l.slots }}, nil
}

func (l *limitListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return l.Listener.Close()
}

type limitConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *limitConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}

// errThrottled is the answer to a source address that has spent its budget
// of unauthenticated requests. It maps to ResourceExhausted (HTTP 429).
var errThrottled = errors.New("too many unauthenticated requests from this address, retry later")

// maxTrackedSources bounds the failure limiter's memory: about 100 bytes a
// source, so a few MiB however many addresses an attacker has.
const maxTrackedSources = 1 << 16

// failureLimiter is a token bucket per source address spent by requests
// that fail authentication. A source with an empty bucket is refused
// before its credential is looked at, so a flood of junk credentials costs
// no attestation (TokenReview, JWKS, store lookups) and no log lines past
// the burst; callers that authenticate spend nothing. IPv6 sources are
// grouped by /64, the block one host usually gets.
//
// A client behind the same NAT as an attacker shares its budget: it is
// refused with ResourceExhausted too, and retries with backoff.
type failureLimiter struct {
	limit rate.Limit
	burst int
	clock clock.Clock

	mu      sync.Mutex
	sources map[netip.Prefix]*source
	swept   time.Time
}

type source struct {
	lim  *rate.Limiter
	last time.Time
}

func newFailureLimiter(perSecond float64, burst int, c clock.Clock) *failureLimiter {
	return &failureLimiter{limit: rate.Limit(perSecond), burst: burst, clock: c, sources: map[netip.Prefix]*source{}}
}

// allow reports whether the source of addr (host:port) may make another
// unauthenticated attempt; it spends nothing.
func (f *failureLimiter) allow(addr string) error {
	if f == nil {
		return nil
	}
	key, ok := sourceKey(addr)
	if !ok {
		return nil
	}
	now := f.clock.Now()
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.sources[key]
	if s == nil || s.lim.TokensAt(now) >= 1 {
		return nil
	}
	return errThrottled
}

// failed spends one token of addr's source.
func (f *failureLimiter) failed(addr string) {
	if f == nil {
		return
	}
	key, ok := sourceKey(addr)
	if !ok {
		return
	}
	now := f.clock.Now()
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.sources[key]
	if s == nil {
		if len(f.sources) >= maxTrackedSources {
			f.evict(now)
		}
		s = &source{lim: rate.NewLimiter(f.limit, f.burst)}
		f.sources[key] = s
	}
	s.last = now
	s.lim.AllowN(now, 1)
}

// evict makes room for one source: it drops the sources whose bucket has
// refilled (at most once a second, as that walks the whole map), then, if
// the map is still full, an arbitrary one. Forgetting a source only gives
// it a fresh burst.
func (f *failureLimiter) evict(now time.Time) {
	if now.Sub(f.swept) >= time.Second {
		f.swept = now
		refill := time.Duration(float64(f.burst) / float64(f.limit) * float64(time.Second))
		for k, s := range f.sources {
			if now.Sub(s.last) >= refill {
				delete(f.sources, k)
			}
		}
	}
	if len(f.sources) < maxTrackedSources {
		return
	}
	for k := range f.sources {
		delete(f.sources, k)
		return
	}
}

// sourceKey is the address part of host:port, IPv6 reduced to its /64.
func sourceKey(addr string) (netip.Prefix, bool) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return netip.Prefix{}, false
	}
	ip := ap.Addr().Unmap()
	bits := 32
	if ip.Is6() {
		bits = 64
	}
	p, err := ip.Prefix(bits)
	return p, err == nil
}
