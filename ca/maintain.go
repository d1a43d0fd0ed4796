package ca

import (
	"context"
	"time"
)

// Run calls Rotate whenever it is due, and Prune hourly, until ctx ends. A
// failed rotation is retried after a minute.
func (a *Authority) Run(ctx context.Context) error {
	var lastPrune time.Time
	for {
		if now := a.cfg.Clock.Now(); now.Sub(lastPrune) >= pruneEvery {
			if n, err := a.Prune(ctx); err != nil {
				a.cfg.Logger.Error("pruning issuance records failed", "err", err)
			} else if n > 0 {
				a.cfg.Logger.Info("pruned expired issuance records", "count", n)
			}
			lastPrune = now
		}
		wait := a.NextRotation().Sub(a.cfg.Clock.Now())
		wait = max(wait, time.Second)
		wait = min(wait, pruneEvery) // re-check and prune regularly anyway
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-a.cfg.Clock.After(wait):
		}
		if err := a.Rotate(ctx); err != nil {
			a.cfg.Logger.Error("rotation failed", "err", err)
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-a.cfg.Clock.After(time.Minute):
			}
		}
	}
}

// Prune deletes issuance records of certificates expired for longer than
// Config.Retention and returns how many went.
func (a *Authority) Prune(ctx context.Context) (int, error) {
	return a.cfg.Store.PruneIssuances(ctx, a.cfg.Clock.Now().Add(-a.cfg.Retention))
}
