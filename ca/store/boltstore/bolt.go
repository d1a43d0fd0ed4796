// Package boltstore implements store.Store on a single bbolt file.
//
// Everything the CA keeps (its key material and rotation state, the issuance
// log, the revocation deny-list and join tokens) lives in one file, locked
// against other processes while open. Every write is one bbolt transaction,
// which is fsynced before the call returns, so a write that returned
// survives a crash.
//
// Issuance records are written by group commit: concurrent RecordIssuance
// calls that arrive while an fsync is in progress are written together in the
// next transaction, so a busy CA pays one fsync for many certificates, while a
// lone call is written at once, without waiting for company.
package boltstore

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meshca/meshca/ca/store"
	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// ErrClosed is returned by every method called after Close.
var ErrClosed = errors.New("boltstore: store is closed")

const (
	defaultTimeout  = time.Second
	defaultMaxBatch = 1000
)

// Options configures Open. The zero value gives the defaults.
type Options struct {
	// Timeout is how long Open waits for the lock on the data file, held
	// by any other process that has it open. Zero or less means 1s.
	Timeout time.Duration
	// MaxBatch caps the number of issuance records written by one group
	// commit. Zero or less means 1000.
	MaxBatch int
	// Logger receives warnings and errors. Nil discards them.
	Logger *slog.Logger
	// Metrics observes the group commits. Nil discards the observations.
	Metrics Metrics
}

// Metrics observes the store's work.
type Metrics interface {
	// Committed is called after each group commit that was written, with
	// the number of issuance records it stored (records that failed on
	// their own, such as duplicates, are not counted) and the time the
	// transaction took, fsync included.
	Committed(records int, took time.Duration)
}

type nopMetrics struct{}

func (nopMetrics) Committed(int, time.Duration) {}

// Store is a store.Store kept in one bbolt file. It is safe for concurrent
// use.
type Store struct {
	db       *bolt.DB
	log      *slog.Logger
	maxBatch int

	// queue feeds the committer goroutine (see committer).
	queue chan *pending
	// done is closed by Close to stop the committer, which closes stopped
	// when it has returned.
	done    chan struct{}
	stopped chan struct{}

	closed    atomic.Bool
	closeOnce sync.Once
	closeErr  error

	metrics Metrics
}

var _ store.Store = (*Store)(nil)

// Open opens the store in the file at path, creating the file (mode 0600)
// and its parent directory (mode 0700) if missing. It fails after
// opts.Timeout if another process has the file open.
func Open(path string, opts Options) (*Store, error) {
	if opts.Timeout <= 0 {
		opts.Timeout = defaultTimeout
	}
	if opts.MaxBatch <= 0 {
		opts.MaxBatch = defaultMaxBatch
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Metrics == nil {
		opts.Metrics = nopMetrics{}
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("boltstore: %w", err)
	}
	_, err := os.Stat(path)
	created := errors.Is(err, fs.ErrNotExist)
	// NoFreelistSync (as etcd runs bbolt) saves writing the freelist on
	// every commit; Open rebuilds it by scanning the file instead.
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: opts.Timeout, NoFreelistSync: true, FreelistType: bolt.FreelistMapType})
	if errors.Is(err, berrors.ErrTimeout) {
		return nil, fmt.Errorf("boltstore: data file %s is in use by another process (lock not acquired within %v)", path, opts.Timeout)
	}
	if err != nil {
		return nil, fmt.Errorf("boltstore: open %s: %w", path, err)
	}
	if err := prepare(db, path, opts.Logger); err != nil {
		_ = db.Close() // the error above is the one to report
		return nil, err
	}
	if created {
		// bbolt syncs the file but not the directory entry of a new one.
		if err := syncDir(dir); err != nil {
			_ = db.Close() // the error above is the one to report
			return nil, fmt.Errorf("boltstore: sync %s: %w", dir, err)
		}
	}
	s := &Store{
		db:       db,
		log:      opts.Logger,
		maxBatch: opts.MaxBatch,
		queue:    make(chan *pending, opts.MaxBatch),
		done:     make(chan struct{}),
		stopped:  make(chan struct{}),
		metrics:  opts.Metrics,
	}
	go s.committer()
	return s, nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer func() { _ = d.Close() }() // read only: Sync reports what matters
	return d.Sync()
}

// Close stops the committer, failing RecordIssuance calls still queued, and
// closes the file. Calling it again returns the first call's result.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		s.closed.Store(true)
		close(s.done)
		<-s.stopped
		if err := s.db.Close(); err != nil {
			s.closeErr = fmt.Errorf("boltstore: close: %w", err)
		}
	})
	return s.closeErr
}

// enter is called first by every method.
func (s *Store) enter(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("boltstore: %w", err)
	}
	if s.closed.Load() {
		return ErrClosed
	}
	return nil
}

// wrap prefixes an error returned by a transaction, reporting a use racing
// with Close as ErrClosed.
func wrap(op string, err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, berrors.ErrDatabaseNotOpen):
		return ErrClosed
	}
	return fmt.Errorf("boltstore: %s: %w", op, err)
}

// keyHeartbeat in bucketMeta holds the time of the last Ping.
var keyHeartbeat = []byte("heartbeat")

// pingProbeBytes is what Ping writes to a new file beside the data file:
// bbolt reuses freed pages in place, so a heartbeat transaction alone can
// succeed on a full disk that cannot take one more group commit; a file
// system that cannot take this much new data cannot grow the data file.
const pingProbeBytes = 64 << 10

// Ping implements store.Store: it writes, syncs and removes a 64 KiB probe
// file beside the data file, then stores the current time under the meta
// bucket in one synced transaction.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.enter(ctx); err != nil {
		return err
	}
	if err := probe(filepath.Dir(s.db.Path())); err != nil {
		return fmt.Errorf("boltstore: ping: %w", err)
	}
	var buf [8]byte
	binary.BigEndian.PutUint64(buf[:], uint64(time.Now().UnixNano()))
	return wrap("ping", s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketMeta).Put(keyHeartbeat, buf[:])
	}))
}

// probe writes pingProbeBytes to a new file in dir, syncs and removes it.
func probe(dir string) error {
	f, err := os.CreateTemp(dir, ".meshca-ping-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	_, err = f.Write(make([]byte, pingProbeBytes))
	if err == nil {
		err = f.Sync()
	}
	return errors.Join(err, f.Close())
}

// Check verifies the file's consistency (every page reachable once, no
// double frees, every bucket readable) in one read transaction, and
// returns the problems found joined, or nil.
func (s *Store) Check(ctx context.Context) error {
	if err := s.enter(ctx); err != nil {
		return err
	}
	var errs []error
	err := s.db.View(func(tx *bolt.Tx) error {
		for e := range tx.Check() {
			errs = append(errs, e)
		}
		return nil
	})
	return wrap("check", errors.Join(append(errs, err)...))
}
