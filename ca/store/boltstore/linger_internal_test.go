package boltstore

import (
	"testing"
	"time"
)

// TestLinger: while the CPUs are busy, a batch waits for more records, up
// to the gap after each and the delay in all; with idle CPUs it goes at
// once. Bounds are loose: a slow machine only makes a wait longer, never
// a timer fire early.
func TestLinger(t *testing.T) {
	const gap = 200 * time.Millisecond
	for _, tc := range []struct {
		name  string
		busy  bool
		delay time.Duration
		every time.Duration // between records sent while lingering; 0: none
		sent  int
		// want: the batch's length, and the least and most time linger
		// may take.
		want     int
		min, max time.Duration
	}{
		{name: "idle CPUs: at once", busy: false, delay: time.Second, every: 20 * time.Millisecond, sent: 3, want: 1, max: 150 * time.Millisecond},
		{name: "no delay: at once", busy: true, delay: 0, every: 20 * time.Millisecond, sent: 3, want: 1, max: 150 * time.Millisecond},
		{name: "busy, nothing comes: one gap", busy: true, delay: 5 * time.Second, want: 1, min: gap, max: 4 * time.Second},
		{name: "busy: records within the gap join, then one gap", busy: true, delay: 5 * time.Second, every: 20 * time.Millisecond, sent: 5, want: 6, min: 100*time.Millisecond + gap, max: 4 * time.Second},
		{name: "busy, records keep coming: the delay", busy: true, delay: 600 * time.Millisecond, every: 20 * time.Millisecond, sent: 1000, min: 600 * time.Millisecond, max: 3 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := &Store{queue: make(chan *pending, 2000), maxBatch: 2000, done: make(chan struct{})}
			l := newLingerer(tc.delay)
			l.gap = gap
			l.busy = func() bool { return tc.busy }
			stop := make(chan struct{})
			defer close(stop)
			go func() {
				for range tc.sent {
					select {
					case <-stop:
						return
					case <-time.After(tc.every):
					}
					s.queue <- &pending{}
				}
			}()
			start := time.Now()
			batch := l.linger(s, []*pending{{}})
			took := time.Since(start)
			if tc.want > 0 && len(batch) != tc.want {
				t.Errorf("batch of %d, want %d", len(batch), tc.want)
			}
			if tc.want == 0 && len(batch) < 2 {
				t.Errorf("batch of %d, want the records sent during the delay", len(batch))
			}
			if took < tc.min || took > tc.max {
				t.Errorf("lingered %s, want %s to %s", took, tc.min, tc.max)
			}
		})
	}
}
