// Package load is the benchmark's load generator: N clients, each with its
// own persistent connection, sending pre-generated CSRs. Closed drives them
// in a closed loop for a fixed time (throughput and latency at saturation),
// Count sends a fixed number of requests at once (a storm of fresh tokens),
// and Rotation has many workloads per connection renew at the same moment,
// retrying what the server sheds, as agents do.
package load

import (
	"context"
	"slices"
	"sync"
	"time"

	"google.golang.org/grpc/status"

	"github.com/meshca/meshca/tools/bench/internal/csrapi"
)

// callTimeout bounds one request of Closed and Count, as an agent's
// request timeout does (meshca's agent: 30 s).
const callTimeout = 30 * time.Second

// Request returns what client i sends as its n-th request: a PEM CSR and a
// bearer token ("" for none: mTLS).
type Request func(i, n int) (csr []byte, token string)

// Result is what a run measured.
type Result struct {
	// OK counts the certificates received in the measured window.
	OK int
	// Errors counts failed calls by gRPC code.
	Errors map[string]int
	// Latencies are those of the successful calls.
	Latencies []time.Duration
	// Elapsed is the measured window.
	Elapsed time.Duration
}

// Rate is certificates per second.
func (r Result) Rate() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.OK) / r.Elapsed.Seconds()
}

// Percentile is the p-th percentile (0 < p ≤ 100) of the latencies, 0 if
// there are none.
func Percentile(lat []time.Duration, p float64) time.Duration {
	if len(lat) == 0 {
		return 0
	}
	s := slices.Clone(lat)
	slices.Sort(s)
	i := int(float64(len(s))*p/100+0.5) - 1
	return s[min(max(i, 0), len(s)-1)]
}

// tally collects outcomes from many goroutines.
type tally struct {
	mu  sync.Mutex
	res Result
}

func (t *tally) add(lat time.Duration, err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if err == nil {
		t.res.OK++
		t.res.Latencies = append(t.res.Latencies, lat)
		return
	}
	if t.res.Errors == nil {
		t.res.Errors = map[string]int{}
	}
	t.res.Errors[status.Code(err).String()]++
}

// Closed has each client send its next request as soon as the previous one
// is answered, for warmup and then for duration. Only calls that complete
// inside the measured window (after warmup) count. mark is called with
// true when the window opens and false when it closes, to read the
// server's CPU there.
func Closed(ctx context.Context, conns []*csrapi.Conn, req Request, warmup, duration time.Duration, mark func(open bool)) Result {
	begin := time.Now()
	open, end := begin.Add(warmup), begin.Add(warmup+duration)
	var (
		t  tally
		wg sync.WaitGroup
	)
	wg.Go(func() {
		time.Sleep(time.Until(open))
		mark(true)
		time.Sleep(time.Until(end))
		mark(false)
	})
	for i, c := range conns {
		wg.Go(func() {
			for n := 0; ctx.Err() == nil; n++ {
				csr, tok := req(i, n)
				start := time.Now()
				if !start.Before(end) {
					return
				}
				cctx, cancel := context.WithTimeout(ctx, callTimeout)
				_, err := c.Sign(cctx, csr, tok)
				cancel()
				if done := time.Now(); !done.Before(open) && done.Before(end) {
					t.add(done.Sub(start), err)
				}
			}
		})
	}
	wg.Wait()
	t.res.Elapsed = end.Sub(open)
	return t.res
}

// Count sends total requests, len(conns) at a time (client i sends
// requests i, i+len(conns), ...), and measures until the last is answered.
func Count(ctx context.Context, conns []*csrapi.Conn, req Request, total int) Result {
	var (
		t  tally
		wg sync.WaitGroup
	)
	begin := time.Now()
	for i, c := range conns {
		wg.Go(func() {
			for n := i; n < total && ctx.Err() == nil; n += len(conns) {
				csr, tok := req(i, n/len(conns))
				start := time.Now()
				cctx, cancel := context.WithTimeout(ctx, callTimeout)
				_, err := c.Sign(cctx, csr, tok)
				cancel()
				t.add(time.Since(start), err)
			}
		})
	}
	wg.Wait()
	t.res.Elapsed = time.Since(begin)
	return t.res
}
