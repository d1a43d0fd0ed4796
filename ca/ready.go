package ca

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// pingEvery bounds how often Ready probes a store that failed a write.
const pingEvery = time.Second

// storeHealth remembers the last failed store write (a full disk, a
// read-only file system) so that readiness reports it, until a write
// succeeds again: the next issuance, or Ready's own probe.
type storeHealth struct {
	mu       sync.Mutex
	err      error
	lastPing time.Time
}

// observe records the outcome of a store write and returns err unchanged.
// A context error says nothing about the store.
func (h *storeHealth) observe(err error) error {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	h.mu.Lock()
	h.err = err
	h.mu.Unlock()
	return err
}

// Ready is the CA's readiness at now: the signing intermediate is valid,
// and the store can record (after a failed write, the store is probed with
// Ping at most once per second, so a CA taken out of service by its own
// readiness recovers without traffic when the disk has room again).
func (a *Authority) Ready(ctx context.Context) error {
	now := a.cfg.Clock.Now()
	if sc := a.active.Load(); sc == nil || !now.Before(sc.cert.NotAfter) {
		return errors.New("ca: signing intermediate expired")
	}
	h := &a.health
	h.mu.Lock()
	failed, probe := h.err, h.err != nil && now.Sub(h.lastPing) >= pingEvery
	if probe {
		h.lastPing = now
	}
	h.mu.Unlock()
	if failed == nil {
		return nil
	}
	if probe { // outside the lock: a slow disk must not stall other probes
		err := a.cfg.Store.Ping(ctx)
		if err == nil {
			a.cfg.Logger.Info("store records again after a failed write", "err_before", failed)
		}
		if !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) {
			h.mu.Lock()
			h.err = err
			h.mu.Unlock()
			failed = err
		}
		if err == nil {
			return nil
		}
	}
	return fmt.Errorf("ca: the store cannot record: %w", failed)
}
