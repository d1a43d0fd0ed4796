// Package pgstore implements store.Store on PostgreSQL, so that several
// meshca replicas share one CA state: the issuance log, the revocation
// deny-list, join tokens and the CA's keys and rotation state.
//
// Every guarantee of the store.Store contract holds across processes that
// share the database, because each is one statement or one transaction on
// the server, never a check in one process followed by a write:
//
//   - ConsumeJoinToken is one UPDATE ... WHERE used_at_ns IS NULL AND
//     expires_at_ns > now RETURNING: of any number of replicas racing for a
//     token, the row lock lets exactly one update it.
//   - SaveCAState is an INSERT ... ON CONFLICT DO NOTHING (version 0) or an
//     UPDATE ... WHERE version = $old: compare-and-swap on the row.
//   - Issuances reads the records and their deny-list entries in one
//     statement, hence one snapshot.
//   - RecordIssuance refuses a serial already stored by any replica (the
//     primary key).
//
// Concurrent RecordIssuance calls are written together (group commit): a
// committer takes every record queued while the previous batch was being
// written and inserts them with one multi-row INSERT ... ON CONFLICT DO
// NOTHING RETURNING serial, one round trip and one commit (one WAL flush)
// for the batch; a duplicate serial fails only its own caller.
//
// Open connects (pgxpool, so lost connections are replaced as the server
// comes back), then applies the embedded schema migrations under a
// PostgreSQL advisory lock, so replicas starting together migrate once; a
// database whose schema is newer than this build is refused with
// ErrSchemaTooNew. Errors from a server that cannot be reached, is shutting
// down or has no space wrap store.ErrUnavailable; the API edge maps them to
// Unavailable, and Ping (readiness) fails while they last.
//
// Durability is PostgreSQL's: a write returns once its transaction
// committed, which survives a crash with the server's defaults (fsync on,
// synchronous_commit on). The DSN's password is never logged.
package pgstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/meshca/meshca/ca/store"
	"github.com/meshca/meshca/internal/clock"
)

// ErrClosed is returned by every method called after Close.
var ErrClosed = errors.New("pgstore: store is closed")

// ErrSchemaTooNew is Open's error for a database migrated by a newer meshca.
var ErrSchemaTooNew = errors.New("pgstore: database schema is newer than this meshca")

const (
	defaultMaxBatch       = 1000
	defaultCommitters     = 2
	defaultConnectTimeout = 5 * time.Second
	defaultCommitTimeout  = 10 * time.Second
	// maxBatchRecords bounds a batch: each record is five parameters of
	// the INSERT, and PostgreSQL takes at most 65535.
	maxBatchRecords = 10000
)

// Options configures Open. The zero value gives the defaults.
type Options struct {
	// Replica names this process in the heartbeat table (Ping). Default
	// the host name.
	Replica string
	// MaxBatch caps the issuance records written by one group commit.
	// Zero or less means 1000; at most 10000.
	MaxBatch int
	// Committers is how many group commits may be under way at once, each
	// on a connection of its own: while one waits for the server, the
	// next gathers the records that arrive. Zero or less means 2.
	Committers int
	// ConnectTimeout bounds each connection attempt when the DSN sets no
	// connect_timeout. Zero or less means 5s.
	ConnectTimeout time.Duration
	// CommitTimeout bounds one group commit, which runs for many callers
	// and so under none of their contexts. Zero or less means 10s.
	CommitTimeout time.Duration
	// Logger receives the connection target (never its password), schema
	// migrations and failed group commits. Nil discards them.
	Logger *slog.Logger
	// Metrics observes group commits. Nil discards the observations.
	Metrics Metrics
	// Clock times the heartbeat and the commits. Default the wall clock.
	Clock clock.Clock
}

// Metrics observes the store's work.
type Metrics interface {
	// Committed is called after each group commit that was written, with
	// the number of issuance records it stored (duplicates not counted)
	// and the time it took.
	Committed(records int, took time.Duration)
}

type nopMetrics struct{}

func (nopMetrics) Committed(int, time.Duration) {}

// Store is a store.Store in a PostgreSQL database. It is safe for
// concurrent use, and any number of Stores, in any number of processes,
// may share one database.
type Store struct {
	pool          *pgxpool.Pool
	target        string
	log           *slog.Logger
	metrics       Metrics
	clock         clock.Clock
	replica       string
	maxBatch      int
	commitTimeout time.Duration

	// queue feeds the committers (see committer); done is closed by
	// Close, and stopped once every committer has returned.
	queue         chan *pending
	done, stopped chan struct{}
	committers    sync.WaitGroup

	closed    atomic.Bool
	closeOnce sync.Once
}

var _ store.Store = (*Store)(nil)

// Open connects to the database dsn names (a postgres:// URL or key=value
// pairs, as libpq takes them; pool settings such as pool_max_conns too),
// migrates its schema to this build's version and starts the committer.
// Errors say what failed (the address, the authentication, the schema)
// without the password.
func Open(ctx context.Context, dsn string, opts Options) (*Store, error) {
	if opts.MaxBatch <= 0 {
		opts.MaxBatch = defaultMaxBatch
	}
	opts.MaxBatch = min(opts.MaxBatch, maxBatchRecords)
	if opts.Committers <= 0 {
		opts.Committers = defaultCommitters
	}
	if opts.ConnectTimeout <= 0 {
		opts.ConnectTimeout = defaultConnectTimeout
	}
	if opts.CommitTimeout <= 0 {
		opts.CommitTimeout = defaultCommitTimeout
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Metrics == nil {
		opts.Metrics = nopMetrics{}
	}
	opts.Clock = clock.OrReal(opts.Clock)
	if opts.Replica == "" {
		opts.Replica, _ = os.Hostname() // "" is a name too
	}
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		// pgx's parse errors carry the DSN with its password masked.
		return nil, fmt.Errorf("pgstore: %w", err)
	}
	cc := cfg.ConnConfig
	if cc.ConnectTimeout <= 0 {
		cc.ConnectTimeout = opts.ConnectTimeout
	}
	if _, ok := cc.RuntimeParams["application_name"]; !ok {
		cc.RuntimeParams["application_name"] = "meshca"
	}
	target := describe(cc)
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("pgstore: %s: %w", target, err)
	}
	before, after, err := migrate(ctx, pool)
	if err != nil {
		pool.Close()
		if errors.Is(err, ErrSchemaTooNew) {
			return nil, fmt.Errorf("%w (%s)", err, target)
		}
		return nil, wrap("open "+target, err)
	}
	if before != after {
		opts.Logger.Info("PostgreSQL schema migrated", "target", target, "from_version", before, "to_version", after)
	}
	opts.Logger.Info("PostgreSQL store open", "target", target, "schema_version", after, "max_conns", cfg.MaxConns)
	s := &Store{
		pool:          pool,
		target:        target,
		log:           opts.Logger,
		metrics:       opts.Metrics,
		clock:         opts.Clock,
		replica:       opts.Replica,
		maxBatch:      opts.MaxBatch,
		commitTimeout: opts.CommitTimeout,
		queue:         make(chan *pending, opts.MaxBatch),
		done:          make(chan struct{}),
		stopped:       make(chan struct{}),
	}
	for range opts.Committers {
		s.committers.Go(s.committer)
	}
	go func() {
		s.committers.Wait()
		close(s.stopped)
	}()
	return s, nil
}

// Target names the database the store uses, for logs and errors: user,
// host, port and database, never the password.
func (s *Store) Target() string { return s.target }

// describe is Target for a connection configuration.
func describe(cc *pgx.ConnConfig) string {
	return fmt.Sprintf("postgres user=%s host=%s port=%d database=%s", cc.User, cc.Host, cc.Port, cc.Database)
}

// Close stops the committers, failing RecordIssuance calls still queued,
// and closes the connections. Calling it again does nothing.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		s.closed.Store(true)
		close(s.done)
		<-s.stopped
		s.pool.Close()
	})
	return nil
}

// enter is called first by every method.
func (s *Store) enter(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("pgstore: %w", err)
	}
	if s.closed.Load() {
		return ErrClosed
	}
	return nil
}

// wrap prefixes an error from the database with the operation, and marks
// it store.ErrUnavailable when retrying later may succeed (see
// unavailable).
func wrap(op string, err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("pgstore: %s: %w", op, err)
	case unavailable(err):
		return fmt.Errorf("pgstore: %s: %w: %w", op, store.ErrUnavailable, err)
	}
	return fmt.Errorf("pgstore: %s: %w", op, err)
}

// unavailable reports whether err means that the database cannot serve
// now rather than that the request was wrong: a connection that failed or
// was lost (every error without a server's SQLSTATE comes from the
// connection), or a server error of a transient class — connection
// exceptions (08), insufficient resources (53, a full disk among them),
// operator intervention (57: shutting down, not accepting connections yet),
// system errors (58), transaction rollbacks (40: serialization, deadlock),
// and a read-only server (25006, a standby after failover). An
// authentication failure is not: it needs an operator, not a retry.
func unavailable(err error) bool {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch pgErr.Code[:2] {
		case "08", "53", "57", "58", "40":
			return true
		}
		return pgErr.Code == "25006"
	}
	var netErr net.Error
	return errors.As(err, &netErr) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.As(err, new(*pgconn.ConnectError)) || pgconn.Timeout(err) || pgconn.SafeToRetry(err) ||
		strings.Contains(err.Error(), "conn closed") || strings.Contains(err.Error(), "closed pool")
}

// Ping implements store.Store: it upserts this replica's row in the
// heartbeat table, a write the server commits durably, so it fails while
// the database cannot record.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.enter(ctx); err != nil {
		return err
	}
	_, err := s.pool.Exec(ctx, `INSERT INTO meshca_heartbeats (replica, pinged_at) VALUES ($1, $2)
		ON CONFLICT (replica) DO UPDATE SET pinged_at = excluded.pinged_at`, s.replica, s.clock.Now())
	return s.wrap("ping", err)
}

// wrap is the package's wrap, reporting a use racing with Close as
// ErrClosed.
func (s *Store) wrap(op string, err error) error {
	if err != nil && s.closed.Load() {
		return ErrClosed
	}
	return wrap(op, err)
}
