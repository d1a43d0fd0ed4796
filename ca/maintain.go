package ca

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/meshca/meshca/ca/store"
)

// Bounds of the wait before a failed rotation is retried: it doubles from
// retryFirst with each failure up to retryMax.
const (
	retryFirst = 10 * time.Second
	retryMax   = time.Minute
)

// sharedEvery bounds Run's wait when several replicas share the store
// (Config.Leader set): another replica's root rotation step, or this one
// becoming the leader, is taken up within it.
const sharedEvery = 30 * time.Second

// Run is the CA's maintenance loop: it calls Rotate whenever it is due and
// Prune hourly, and logs Warnings daily, until ctx ends. A failed rotation
// (a parent such as Vault unreachable) is retried with backoff, from 10 s
// up to a minute apart, and reported through Metrics.RotationFailing.
func (a *Authority) Run(ctx context.Context) error {
	var (
		lastPrune, lastWarn time.Time
		retry               time.Duration
	)
	for {
		if now := a.cfg.Clock.Now(); now.Sub(lastWarn) >= warnEvery {
			for _, w := range a.Warnings() {
				a.cfg.Logger.Warn(w)
			}
			lastWarn = now
		}
		if _, leading := a.leading(); leading && a.cfg.Clock.Now().Sub(lastPrune) >= pruneEvery {
			now := a.cfg.Clock.Now()
			p, err := a.Prune(ctx)
			if err != nil {
				a.cfg.Logger.Error("pruning failed", "err", err)
			}
			if p != (Pruned{}) {
				a.cfg.Logger.Info("pruned expired records", "issuances", p.Issuances, "join_tokens", p.JoinTokens, "revocations", p.Revocations)
			}
			lastPrune = now
		}
		// Re-check and prune regularly anyway; a zero NextRotation means
		// there is nothing to rotate (direct mode).
		wait := pruneEvery
		if next := a.NextRotation(); !next.IsZero() {
			wait = min(max(next.Sub(a.cfg.Clock.Now()), time.Second), pruneEvery)
		}
		if a.cfg.Leader != nil || a.cfg.Replica != "" {
			wait = min(wait, sharedEvery)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-a.cfg.Clock.After(wait):
		}
		err := a.Rotate(ctx)
		if errors.Is(err, store.ErrConflict) {
			// Another replica saved first: not a failure; look again
			// soon at the state it wrote.
			err = a.Rotate(ctx)
		}
		a.cfg.Metrics.RotationFailing(err != nil)
		if err == nil {
			retry = 0
			continue
		}
		retry = min(max(2*retry, retryFirst), retryMax)
		a.cfg.Logger.Error("rotation failed", "err", err, "retry_in", retry)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-a.cfg.Clock.After(retry):
		}
	}
}

// Pruned counts what one Prune deleted.
type Pruned struct {
	Issuances, JoinTokens, Revocations int
}

// Prune deletes what no longer serves: issuance records of certificates
// expired for longer than Config.Retention; join tokens expired for as long
// (kept so that a late replay of a used token is still logged as a replay,
// with who used it first); and
// deny-list entries past their ExpiresAt (no certificate they cover is still
// valid). It tries all three and reports every failure.
func (a *Authority) Prune(ctx context.Context) (Pruned, error) {
	now := a.cfg.Clock.Now()
	var (
		p          Pruned
		e1, e2, e3 error
	)
	p.Issuances, e1 = a.cfg.Store.PruneIssuances(ctx, now.Add(-a.cfg.Retention))
	p.JoinTokens, e2 = a.cfg.Store.PruneJoinTokens(ctx, now.Add(-a.cfg.Retention))
	p.Revocations, e3 = a.cfg.Store.PruneRevocations(ctx, now)
	if err := errors.Join(e1, e2, e3); err != nil {
		return p, fmt.Errorf("ca: prune: %w", err)
	}
	return p, nil
}
