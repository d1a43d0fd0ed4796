package server

import (
	"container/list"
	"context"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meshca/meshca/internal/clock"
)

// Retry hints given with a shed request stay within these bounds: under a
// second would bring a storm straight back; over a minute delays renewals
// that have hours of validity left, but not a first certificate for long.
const (
	minRetryHint = 250 * time.Millisecond
	maxRetryHint = time.Minute
)

// OverloadedError is the answer to a CSR the CA sheds: every signing slot
// busy and the queue full, or no slot freed within the queue wait. It maps
// to ResourceExhausted (HTTP 429) with RetryAfter as a google.rpc.RetryInfo
// detail, a grpc-retry-pushback-ms trailer and a Retry-After header.
type OverloadedError struct {
	// RetryAfter is when the queue is expected to have room again; callers
	// should wait this long, spread by jitter, before retrying.
	RetryAfter time.Duration
}

func (e *OverloadedError) Error() string {
	return fmt.Sprintf("CA overloaded, retry in %s", e.RetryAfter)
}

// gate bounds the CSRs in progress (attestation, signing and the durable
// record) to a fixed number of slots. A request finding every slot busy
// waits in line, at most maxQueued of them and each at most maxWait; one
// whose expected wait (its place in line times the measured time between
// two requests finishing while saturated) is past maxWait, or who finds the line full, is
// shed at once with a retry hint instead of queueing without bound: a
// storm of renewals costs bounded memory and CPU, and the requests
// admitted finish well within their deadline.
//
// The line is a list served in order: a slot given back goes to the
// oldest in line. One goroutine at a time, while anyone waits, times out
// the oldest. A timer per request in line instead cost a fifth of the
// CPU with 50,000 in line (the runtime's timer heap, BENCHMARKS.md).
type gate struct {
	size      int
	maxQueued int64
	maxWait   time.Duration
	clock     clock.Clock
	// onShed, if set, is called for each request shed (a metric).
	onShed func()
	// maxPace, if set, bounds the time per request the retry hints
	// assume (zero: no bound yet). A pace measured while a flood holds the CPUs
	// can be many times too slow, and hints paced by it keep callers
	// away for a minute while the CA sits idle; the server bounds it by
	// what the CPUs can sign (see New).
	maxPace func() time.Duration

	// mu guards busy, line and reaping.
	mu   sync.Mutex
	busy int // slots taken
	// line is the requests waiting for a slot (*waiter), oldest first.
	line list.List
	// reaping is set while a goroutine waits for the oldest in line to
	// have waited maxWait.
	reaping bool
	// queued is the line's length, for readers without mu (the metrics,
	// the hints).
	queued atomic.Int64

	// pace measures how fast requests finish while every slot is busy.
	pace pacer
	// serviceNanos is a moving average of the time a request holds a
	// slot; over the slots, it stands in for the pace until one is
	// measured.
	serviceNanos atomic.Int64
	// retryMu guards booked and bookedAt: the callers shed who were
	// asked back and not due yet, counted at bookedAt. Each one shed is
	// asked back after them, at the gate's pace, so that those turned
	// away together come back one after another instead of together.
	// They are counted, not timed: as the pace measured improves (a
	// flood's first measurements are the worst), those booked fall due
	// sooner, and the next caller is asked back sooner.
	retryMu  sync.Mutex
	booked   float64
	bookedAt time.Time
}

// waiter is a request in line.
type waiter struct {
	until time.Time // when it has waited maxWait
	// done receives nil when a slot is given to it, or the error it is
	// shed with; one value, never blocking the sender.
	done chan error
	el   *list.Element // in the line, nil once out of it
}

func newGate(slots, maxQueued int, maxWait time.Duration, c clock.Clock) *gate {
	return &gate{size: slots, maxQueued: int64(maxQueued), maxWait: maxWait, clock: c}
}

// acquire takes a slot, waiting in line if there is room in it, and
// returns the function that gives the slot back. A nil gate admits all.
func (g *gate) acquire(ctx context.Context) (func(), error) {
	if g == nil {
		return func() {}, nil
	}
	g.mu.Lock()
	if g.busy < g.size {
		g.busy++
		g.mu.Unlock()
		return g.releaser(), nil
	}
	// Join the line only if it is short enough to be served within the
	// wait: a request bound to time out there is better told at once.
	if q := int64(g.line.Len()) + 1; q > g.maxQueued || g.expectedWait(q) > g.maxWait {
		g.mu.Unlock()
		return nil, g.shed()
	}
	w := &waiter{until: g.clock.Now().Add(g.maxWait), done: make(chan error, 1)}
	w.el = g.line.PushBack(w)
	g.queued.Store(int64(g.line.Len()))
	if !g.reaping {
		g.reaping = true
		go g.reap()
	}
	g.mu.Unlock()
	select {
	case err := <-w.done:
		if err != nil {
			return nil, err
		}
		return g.releaser(), nil
	case <-ctx.Done():
	}
	g.mu.Lock()
	if w.el != nil {
		g.leave(w)
		g.mu.Unlock()
		return nil, ctx.Err()
	}
	g.mu.Unlock()
	// Served or shed while the context ended: a slot given is given back.
	if err := <-w.done; err == nil {
		g.release()
	}
	return nil, ctx.Err()
}

// leave takes w out of the line; g.mu held.
func (g *gate) leave(w *waiter) {
	g.line.Remove(w.el)
	w.el = nil
	g.queued.Store(int64(g.line.Len()))
}

// release gives a slot back: to the oldest in line, or free. It reports
// whether every slot was busy until then.
func (g *gate) release() (saturated bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	saturated = g.busy == g.size
	if e := g.line.Front(); e != nil {
		w := e.Value.(*waiter)
		g.leave(w)
		w.done <- nil // the slot passes on: busy stays
		return saturated
	}
	g.busy--
	return saturated
}

// inFlight is the number of slots taken (a metric).
func (g *gate) inFlight() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.busy
}

// reap sheds those in line who have waited maxWait, oldest first, until
// the line is empty. Everyone waits the same time, so the oldest is the
// next due.
func (g *gate) reap() {
	var due []*waiter
	for {
		g.mu.Lock()
		now := g.clock.Now()
		for e := g.line.Front(); e != nil; e = g.line.Front() {
			w := e.Value.(*waiter)
			if now.Before(w.until) {
				break
			}
			g.leave(w)
			due = append(due, w)
		}
		e := g.line.Front()
		var wait time.Duration
		if e == nil {
			g.reaping = false
		} else {
			wait = e.Value.(*waiter).until.Sub(now)
		}
		g.mu.Unlock()
		// Their hints are worked out without holding up the line: out of
		// it, each waits for its answer alone.
		for i, w := range due {
			w.done <- g.shed()
			due[i] = nil
		}
		due = due[:0]
		if e == nil {
			return
		}
		<-g.clock.After(wait)
	}
}

// perRequest is the time the gate needs per request when saturated: the
// best pace measured lately, or until there is one, the average time a
// slot is held over the slots (zero before anything finished).
func (g *gate) perRequest() time.Duration {
	if p := g.pace.best(g.clock.Now()); p > 0 {
		return p
	}
	return time.Duration(float64(g.serviceNanos.Load()) / float64(g.size))
}

// hintPace is the time per request the retry hints assume: perRequest, at
// most maxPace.
func (g *gate) hintPace() time.Duration {
	p := g.perRequest()
	if g.maxPace != nil {
		if m := g.maxPace(); m > 0 && p > m {
			return m
		}
	}
	return p
}

// expectedWait is how long the q-th in line waits for a slot.
func (g *gate) expectedWait(q int64) time.Duration {
	return time.Duration(q) * g.perRequest()
}

func (g *gate) releaser() func() {
	start := g.clock.Now()
	return func() {
		now := g.clock.Now()
		// A moving average without a lock: a lost update under a race
		// only delays it a little.
		ewma(&g.serviceNanos, now.Sub(start).Nanoseconds(), 16)
		g.pace.finished(now, g.release())
	}
}

// Pace windows: requests finishing are counted in windows of paceWindow;
// a window in which every slot stayed busy, with at least paceMinCount
// finished, gives a pace (its length over the count), and the best of
// the last paceWindows is the gate's pace. The best, not the average: while
// the CPUs are also turning a crowd away the pace drops, and the crowd is
// what the hints are for; a hint a little short costs a retry shed again,
// a hint too long leaves the CA idle while callers wait.
const (
	paceWindow   = 100 * time.Millisecond
	paceWindows  = 100 // 10 s
	paceMinCount = 8
)

type pacer struct {
	mu        sync.Mutex
	start     time.Time // of the current window
	count     int
	saturated bool // every finish in the current window found all slots busy
	paces     [paceWindows]struct {
		at   time.Time
		pace time.Duration
	}
	next int
}

// finished counts a request done at now; saturated says whether every
// slot was busy.
func (p *pacer) finished(now time.Time, saturated bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if el := now.Sub(p.start); el >= paceWindow || el < 0 {
		if p.saturated && p.count >= paceMinCount && el < 2*paceWindow {
			p.paces[p.next].at, p.paces[p.next].pace = now, el/time.Duration(p.count)
			p.next = (p.next + 1) % paceWindows
		}
		p.start, p.count, p.saturated = now, 0, true
	}
	p.count++
	p.saturated = p.saturated && saturated
}

// best is the shortest pace measured in the last paceWindows windows, or
// zero.
func (p *pacer) best(now time.Time) time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	var best time.Duration
	for _, w := range p.paces {
		if w.pace > 0 && now.Sub(w.at) <= paceWindows*paceWindow && (best == 0 || w.pace < best) {
			best = w.pace
		}
	}
	return best
}

// ewma moves the average in v towards x by 1/weight (to x if v is zero).
func ewma(v *atomic.Int64, x, weight int64) {
	if old := v.Load(); old == 0 {
		v.Store(x)
	} else {
		v.Store(old + (x-old)/weight)
	}
}

// shed counts one request turned away and returns its error with the
// hint: a moment after those in line (at most maxWait) and those turned
// away before it have been served, at the rate the gate serves when
// saturated (see booked: those are counted at the pace of the moment),
// bounded by maxPace.
func (g *gate) shed() error {
	if g.onShed != nil {
		g.onShed()
	}
	now := g.clock.Now()
	per := g.hintPace()
	// Nobody waits in line longer than maxWait (then it is served or
	// shed itself), so the line delays a retry by at most that, whatever
	// its length times a pace measured while it filled.
	line := min(time.Duration(g.queued.Load())*per, g.maxWait)
	if per <= 0 {
		return &OverloadedError{RetryAfter: max(line, minRetryHint)}
	}
	g.retryMu.Lock()
	defer g.retryMu.Unlock()
	if el := now.Sub(g.bookedAt); el > 0 {
		g.booked = max(g.booked-float64(el)/float64(per), 0)
	}
	g.bookedAt = now
	hint := min(max(time.Duration(g.booked*float64(per)), line)+per, maxRetryHint)
	g.booked = float64(hint) / float64(per)
	return &OverloadedError{RetryAfter: max(hint, minRetryHint)}
}

// retryAfterSeconds is d for a Retry-After header: whole seconds, rounded
// up, at least 1.
func retryAfterSeconds(d time.Duration) string {
	return strconv.FormatInt(max(int64((d+time.Second-1)/time.Second), 1), 10)
}
