package server

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/meshca/meshca/internal/clock"
	"github.com/meshca/meshca/internal/clock/clocktest"
)

var epoch = time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)

func wantOverloaded(t *testing.T, err error) time.Duration {
	t.Helper()
	var over *OverloadedError
	if !errors.As(err, &over) {
		t.Fatalf("error %v, want *OverloadedError", err)
	}
	return over.RetryAfter
}

// fullGate is a gate of one slot with a line of 10 and a 1s wait on clk,
// its slot taken: the next request waits in line. release gives it back.
func fullGate(t *testing.T, clk *clocktest.Fake) (g *gate, release func()) {
	t.Helper()
	g = newGate(1, 10, time.Second, clk)
	release, err := g.acquire(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return g, release
}

func TestGateAdmitsUpToItsSlots(t *testing.T) {
	g := newGate(2, 0, time.Second, clocktest.New(epoch))
	r1, err := g.acquire(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	r2, err := g.acquire(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	// No room in line (maxQueued 0): the third is shed at once.
	if _, err := g.acquire(context.Background()); err == nil {
		t.Fatal("third request admitted past two slots and no line")
	} else if d := wantOverloaded(t, err); d != minRetryHint {
		t.Fatalf("hint %s with nothing measured, want the minimum %s", d, minRetryHint)
	}
	r1()
	r3, err := g.acquire(context.Background())
	if err != nil {
		t.Fatalf("slot given back but not reusable: %v", err)
	}
	r2()
	r3()
}

func TestGateQueue(t *testing.T) {
	for _, tc := range []struct {
		name string
		// act frees the slot, ends the wait or cancels the waiter.
		act  func(clk *clocktest.Fake, release func(), cancel context.CancelFunc)
		want string // "ok", "shed" or "canceled"
	}{
		{"slot freed within the wait", func(_ *clocktest.Fake, release func(), _ context.CancelFunc) { release() }, "ok"},
		{"wait ends first", func(clk *clocktest.Fake, _ func(), _ context.CancelFunc) { clk.Advance(time.Second) }, "shed"},
		{"caller gives up", func(_ *clocktest.Fake, _ func(), cancel context.CancelFunc) { cancel() }, "canceled"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clk := clocktest.New(epoch)
			g, release := fullGate(t, clk)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			got := make(chan error, 1)
			go func() {
				r, err := g.acquire(ctx)
				if err == nil {
					r()
				}
				got <- err
			}()
			clocktest.Eventually(t, "the waiter to queue", func() bool { return g.queued.Load() == 1 && clk.Waiters() == 1 })
			tc.act(clk, release, cancel)
			err := <-got
			switch tc.want {
			case "ok":
				if err != nil {
					t.Fatalf("queued request refused: %v", err)
				}
			case "shed":
				wantOverloaded(t, err)
			case "canceled":
				if !errors.Is(err, context.Canceled) {
					t.Fatalf("error %v, want context.Canceled", err)
				}
			}
			if q := g.queued.Load(); q != 0 {
				t.Fatalf("%d still counted in line", q)
			}
		})
	}
}

// TestGateLineInOrder: a slot given back goes to the oldest in line, and
// one clock wait times the whole line out, however long it is (a timer
// per request in line cost a fifth of the CPU with 50,000 in it).
func TestGateLineInOrder(t *testing.T) {
	clk := clocktest.New(epoch)
	g, release := fullGate(t, clk)
	served := make(chan int, 5)
	for i := range 5 {
		go func() {
			r, err := g.acquire(context.Background())
			if err != nil {
				t.Errorf("waiter %d: %v", i, err)
				served <- -1
				return
			}
			served <- i
			r()
		}()
		clocktest.Eventually(t, "the waiter to queue", func() bool { return g.queued.Load() == int64(i+1) })
	}
	// One clock wait, the line's; a timer per waiter would make five.
	clocktest.Eventually(t, "the line's timer", func() bool { return clk.Waiters() == 1 })
	if n := clk.Waiters(); n != 1 {
		t.Fatalf("%d clock waits for 5 in line, want 1", n)
	}
	release()
	for want := range 5 {
		if got := <-served; got != want {
			t.Fatalf("served waiter %d, want %d (oldest first)", got, want)
		}
	}
	clocktest.Eventually(t, "every slot given back", func() bool { return g.queued.Load() == 0 && g.inFlight() == 0 })
}

// TestGateCanceledAsServed: a caller whose context ends just as a slot is
// handed to it gives the slot back.
func TestGateCanceledAsServed(t *testing.T) {
	clk := clocktest.New(epoch)
	g, _ := fullGate(t, clk) // its slot is handed on below, as release does
	ctx, cancel := context.WithCancel(context.Background())
	got := make(chan error, 1)
	go func() {
		r, err := g.acquire(ctx)
		if err == nil {
			r() // served before it saw its context end: a caller gives it back
		}
		got <- err
	}()
	clocktest.Eventually(t, "the waiter to queue", func() bool { return g.queued.Load() == 1 })
	g.mu.Lock()
	cancel()
	time.Sleep(10 * time.Millisecond) // the waiter wakes for its context and waits for the lock
	w := g.line.Front().Value.(*waiter)
	g.leave(w)
	w.done <- nil // the held slot handed on, as release does
	g.mu.Unlock()
	if err := <-got; err != nil && !errors.Is(err, context.Canceled) {
		t.Fatalf("error %v, want context.Canceled (or, rarely, the slot)", err)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.busy != 0 {
		t.Fatalf("%d slots busy after the slot handed on was given back, want 0", g.busy)
	}
}

// TestGateLineTimesOutOldestFirst: each waits maxWait from when it joined
// the line; the one who joined later is still waiting when the first is
// shed, and is shed in its turn.
func TestGateLineTimesOutOldestFirst(t *testing.T) {
	clk := clocktest.New(epoch)
	g, release := fullGate(t, clk)
	defer release()
	got := make(chan error, 2)
	wait := func() {
		_, err := g.acquire(context.Background())
		got <- err
	}
	go wait()
	clocktest.Eventually(t, "the first to queue", func() bool { return g.queued.Load() == 1 && clk.Waiters() == 1 })
	clk.Advance(600 * time.Millisecond)
	go wait()
	clocktest.Eventually(t, "the second to queue", func() bool { return g.queued.Load() == 2 })
	clk.Advance(400 * time.Millisecond)
	wantOverloaded(t, <-got)
	clocktest.Eventually(t, "the second to be timed", func() bool { return clk.Waiters() == 1 })
	if q := g.queued.Load(); q != 1 {
		t.Fatalf("%d in line after the first waited 1s, want the second still", q)
	}
	clk.Advance(600 * time.Millisecond)
	wantOverloaded(t, <-got)
	clocktest.Eventually(t, "the reaper to stop", func() bool { return clk.Waiters() == 0 })
	if q := g.queued.Load(); q != 0 {
		t.Fatalf("%d in line, want none", q)
	}
}

// TestGateNoSlotLost: many callers, half of them giving up about when they
// join the line, leave every slot free at the end (under -race: the
// counters kept under the lock). TestGateCanceledAsServed forces the
// moment a slot is handed to one that gave up.
func TestGateNoSlotLost(t *testing.T) {
	g := newGate(4, 1000, 2*time.Second, clock.Real{})
	var wg sync.WaitGroup
	for i := range 400 {
		wg.Go(func() {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			if i%2 == 0 {
				go cancel() // gives up at about the time it queues or is served
			}
			if r, err := g.acquire(ctx); err == nil {
				r()
			}
		})
	}
	wg.Wait()
	if q, b := g.queued.Load(), g.inFlight(); q != 0 || b != 0 {
		t.Fatalf("after all: %d in line, %d slots busy, want none", q, b)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.busy != 0 || g.line.Len() != 0 {
		t.Fatalf("busy %d, line %d", g.busy, g.line.Len())
	}
}

// TestGateShedsWhoWouldWaitTooLong: once a slot is known to be held 100ms
// on average, with one slot and a 250ms wait the third in line would wait
// 300ms, so it is told at once instead of timing out in line.
func TestGateShedsWhoWouldWaitTooLong(t *testing.T) {
	clk := clocktest.New(epoch)
	g := newGate(1, 100, 250*time.Millisecond, clk)
	release, err := g.acquire(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	clk.Advance(100 * time.Millisecond)
	release() // the average is now 100ms
	hold, err := g.acquire(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer hold()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for i := range 2 { // expected waits 100ms and 200ms: they queue
		go func() { _, _ = g.acquire(ctx) }()
		clocktest.Eventually(t, "the waiters to queue", func() bool { return g.queued.Load() == int64(i+1) })
	}
	_, err = g.acquire(ctx)
	if d := wantOverloaded(t, err); d != 300*time.Millisecond {
		// two in line and this one turned away, 100ms each on one slot
		t.Fatalf("hint %s, want 300ms", d)
	}
}

// TestRetryHintsStagger: requests shed together are told to come back
// one average service time (over the slots) apart, after the line (at most
// the queue wait), within the hint bounds; once that time has passed,
// hints start from the line again.
func TestRetryHintsStagger(t *testing.T) {
	clk := clocktest.New(epoch)
	g := newGate(2, 0, time.Second, clk)
	g.serviceNanos.Store(int64(time.Second)) // 500ms per request over two slots
	var hints []time.Duration
	for range 4 {
		hints = append(hints, wantOverloaded(t, g.shed()))
	}
	want := []time.Duration{500 * time.Millisecond, time.Second, 1500 * time.Millisecond, 2 * time.Second}
	for i := range want {
		if hints[i] != want[i] {
			t.Fatalf("hints %v, want %v", hints, want)
		}
	}
	clk.Advance(time.Minute)
	g.queued.Store(1)
	if got := wantOverloaded(t, g.shed()); got != time.Second { // one in line, then this one
		t.Fatalf("hint after the schedule passed = %s, want 1s", got)
	}
	// A line longer than the wait delays the retry by the wait only:
	// nobody stays in it longer.
	clk.Advance(time.Minute)
	g.queued.Store(30)
	if got := wantOverloaded(t, g.shed()); got != 1500*time.Millisecond { // the 1s wait, then this one
		t.Fatalf("hint behind a line of 30 = %s, want 1.5s", got)
	}
	g.queued.Store(0)
	g.serviceNanos.Store(int64(time.Hour))
	if got := wantOverloaded(t, g.shed()); got != maxRetryHint {
		t.Fatalf("hint %s, want the cap %s", got, maxRetryHint)
	}
	g.serviceNanos.Store(0)
	clk.Advance(2 * maxRetryHint)
	if got := wantOverloaded(t, g.shed()); got != minRetryHint {
		t.Fatalf("hint with nothing measured = %s, want the floor %s", got, minRetryHint)
	}
}

func TestRetryAfterSeconds(t *testing.T) {
	for d, want := range map[time.Duration]string{
		0: "1", 250 * time.Millisecond: "1", time.Second: "1", 1001 * time.Millisecond: "2", time.Minute: "60",
	} {
		if got := retryAfterSeconds(d); got != want {
			t.Errorf("retryAfterSeconds(%s) = %s, want %s", d, got, want)
		}
	}
}

// TestGateMeasuresItsPace: while every slot stays busy, the pace of
// requests finishing is measured in windows, and the best of the last ten
// seconds paces the line and the hints: a slower stretch (the CPUs busy
// turning a crowd away) does not stretch them, until it is all there is.
func TestGateMeasuresItsPace(t *testing.T) {
	clk := clocktest.New(epoch)
	g := newGate(2, 10, time.Second, clk)
	ctx := context.Background()
	held := make([]func(), 0, 2)
	for range 2 {
		r, _ := g.acquire(ctx)
		held = append(held, r)
	}
	// run finishes n requests gap apart, a new one taking each slot.
	run := func(n int, gap time.Duration) {
		for range n {
			clk.Advance(gap)
			held[0]()
			r, err := g.acquire(ctx)
			if err != nil {
				t.Fatal(err)
			}
			held = append(held[1:], r)
		}
	}
	if got := g.expectedWait(10); got != 0 {
		t.Fatalf("expected wait before anything finished = %s, want 0", got)
	}
	run(100, 2*time.Millisecond)
	if got := g.expectedWait(10); got != 20*time.Millisecond {
		t.Fatalf("expected wait of the 10th at a 2ms pace = %s, want 20ms", got)
	}
	run(200, 10*time.Millisecond) // 2 s slower
	if got := g.perRequest(); got != 2*time.Millisecond {
		t.Fatalf("per request %s after a slow stretch, want the best pace, 2ms", got)
	}
	run(1000, 10*time.Millisecond) // 10 s more: the fast windows are forgotten
	if got := g.perRequest(); got != 10*time.Millisecond {
		t.Fatalf("per request %s after ten slow seconds, want 10ms", got)
	}
	// A window with a slot free measures nothing.
	held[0]()
	clk.Advance(time.Second)
	held[1]()
	if got := g.perRequest(); got != 10*time.Millisecond {
		t.Fatalf("per request %s after unsaturated finishes, want 10ms kept", got)
	}
}

// TestRetryHintsFollowThePace: the callers already asked back are counted,
// not timed, so when the pace measured improves (a flood's first
// measurements are its worst), they fall due at the new pace and the next
// caller is asked back that much sooner, instead of after everyone booked
// at the old pace; as time passes they fall due at the pace of the moment.
func TestRetryHintsFollowThePace(t *testing.T) {
	clk := clocktest.New(epoch)
	g := newGate(2, 0, time.Second, clk)
	g.serviceNanos.Store(int64(2 * time.Millisecond)) // 1ms per request over two slots
	var last time.Duration
	for range 10_000 {
		last = wantOverloaded(t, g.shed())
	}
	if last != 10*time.Second {
		t.Fatalf("10,000th hint at a 1ms pace = %s, want 10s", last)
	}
	g.serviceNanos.Store(int64(200 * time.Microsecond)) // now 100µs per request
	if got := wantOverloaded(t, g.shed()); got != 1000100*time.Microsecond {
		t.Fatalf("hint once the pace is 100µs = %s, want 10,001 × 100µs", got)
	}
	clk.Advance(600 * time.Millisecond) // 6,000 of them fall due
	if got := wantOverloaded(t, g.shed()); got != 400200*time.Microsecond {
		t.Fatalf("hint 600ms later = %s, want 4,002 × 100µs", got)
	}
	clk.Advance(time.Second) // all due: the line and the minimum again
	if got := wantOverloaded(t, g.shed()); got != minRetryHint {
		t.Fatalf("hint with nobody booked = %s, want the minimum %s", got, minRetryHint)
	}
}

// TestGatePaceBound: for the retry hints, a pace slower than maxPace (a
// flood's, while it holds the CPUs) is cut to it; a faster one, or a bound
// not known yet (zero), is used as measured. The line's expected wait
// keeps the pace measured.
func TestGatePaceBound(t *testing.T) {
	for _, tc := range []struct {
		name           string
		service, bound time.Duration // a slot's hold time over two slots; maxPace
		want           time.Duration // per request
	}{
		{"slower than the bound", 20 * time.Millisecond, time.Millisecond, time.Millisecond},
		{"faster than the bound", time.Millisecond, 10 * time.Millisecond, 500 * time.Microsecond},
		{"no bound yet", 20 * time.Millisecond, 0, 10 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := newGate(2, 0, time.Second, clocktest.New(epoch))
			g.serviceNanos.Store(int64(tc.service))
			g.maxPace = func() time.Duration { return tc.bound }
			if got, want := g.perRequest(), tc.service/2; got != want {
				t.Fatalf("per request for the line %s, want %s as measured", got, want)
			}
			var last time.Duration
			for range 1000 {
				last = wantOverloaded(t, g.shed())
			}
			if want := 1000 * tc.want; last != min(want, maxRetryHint) && !(want < minRetryHint && last == minRetryHint) {
				t.Fatalf("1,000th hint %s, want 1,000 × %s", last, tc.want)
			}
		})
	}
}
