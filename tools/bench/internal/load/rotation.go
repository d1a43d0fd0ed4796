package load

import (
	"context"
	"math/rand/v2"
	"slices"
	"strconv"
	"sync"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/meshca/meshca/tools/bench/internal/csrapi"
)

// PushbackTrailer is the gRPC trailer in which a server may say how many
// milliseconds to wait before retrying (gRPC's retry pushback).
const PushbackTrailer = "grpc-retry-pushback-ms"

// Storm configures Rotation. Zero fields get the defaults noted.
type Storm struct {
	// Deadline is the time every workload has to renew. Default 60s.
	Deadline time.Duration
	// AttemptTimeout bounds one request (meshca's agent: 30s).
	AttemptTimeout time.Duration
	// BackoffMin is the first wait after a shed request without a retry
	// hint, doubled after each further one up to BackoffMax, each ±20 %;
	// also the shortest wait after a hint (meshca's agent: 1s, 5m).
	BackoffMin, BackoffMax time.Duration
}

func (s *Storm) defaults() {
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&s.Deadline, 60*time.Second)
	def(&s.AttemptTimeout, 30*time.Second)
	def(&s.BackoffMin, time.Second)
	def(&s.BackoffMax, 5*time.Minute)
}

// StormResult is what a rotation storm did.
type StormResult struct {
	// Renewed counts workloads that got a certificate before the deadline.
	Renewed int
	// Failed counts the others by the code of their last attempt; those
	// still waiting to retry when the deadline passed count as
	// "deadline".
	Failed map[string]int
	// Shed counts ResourceExhausted and Unavailable answers (retried).
	Shed int
	// Hints are the retry delays the server asked for.
	Hints []time.Duration
	// Done is when the last workload finished (renewed or failed).
	Done time.Duration
	// PeakRSS is the server's peak resident memory, filled by the caller.
	PeakRSS int64
	// FirstTry and AfterShed are the latencies of the successful attempts
	// (admitted requests): of the workloads admitted at their first
	// attempt (the flood itself), and of those admitted when they came
	// back after a shed.
	FirstTry, AfterShed []time.Duration
	// Sent is the latencies of the same attempts from when the request
	// left the client (csrapi.WithSent): without the wait in the client for
	// a stream on the connection, past the server's limit of calls open on
	// one connection.
	Sent []time.Duration
	// Whole is, for each workload renewed, the time from its first
	// attempt's start to its certificate: every wait included, in the
	// client, in the server and after a shed.
	Whole []time.Duration
	// Renewals and Sheds count, per second since the storm began, the
	// attempts that got a certificate and those shed: where the time went.
	// AskedBack counts the sheds by the second their hint asked the caller
	// back in (the shed's time plus its hint, before jitter): how the
	// server spread the retries.
	Renewals, Sheds, AskedBack []int
}

// Admitted is the latencies of every successful attempt.
func (r StormResult) Admitted() []time.Duration {
	return append(slices.Clone(r.FirstTry), r.AfterShed...)
}

// perSecond counts one event in the second of the storm it happened in.
func perSecond(counts []int, at time.Duration) []int {
	i := int(at / time.Second)
	for len(counts) <= i {
		counts = append(counts, 0)
	}
	counts[i]++
	return counts
}

// Rotation has perConn workloads on each connection renew at once: workload
// k of connection i sends csr(i, k). A request the server sheds
// (ResourceExhausted, Unavailable) is retried after the server's hint if it
// gave one (google.rpc.RetryInfo, or the PushbackTrailer), else after a
// jittered exponential backoff, both as meshca's agent waits; any other
// error fails the workload.
func Rotation(ctx context.Context, conns []*csrapi.Conn, perConn int, csr func(i, k int) []byte, cfg Storm) StormResult {
	cfg.defaults()
	ctx, cancel := context.WithTimeout(ctx, cfg.Deadline)
	defer cancel()
	var (
		mu  sync.Mutex
		res = StormResult{Failed: map[string]int{}}
		wg  sync.WaitGroup
	)
	begin := time.Now()
	attempt := func(ok bool, hint time.Duration) {
		mu.Lock()
		defer mu.Unlock()
		at := time.Since(begin)
		if ok {
			res.Renewals = perSecond(res.Renewals, at)
			return
		}
		res.Sheds = perSecond(res.Sheds, at)
		if hint >= 0 {
			res.AskedBack = perSecond(res.AskedBack, at+hint)
		}
	}
	finish := func(whole, lat, sent time.Duration, fail string, shed int, hints []time.Duration) {
		mu.Lock()
		defer mu.Unlock()
		res.Shed += shed
		res.Hints = append(res.Hints, hints...)
		if fail == "" {
			res.Renewed++
			res.Sent = append(res.Sent, sent)
			res.Whole = append(res.Whole, whole)
			if shed == 0 {
				res.FirstTry = append(res.FirstTry, lat)
			} else {
				res.AfterShed = append(res.AfterShed, lat)
			}
		} else {
			res.Failed[fail]++
		}
		res.Done = max(res.Done, time.Since(begin))
	}
	for i, c := range conns {
		for k := range perConn {
			wg.Go(func() {
				due := time.Now()
				lat, sent, fail, shed, hints := renew(ctx, c, csr(i, k), cfg, attempt)
				finish(time.Since(due), lat, sent, fail, shed, hints)
			})
		}
	}
	wg.Wait()
	return res
}

// renew is one workload: it returns the latency of the attempt that
// succeeded, from its start and from its request's sending, or why it
// failed, how often it was shed and the retry hints it was given. It calls
// attempt after each attempt that got a certificate (true) or was shed
// (false, with the hint, or -1 without one).
func renew(ctx context.Context, c *csrapi.Conn, csr []byte, cfg Storm, attempt func(ok bool, hint time.Duration)) (lat, sent time.Duration, fail string, shed int, hints []time.Duration) {
	for n := 0; ; n++ {
		actx, cancel := context.WithTimeout(ctx, cfg.AttemptTimeout)
		var trailer metadata.MD
		start := time.Now()
		sentAt := start
		_, err := c.Sign(csrapi.WithSent(actx, &sentAt), csr, "", grpc.Trailer(&trailer))
		lat, sent = time.Since(start), time.Since(sentAt)
		cancel()
		if err == nil {
			attempt(true, 0)
			return lat, sent, "", shed, hints
		}
		if ctx.Err() != nil {
			return 0, 0, "deadline", shed, hints
		}
		st := status.Convert(err)
		if st.Code() != codes.ResourceExhausted && st.Code() != codes.Unavailable {
			return 0, 0, st.Code().String(), shed, hints
		}
		shed++
		wait := backoff(n, cfg.BackoffMin, cfg.BackoffMax, rand.Float64()) //nolint:gosec // G404: jitter, not a secret
		hint, ok := retryHint(st, trailer)
		if ok {
			hints = append(hints, hint)
			wait = hintWait(hint, cfg.BackoffMin, rand.Float64()) //nolint:gosec // G404: jitter
		} else {
			hint = -1
		}
		attempt(false, hint)
		select {
		case <-ctx.Done():
			return 0, 0, "deadline", shed, hints
		case <-time.After(wait):
		}
	}
}

// backoff is the wait after attempt failed without a hint: min doubled per
// attempt up to max, ±20 % (r uniform in [0, 1)), as meshca's agent waits.
func backoff(attempt int, lo, hi time.Duration, r float64) time.Duration {
	d := min(lo<<min(attempt, 30), hi)
	return time.Duration(float64(d) * (0.8 + 0.4*r))
}

// hintWait is the wait after a hint: the hint plus up to half of it, at
// most a second, of jitter, and never less than lo — what meshca's agent
// does, so that a server staggering the callers it sheds gets them back
// when it asked.
func hintWait(hint, lo time.Duration, r float64) time.Duration {
	return max(hint+time.Duration(float64(min(hint/2, time.Second))*r), lo)
}

// retryHint is the server's retry delay: a google.rpc.RetryInfo detail of
// the status, else the pushback trailer.
func retryHint(st *status.Status, trailer metadata.MD) (time.Duration, bool) {
	for _, d := range st.Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok && ri.GetRetryDelay() != nil {
			return ri.GetRetryDelay().AsDuration(), true
		}
	}
	if v := trailer.Get(PushbackTrailer); len(v) == 1 {
		if ms, err := strconv.Atoi(v[0]); err == nil && ms >= 0 {
			return time.Duration(ms) * time.Millisecond, true
		}
	}
	return 0, false
}
