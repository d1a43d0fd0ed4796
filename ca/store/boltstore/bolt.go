// Package boltstore implements store.Store on a bbolt file and, beside it,
// an append-only issuance journal.
//
// Everything the CA keeps (its key material and rotation state, the issuance
// log, the revocation deny-list and join tokens) lives in the data file
// (meshca.db), locked against other processes while open. Every write but
// an issuance record is one bbolt transaction, fsynced before the call
// returns.
//
// Issuance records, the one write on the request path, go first to the
// journal (meshca.journal in the same directory, mode 0600, used only while
// the data file's lock is held): concurrent RecordIssuance calls are
// written together (group commit) as one checksummed frame with one write
// and one fdatasync, and each call returns only once its record is on disk.
// A lone call is written at once, without waiting for company; while the
// process is CPU-bound, a batch waits up to CommitDelay for more records,
// since an fdatasync costs as much CPU for one record as for many. Reads see
// journaled records exactly as if they were in the data file. A checkpoint,
// off the request path, copies them into the data file in large sorted
// transactions (every CheckpointRecords records or CheckpointInterval, for
// PruneIssuances, and at Close) and then drops the journal that held them;
// Open replays whatever a crash left in the journal before serving. Each
// journal file's space is written as zeros when it is created, off the
// request path, so that a commit's fdatasync has no growth of the file to
// commit (see minPrealloc). The
// data file's format is unchanged: after a clean Close it holds every
// record and the journal is empty.
//
// The data directory thus holds two files, meshca.db and meshca.journal
// (and meshca.journal.next while a checkpoint runs); a copy of the CA's
// state is a copy of all of them taken while the CA is stopped.
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
	defaultTimeout            = time.Second
	defaultMaxBatch           = 1000
	defaultCheckpointRecords  = 8192
	defaultCheckpointInterval = 10 * time.Second
	defaultCommitDelay        = 2 * time.Millisecond
	// initialMmapSize is the address space bbolt maps from the start
	// (only pages in use take memory). Growing the map means copying out
	// every page a write transaction holds, and waiting for all readers,
	// which a large checkpoint would otherwise do at every doubling.
	initialMmapSize = 1 << 30
)

// Options configures Open. The zero value gives the defaults.
type Options struct {
	// Timeout is how long Open waits for the lock on the data file, held
	// by any other process that has it open. Zero or less means 1s.
	Timeout time.Duration
	// MaxBatch caps the number of issuance records written by one group
	// commit. Zero or less means 1000; at most 1024.
	MaxBatch int
	// CommitDelay is the longest a group commit waits for more records
	// while the process is CPU-bound (see the committer). Zero means 2ms;
	// negative means never: each batch is written as soon as it is taken.
	CommitDelay time.Duration
	// CheckpointRecords is how many journaled records start a checkpoint.
	// Zero or less means 8192.
	CheckpointRecords int
	// CheckpointInterval is how often journaled records are checkpointed
	// however few they are. Zero or less means 10s.
	CheckpointInterval time.Duration
	// Logger receives warnings and errors. Nil discards them.
	Logger *slog.Logger
	// Metrics observes group commits and checkpoints. Nil discards the
	// observations.
	Metrics Metrics
}

// Metrics observes the store's work.
type Metrics interface {
	// Committed is called after each group commit that was written, with
	// the number of issuance records it journaled (records that failed on
	// their own, such as duplicates, are not counted) and the time it
	// took, fdatasync included.
	Committed(records int, took time.Duration)
	// Checkpointed is called after each checkpoint, with the number of
	// records it copied into the data file and the time it took.
	Checkpointed(records int, took time.Duration)
}

type nopMetrics struct{}

func (nopMetrics) Committed(int, time.Duration)    {}
func (nopMetrics) Checkpointed(int, time.Duration) {}

// Store is a store.Store kept in a bbolt file and its issuance journal. It
// is safe for concurrent use.
type Store struct {
	db       *bolt.DB
	log      *slog.Logger
	maxBatch int
	metrics  Metrics

	// journalPath and nextPath are the journal's files (see checkpoint).
	journalPath, nextPath string
	commitDelay           time.Duration
	ckptRecords           int
	ckptInterval          time.Duration

	// queue feeds the committer goroutine (see committer).
	queue chan *pending
	// done is closed by Close to stop the committer and the checkpointer,
	// which close stopped and ckptStopped when they have returned.
	done, stopped, ckptStopped chan struct{}
	// ckptSignal (the committer: the journal is full enough) and ckptReq
	// (a caller that waits for the result) start checkpoints.
	ckptSignal chan struct{}
	ckptReq    chan chan error

	// jmu guards the journal file being written: the committer holds it
	// while it writes a batch, the checkpointer while it switches files.
	jmu    sync.Mutex
	active *journalFile
	frame  []byte              // the committer's frame buffer
	seen   map[string]struct{} // the committer's duplicate check

	// sealed is the journal file a checkpoint is retiring, if any; only
	// the checkpointer (and Close, after it stopped) uses it.
	sealed *journalFile

	// mu guards the journaled records not yet in the data file: pend by
	// serial, and order, the same in journal order. A checkpoint drops
	// records from them only after they are committed to the data file,
	// so a reader that looks here first and then opens a read
	// transaction finds every record in one or the other (or, briefly,
	// in both).
	mu    sync.RWMutex
	pend  map[string]*journaled
	order []*journaled

	// maxIssued is an upper bound of the keys in bucketIssuances: the
	// largest ever stored (bytewise, as bbolt orders keys), read at Open
	// and raised by storeRecords before it puts a record there, never
	// lowered. A serial above it is not in the data file (see check).
	maxIssued atomic.Pointer[string]

	// denied is the deny-list's keys (see revocations.go).
	denied denied

	closed    atomic.Bool
	closeOnce sync.Once
	closeErr  error
}

var _ store.Store = (*Store)(nil)

// Open opens the store in the file at path, creating the file (mode 0600)
// and its parent directory (mode 0700) if missing, and replays into it the
// records that a crash left in the journal beside it (JournalPath(path)). It
// fails after opts.Timeout if another process has the file open, and with
// ErrJournalCorrupt if the journal is damaged other than by a crash.
func Open(path string, opts Options) (*Store, error) {
	if opts.Timeout <= 0 {
		opts.Timeout = defaultTimeout
	}
	if opts.MaxBatch <= 0 {
		opts.MaxBatch = defaultMaxBatch
	}
	opts.MaxBatch = min(opts.MaxBatch, maxBatchRecords)
	if opts.CommitDelay == 0 {
		opts.CommitDelay = defaultCommitDelay
	}
	if opts.CheckpointRecords <= 0 {
		opts.CheckpointRecords = defaultCheckpointRecords
	}
	if opts.CheckpointInterval <= 0 {
		opts.CheckpointInterval = defaultCheckpointInterval
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
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: opts.Timeout, NoFreelistSync: true,
		FreelistType: bolt.FreelistMapType, InitialMmapSize: initialMmapSize})
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
		db:           db,
		log:          opts.Logger,
		maxBatch:     opts.MaxBatch,
		metrics:      opts.Metrics,
		journalPath:  JournalPath(path),
		nextPath:     JournalPath(path) + ".next",
		commitDelay:  opts.CommitDelay,
		ckptRecords:  opts.CheckpointRecords,
		ckptInterval: opts.CheckpointInterval,
		queue:        make(chan *pending, opts.MaxBatch),
		done:         make(chan struct{}),
		stopped:      make(chan struct{}),
		ckptStopped:  make(chan struct{}),
		ckptSignal:   make(chan struct{}, 1),
		ckptReq:      make(chan chan error),
		seen:         make(map[string]struct{}),
		pend:         make(map[string]*journaled),
	}
	// The data file's lock is held: the journal, and the data file's
	// contents, are this process's alone.
	if err := s.replay(); err != nil {
		_ = db.Close() // the error above is the one to report
		return nil, err
	}
	if err := s.loadKeys(); err != nil {
		_ = db.Close() // the error above is the one to report
		return nil, err
	}
	go s.committer()
	go s.checkpointer()
	return s, nil
}

// loadKeys reads what the store keeps in memory of the data file's keys:
// the largest serial stored (maxIssued) and the deny-list's keys (denied).
func (s *Store) loadKeys() error {
	err := s.db.View(func(tx *bolt.Tx) error {
		if k, _ := tx.Bucket(bucketIssuances).Cursor().Last(); k != nil {
			s.raiseMaxIssued(string(k))
		}
		return s.denied.load(tx)
	})
	return wrap("open", err)
}

// raiseMaxIssued raises maxIssued to serial if it is lower.
func (s *Store) raiseMaxIssued(serial string) {
	for {
		cur := s.maxIssued.Load()
		if cur != nil && *cur >= serial {
			return
		}
		if s.maxIssued.CompareAndSwap(cur, &serial) {
			return
		}
	}
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer func() { _ = d.Close() }() // read only: Sync reports what matters
	return d.Sync()
}

// Close stops the committer, failing RecordIssuance calls still queued,
// copies the journaled records into the data file and empties the journal,
// and closes the files. If the copy fails, the records stay in the journal
// for the next Open, and Close reports the error. Calling it again returns
// the first call's result.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		s.closed.Store(true)
		close(s.done)
		<-s.stopped
		<-s.ckptStopped
		err := s.closeJournal()
		if cerr := s.db.Close(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("boltstore: close: %w", cerr))
		}
		s.closeErr = err
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
// file beside the data file, stores the current time under the meta bucket
// in one synced transaction, and fails while the journal is unusable (a
// failed write could not be undone).
func (s *Store) Ping(ctx context.Context) error {
	if err := s.enter(ctx); err != nil {
		return err
	}
	if err := probe(filepath.Dir(s.db.Path())); err != nil {
		return fmt.Errorf("boltstore: ping: %w", err)
	}
	s.jmu.Lock()
	broken := s.active.broken
	s.jmu.Unlock()
	if broken != nil {
		return fmt.Errorf("boltstore: ping: journal unusable since a failed write: %w", broken)
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
