package pgstore_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/meshca/meshca/ca/store"
	"github.com/meshca/meshca/ca/store/pgstore"
	"github.com/meshca/meshca/internal/clock/clocktest"
	"github.com/meshca/meshca/internal/pgenv"
	"github.com/meshca/meshca/internal/storetest"
)

type commits struct {
	mu    sync.Mutex
	sizes []int
}

func (c *commits) Committed(records int, _ time.Duration) {
	c.mu.Lock()
	c.sizes = append(c.sizes, records)
	c.mu.Unlock()
}

// TestGroupCommit: the calls queued while commits are under way are written
// together by the next, in one statement; a duplicate serial, in the batch
// or already stored, fails only its own call.
func TestGroupCommit(t *testing.T) {
	ctx := context.Background()
	dsn := pgenv.Get(t).NewDatabase(t)
	var m commits
	s := open(t, dsn, pgstore.Options{Metrics: &m})
	if err := s.RecordIssuance(ctx, storetest.Issuance("ff", idA, 1, 10)); err != nil {
		t.Fatal(err)
	}

	// Another session locks the table: the next commit waits for it.
	locker, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer locker.Close(ctx)
	watcher, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer watcher.Close(ctx)
	tx, err := locker.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "LOCK TABLE meshca_issuances IN EXCLUSIVE MODE"); err != nil {
		t.Fatal(err)
	}
	errs := map[string]chan error{}
	record := func(key, serial string) {
		ch := make(chan error, 1)
		errs[key] = ch
		go func() { ch <- s.RecordIssuance(ctx, storetest.Issuance(serial, idA, 1, 10)) }()
	}
	// Both committers take a record and wait.
	record("first", "01")
	clocktest.Eventually(t, "a committer waiting for the lock", func() bool { return blocked(t, watcher, locker) == 1 })
	record("second", "02")
	clocktest.Eventually(t, "both committers waiting for the lock", func() bool { return blocked(t, watcher, locker) == 2 })
	const n = 50
	for i := range n {
		record(fmt.Sprint(i), fmt.Sprintf("1%03x", i))
	}
	record("same as another in the batch", "1000") // as i = 0
	record("already stored", "ff")
	clocktest.Eventually(t, "the others queued", func() bool { return pgstore.Queued(s) == n+2 })
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}

	failed := map[string]error{}
	for key, ch := range errs {
		if err := <-ch; err != nil {
			failed[key] = err
		}
	}
	// Of the two calls with serial 1000, whichever the batch took second
	// fails.
	dup, dupFailed := failed["same as another in the batch"]
	if !dupFailed {
		dup, dupFailed = failed["0"]
		delete(failed, "0")
	}
	delete(failed, "same as another in the batch")
	if !dupFailed {
		t.Error("both calls with serial 1000 succeeded")
	}
	stored := failed["already stored"]
	delete(failed, "already stored")
	for _, err := range []error{dup, stored} {
		if err == nil || errors.Is(err, store.ErrUnavailable) {
			t.Errorf("%v, want a duplicate serial error", err)
		}
	}
	for key, err := range failed {
		t.Errorf("%s: %v", key, err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	// ff alone, then 01 and 02 each alone, and the rest together (the
	// last three in either order, once the lock is released).
	slices.Sort(m.sizes)
	if want := []int{1, 1, 1, n}; !slices.Equal(m.sizes, want) {
		t.Errorf("commits of %v records, want %v", m.sizes, want)
	}
	all, err := s.Issuances(ctx, store.IssuanceFilter{})
	if err != nil || len(all) != n+3 {
		t.Errorf("%d records stored (%v), want %d", len(all), err, n+3)
	}
}

// blocked is how many sessions wait for a lock the locker holds. It asks
// outside the locker's transaction, which would see pg_stat_activity as
// it was when first read.
func blocked(t *testing.T, watcher, locker *pgx.Conn) int {
	var n int
	err := watcher.QueryRow(context.Background(), `SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))`,
		locker.PgConn().PID()).Scan(&n)
	if err != nil {
		t.Fatal(err)
	}
	return n
}
