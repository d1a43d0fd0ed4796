// Package boltstore implements store.Store on a single bbolt file.
//
// Everything the CA keeps (its key material and rotation state, the issuance
// log and the revocation deny-list) lives in one file, locked against other
// processes while open. Every write is one bbolt transaction, which is
// fsynced before the call returns, so a write that returned survives a crash.
//
// Issuance records are written by group commit: concurrent RecordIssuance
// calls that arrive while an fsync is in progress are written together in the
// next transaction, so a busy CA pays one fsync for many certificates, while a
// lone call is written at once, without waiting for company.
package boltstore

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/meshca/meshca/ca/store"
	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// ErrClosed is returned by every method called after Close.
var ErrClosed = errors.New("boltstore: store is closed")

// errDuplicate is returned by RecordIssuance for a serial already recorded.
// Serials are 128-bit random numbers, so a duplicate means a bug.
var errDuplicate = errors.New("boltstore: duplicate serial")

const (
	defaultTimeout  = time.Second
	defaultMaxBatch = 1000

	// schemaVersion is the layout of the buckets below; Open refuses a file
	// written with another one rather than misreading it.
	schemaVersion = "1"

	// pruneChunk caps the records deleted per transaction by
	// PruneIssuances, so a large prune does not hold the (single) writer
	// lock, and with it every RecordIssuance, for long.
	pruneChunk = 5000

	// Limits that keep keys well under bbolt's maximum key size and make
	// the 0x00 separator in index keys unambiguous.
	maxSerialLen   = 64   // RFC 5280 allows 20 octets: 40 hex digits
	maxSPIFFEIDLen = 2048 // the SPIFFE ID specification's limit
)

// Buckets. Timestamps in keys are 8-byte big-endian Unix nanoseconds, so keys
// sort in time order; records with times before 1970 or after 2262 are
// rejected so that every timestamp fits.
var (
	// bucketMeta holds keySchema.
	bucketMeta = []byte("meta")
	keySchema  = []byte("schema")
	// bucketCA holds the CA state as one JSON document under keyCAState.
	bucketCA   = []byte("ca")
	keyCAState = []byte("state")
	// bucketIssuances: serial → JSON store.Issuance.
	bucketIssuances = []byte("issuances")
	// bucketByNotAfter: NotAfter + serial → nothing; for PruneIssuances.
	bucketByNotAfter = []byte("issuances_by_not_after")
	// bucketByIssuedAt: IssuedAt + serial → nothing; lists all records
	// oldest first, starting at IssuedSince.
	bucketByIssuedAt = []byte("issuances_by_issued_at")
	// bucketBySPIFFEID: SPIFFE ID + 0x00 + IssuedAt + serial → nothing;
	// lists one identity's records oldest first, starting at IssuedSince.
	bucketBySPIFFEID = []byte("issuances_by_spiffe_id")
	// bucketRevokedSerials: serial → JSON store.Revocation.
	bucketRevokedSerials = []byte("revocations_by_serial")
	// bucketJoinTokens: token hash (hex) → JSON store.JoinToken.
	bucketJoinTokens = []byte("join_tokens")
	// bucketRevokedIDs: SPIFFE ID + 0x00 + RevokedAt → JSON
	// store.Revocation; an identity may be revoked several times.
	bucketRevokedIDs = []byte("revocations_by_spiffe_id")
)

// Time range that fits in a key (see above).
var (
	minKeyTime = time.Unix(0, 0)
	maxKeyTime = time.Unix(0, math.MaxInt64)
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
}

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

	// commits counts the group commits written; tests check that
	// concurrent records share them.
	commits atomic.Uint64
}

var _ store.Store = (*Store)(nil)

// pending is one RecordIssuance call waiting for the committer.
type pending struct {
	ctx context.Context
	// serial, record and the index keys are prepared by the caller, so
	// the committer does nothing but write them.
	serial, record           []byte
	notAfterKey, issuedAtKey []byte
	spiffeIDKey              []byte
	// reply receives the outcome; it is buffered so the committer never
	// blocks on a caller that stopped waiting.
	reply chan error
}

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
		db.Close()
		return nil, err
	}
	if created {
		// bbolt syncs the file but not the directory entry of a new one.
		if err := syncDir(dir); err != nil {
			db.Close()
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
	}
	go s.committer()
	return s, nil
}

// prepare tightens the file's mode, checks its schema and creates the
// buckets.
func prepare(db *bolt.DB, path string, log *slog.Logger) error {
	// The file holds CA private keys, possibly unencrypted: it must not be
	// readable by anyone else, whoever created it.
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("boltstore: %w", err)
	}
	if mode := fi.Mode().Perm(); mode&0o077 != 0 {
		if err := os.Chmod(path, 0o600); err != nil {
			return fmt.Errorf("boltstore: restrict permissions of %s: %w", path, err)
		}
		log.Warn("data file was accessible to other users; restricted it to mode 0600",
			"path", path, "old_mode", mode.String())
	}
	err = db.Update(func(tx *bolt.Tx) error {
		meta, err := tx.CreateBucketIfNotExists(bucketMeta)
		if err != nil {
			return err
		}
		switch v := meta.Get(keySchema); {
		case v == nil:
			if err := meta.Put(keySchema, []byte(schemaVersion)); err != nil {
				return err
			}
		case string(v) != schemaVersion:
			return fmt.Errorf("data file has schema version %q, this build reads %q", v, schemaVersion)
		}
		for _, name := range [][]byte{bucketCA, bucketIssuances, bucketByNotAfter, bucketByIssuedAt,
			bucketBySPIFFEID, bucketRevokedSerials, bucketRevokedIDs, bucketJoinTokens} {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("boltstore: initialise %s: %w", path, err)
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
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

// LoadCAState implements store.Store.
func (s *Store) LoadCAState(ctx context.Context) (*store.CAState, error) {
	if err := s.enter(ctx); err != nil {
		return nil, err
	}
	var st *store.CAState
	err := s.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketCA).Get(keyCAState)
		if v == nil {
			return store.ErrNotFound
		}
		st = new(store.CAState)
		return json.Unmarshal(v, st)
	})
	if err != nil {
		return nil, wrap("load CA state", err)
	}
	return st, nil
}

// SaveCAState implements store.Store. st itself is not modified.
func (s *Store) SaveCAState(ctx context.Context, st *store.CAState) (uint64, error) {
	if err := s.enter(ctx); err != nil {
		return 0, err
	}
	if st == nil {
		return 0, errors.New("boltstore: save CA state: nil state")
	}
	next := *st
	next.Version++
	data, err := json.Marshal(&next)
	if err != nil {
		return 0, fmt.Errorf("boltstore: save CA state: %w", err)
	}
	err = s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketCA)
		var stored uint64
		if v := b.Get(keyCAState); v != nil {
			var cur struct {
				Version uint64 `json:"version"`
			}
			if err := json.Unmarshal(v, &cur); err != nil {
				return err
			}
			stored = cur.Version
		}
		if stored != st.Version {
			return fmt.Errorf("stored version is %d, not %d: %w", stored, st.Version, store.ErrConflict)
		}
		return b.Put(keyCAState, data)
	})
	if err != nil {
		return 0, wrap("save CA state", err)
	}
	return next.Version, nil
}

// RecordIssuance implements store.Store. If ctx ends while the record is
// being written, it returns the context's error although the record may have
// been stored.
func (s *Store) RecordIssuance(ctx context.Context, rec store.Issuance) error {
	if err := s.enter(ctx); err != nil {
		return err
	}
	p, err := newPending(ctx, &rec)
	if err != nil {
		return err
	}
	select {
	case s.queue <- p:
	case <-ctx.Done():
		return fmt.Errorf("boltstore: %w", ctx.Err())
	case <-s.done:
		return ErrClosed
	}
	select {
	case err := <-p.reply:
		return err
	case <-ctx.Done():
		// Prefer the outcome if it arrived at the same time.
		select {
		case err := <-p.reply:
			return err
		default:
			return fmt.Errorf("boltstore: %w", ctx.Err())
		}
	case <-s.stopped:
		// The committer replies before it stops, so an outcome sent is
		// here; anything else was enqueued after it drained the queue.
		select {
		case err := <-p.reply:
			return err
		default:
			return ErrClosed
		}
	}
}

// newPending validates rec and prepares what the committer writes.
func newPending(ctx context.Context, rec *store.Issuance) (*pending, error) {
	if err := checkSerial(rec.Serial); err != nil {
		return nil, fmt.Errorf("boltstore: record issuance: %w", err)
	}
	if err := checkSPIFFEID(rec.SPIFFEID); err != nil {
		return nil, fmt.Errorf("boltstore: record issuance %s: %w", rec.Serial, err)
	}
	if !keyTime(rec.NotAfter) || !keyTime(rec.IssuedAt) {
		return nil, fmt.Errorf("boltstore: record issuance %s: not_after and issued_at must be between 1970 and 2262", rec.Serial)
	}
	data, err := json.Marshal(rec)
	if err != nil {
		return nil, fmt.Errorf("boltstore: record issuance %s: %w", rec.Serial, err)
	}
	return &pending{
		ctx:         ctx,
		serial:      []byte(rec.Serial),
		record:      data,
		notAfterKey: timeSerialKey(rec.NotAfter, rec.Serial),
		issuedAtKey: timeSerialKey(rec.IssuedAt, rec.Serial),
		spiffeIDKey: spiffeIDKey(rec),
		reply:       make(chan error, 1),
	}, nil
}

// committer writes queued issuance records until Close. It blocks for the
// first record, then takes whatever else is already queued, without waiting,
// and writes them all in one transaction: one fsync. A lone record is thus
// written at once, and records that arrive during an fsync are written
// together by the next one. (bbolt's own DB.Batch instead waits up to 10ms
// for company, which a lone caller would pay in full.)
func (s *Store) committer() {
	defer close(s.stopped)
	batch := make([]*pending, 0, s.maxBatch)
	for {
		select {
		case <-s.done:
			s.failQueued()
			return
		case p := <-s.queue:
			batch = append(batch, p)
		}
	drain:
		for len(batch) < s.maxBatch {
			select {
			case p := <-s.queue:
				batch = append(batch, p)
			default:
				break drain
			}
		}
		s.commit(batch)
		clear(batch) // let the records be collected
		batch = batch[:0]
	}
}

// failQueued answers the calls still queued at Close.
func (s *Store) failQueued() {
	for {
		select {
		case p := <-s.queue:
			p.reply <- ErrClosed
		default:
			return
		}
	}
}

// commit writes batch in one transaction and replies to each caller. A
// record that cannot be written (a duplicate, or its caller gave up) gets its
// own error without failing the others.
func (s *Store) commit(batch []*pending) {
	errs := make([]error, len(batch))
	err := s.db.Update(func(tx *bolt.Tx) error {
		recs := tx.Bucket(bucketIssuances)
		byNotAfter := tx.Bucket(bucketByNotAfter)
		byIssuedAt := tx.Bucket(bucketByIssuedAt)
		bySPIFFEID := tx.Bucket(bucketBySPIFFEID)
		for i, p := range batch {
			if err := p.ctx.Err(); err != nil {
				errs[i] = fmt.Errorf("boltstore: %w", err)
				continue
			}
			if recs.Get(p.serial) != nil {
				errs[i] = fmt.Errorf("%w %s", errDuplicate, p.serial)
				continue
			}
			// The keys were validated, so a failing Put is unexpected
			// (out of space, say). Abort the transaction: nothing of
			// the batch is written, and every caller hears so.
			for _, put := range []struct {
				b    *bolt.Bucket
				k, v []byte
			}{
				{recs, p.serial, p.record},
				{byNotAfter, p.notAfterKey, nil},
				{byIssuedAt, p.issuedAtKey, nil},
				{bySPIFFEID, p.spiffeIDKey, nil},
			} {
				if err := put.b.Put(put.k, put.v); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		err = wrap("record issuance", err)
		s.log.Error("writing issuance records failed", "records", len(batch), "err", err)
	} else {
		s.commits.Add(1)
	}
	for i, p := range batch {
		if err != nil {
			p.reply <- err
		} else {
			p.reply <- errs[i]
		}
	}
}

// Issuance implements store.Store.
func (s *Store) Issuance(ctx context.Context, serial string) (*store.Issuance, error) {
	if err := s.enter(ctx); err != nil {
		return nil, err
	}
	var rec *store.Issuance
	err := s.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketIssuances).Get([]byte(serial))
		if v == nil {
			return store.ErrNotFound
		}
		rec = new(store.Issuance)
		return json.Unmarshal(v, rec)
	})
	if err != nil {
		return nil, wrap("issuance "+serial, err)
	}
	return rec, nil
}

// Issuances implements store.Store. It walks an index in IssuedAt order from
// f.IssuedSince: the SPIFFE ID index when f.SPIFFEID is set, else the
// IssuedAt index, and stops at f.Limit.
func (s *Store) Issuances(ctx context.Context, f store.IssuanceFilter) ([]store.Issuance, error) {
	if err := s.enter(ctx); err != nil {
		return nil, err
	}
	if f.Limit < 0 {
		return nil, fmt.Errorf("boltstore: issuances: negative limit %d", f.Limit)
	}
	index, prefix := bucketByIssuedAt, []byte(nil)
	if f.SPIFFEID != "" {
		if err := checkSPIFFEID(f.SPIFFEID); err != nil {
			return nil, fmt.Errorf("boltstore: issuances: %w", err)
		}
		index, prefix = bucketBySPIFFEID, append([]byte(f.SPIFFEID), 0)
	}
	var out []store.Issuance
	err := s.db.View(func(tx *bolt.Tx) error {
		recs := tx.Bucket(bucketIssuances)
		c := tx.Bucket(index).Cursor()
		start := binary.BigEndian.AppendUint64(bytes.Clone(prefix), seekNanos(f.IssuedSince))
		for k, _ := c.Seek(start); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
			if err := ctx.Err(); err != nil {
				return err
			}
			at, serial, ok := splitTimeSerial(k[len(prefix):])
			if !ok {
				return fmt.Errorf("malformed index key %q", k)
			}
			if at.Before(f.IssuedSince) { // only if IssuedSince is before 1970
				continue
			}
			v := recs.Get(serial)
			if v == nil {
				return fmt.Errorf("index entry for missing record %s", serial)
			}
			var rec store.Issuance
			if err := json.Unmarshal(v, &rec); err != nil {
				return fmt.Errorf("record %s: %w", serial, err)
			}
			out = append(out, rec)
			if len(out) == f.Limit {
				break
			}
		}
		return nil
	})
	if err != nil {
		return nil, wrap("issuances", err)
	}
	return out, nil
}

// PruneIssuances implements store.Store. It deletes in transactions of at
// most pruneChunk records; on error it returns how many were deleted before.
func (s *Store) PruneIssuances(ctx context.Context, cutoff time.Time) (int, error) {
	total := 0
	for {
		if err := s.enter(ctx); err != nil {
			return total, err
		}
		n, err := s.pruneChunk(cutoff)
		total += n
		if err != nil || n < pruneChunk {
			return total, err
		}
	}
}

func (s *Store) pruneChunk(cutoff time.Time) (int, error) {
	n := 0
	err := s.db.Update(func(tx *bolt.Tx) error {
		recs := tx.Bucket(bucketIssuances)
		byNotAfter := tx.Bucket(bucketByNotAfter)
		// Collect first: deleting under a bbolt cursor can make it skip
		// keys.
		var expired [][]byte
		c := byNotAfter.Cursor()
		for k, _ := c.First(); k != nil && len(expired) < pruneChunk; k, _ = c.Next() {
			notAfter, _, ok := splitTimeSerial(k)
			if !ok {
				return fmt.Errorf("malformed index key %q", k)
			}
			if !notAfter.Before(cutoff) {
				break
			}
			expired = append(expired, bytes.Clone(k))
		}
		for _, k := range expired {
			serial := k[8:]
			if v := recs.Get(serial); v != nil {
				var rec store.Issuance
				if err := json.Unmarshal(v, &rec); err != nil {
					return fmt.Errorf("record %s: %w", serial, err)
				}
				if err := tx.Bucket(bucketByIssuedAt).Delete(timeSerialKey(rec.IssuedAt, rec.Serial)); err != nil {
					return err
				}
				if err := tx.Bucket(bucketBySPIFFEID).Delete(spiffeIDKey(&rec)); err != nil {
					return err
				}
				if err := recs.Delete(serial); err != nil {
					return err
				}
			}
			if err := byNotAfter.Delete(k); err != nil {
				return err
			}
		}
		n = len(expired)
		return nil
	})
	if err != nil {
		return 0, wrap("prune", err)
	}
	return n, nil
}

// Revoke implements store.Store. Revoking a serial again replaces the entry;
// revoking a SPIFFE ID again at another time adds one.
func (s *Store) Revoke(ctx context.Context, r store.Revocation) error {
	if err := s.enter(ctx); err != nil {
		return err
	}
	if (r.Serial == "") == (r.SPIFFEID == "") {
		return errors.New("boltstore: revoke: exactly one of serial and SPIFFE ID must be set")
	}
	if !keyTime(r.RevokedAt) {
		return errors.New("boltstore: revoke: revoked_at must be between 1970 and 2262")
	}
	var bucket, key []byte
	if r.Serial != "" {
		if err := checkSerial(r.Serial); err != nil {
			return fmt.Errorf("boltstore: revoke: %w", err)
		}
		bucket, key = bucketRevokedSerials, []byte(r.Serial)
	} else {
		if err := checkSPIFFEID(r.SPIFFEID); err != nil {
			return fmt.Errorf("boltstore: revoke: %w", err)
		}
		bucket = bucketRevokedIDs
		key = binary.BigEndian.AppendUint64(append([]byte(r.SPIFFEID), 0), uint64(r.RevokedAt.UnixNano()))
	}
	data, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("boltstore: revoke: %w", err)
	}
	err = s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucket).Put(key, data)
	})
	return wrap("revoke", err)
}

// Revocations implements store.Store: the entry for serial, if any, then
// those for spiffeID, oldest first.
func (s *Store) Revocations(ctx context.Context, serial, spiffeID string) ([]store.Revocation, error) {
	if err := s.enter(ctx); err != nil {
		return nil, err
	}
	var out []store.Revocation
	add := func(v []byte) error {
		var r store.Revocation
		if err := json.Unmarshal(v, &r); err != nil {
			return err
		}
		out = append(out, r)
		return nil
	}
	err := s.db.View(func(tx *bolt.Tx) error {
		if serial != "" {
			if v := tx.Bucket(bucketRevokedSerials).Get([]byte(serial)); v != nil {
				if err := add(v); err != nil {
					return err
				}
			}
		}
		// An ID with 0x00 in it is never stored, and its prefix could
		// match another ID's keys.
		if spiffeID == "" || strings.IndexByte(spiffeID, 0) >= 0 {
			return nil
		}
		prefix := append([]byte(spiffeID), 0)
		c := tx.Bucket(bucketRevokedIDs).Cursor()
		for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			if err := add(v); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, wrap("revocations", err)
	}
	return out, nil
}

func checkSerial(serial string) error {
	if serial == "" || len(serial) > maxSerialLen {
		return fmt.Errorf("serial %q is not 1 to %d hex digits", serial, maxSerialLen)
	}
	for _, c := range []byte(serial) {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return fmt.Errorf("serial %q is not lowercase hex", serial)
		}
	}
	return nil
}

func checkSPIFFEID(id string) error {
	switch {
	case id == "":
		return errors.New("missing SPIFFE ID")
	case len(id) > maxSPIFFEIDLen:
		return fmt.Errorf("SPIFFE ID longer than %d bytes", maxSPIFFEIDLen)
	case strings.IndexByte(id, 0) >= 0:
		return errors.New("SPIFFE ID contains a NUL byte")
	case !utf8.ValidString(id):
		// JSON would store it altered, unlike the index keys.
		return errors.New("SPIFFE ID is not valid UTF-8")
	}
	return nil
}

// keyTime reports whether t fits in a key.
func keyTime(t time.Time) bool {
	return !t.Before(minKeyTime) && !t.After(maxKeyTime)
}

// seekNanos is the key timestamp to start a scan from for t, which need not
// fit in a key.
func seekNanos(t time.Time) uint64 {
	switch {
	case t.Before(minKeyTime):
		return 0
	case t.After(maxKeyTime):
		return math.MaxInt64
	}
	return uint64(t.UnixNano())
}

// timeSerialKey is an index key: t (which fits) then serial.
func timeSerialKey(t time.Time, serial string) []byte {
	k := make([]byte, 8, 8+len(serial))
	binary.BigEndian.PutUint64(k, uint64(t.UnixNano()))
	return append(k, serial...)
}

// splitTimeSerial parses timeSerialKey's result.
func splitTimeSerial(k []byte) (time.Time, []byte, bool) {
	if len(k) <= 8 {
		return time.Time{}, nil, false
	}
	return time.Unix(0, int64(binary.BigEndian.Uint64(k))), k[8:], true
}

// spiffeIDKey is rec's key in bucketBySPIFFEID.
func spiffeIDKey(rec *store.Issuance) []byte {
	k := append([]byte(rec.SPIFFEID), 0)
	return append(k, timeSerialKey(rec.IssuedAt, rec.Serial)...)
}

// CreateJoinToken implements store.Store.
func (s *Store) CreateJoinToken(ctx context.Context, t store.JoinToken) error {
	if err := s.enter(ctx); err != nil {
		return err
	}
	if err := checkSerial(t.Hash); err != nil || len(t.Hash) != 64 {
		return errors.New("boltstore: join token hash must be 64 lowercase hex digits")
	}
	if err := checkSPIFFEID(t.SPIFFEID); err != nil {
		return fmt.Errorf("boltstore: join token: %w", err)
	}
	if !t.UsedAt.IsZero() || !t.ExpiresAt.After(t.CreatedAt) {
		return errors.New("boltstore: join token must be unused and expire after its creation")
	}
	data, err := json.Marshal(t)
	if err != nil {
		return fmt.Errorf("boltstore: join token: %w", err)
	}
	err = s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketJoinTokens)
		if b.Get([]byte(t.Hash)) != nil {
			return errors.New("join token already exists")
		}
		return b.Put([]byte(t.Hash), data)
	})
	return wrap("create join token", err)
}

// ConsumeJoinToken implements store.Store: the check and the mark happen in
// one write transaction, so of two concurrent uses exactly one succeeds.
func (s *Store) ConsumeJoinToken(ctx context.Context, hash string, now time.Time, usedBy string) (*store.JoinToken, error) {
	if err := s.enter(ctx); err != nil {
		return nil, err
	}
	var (
		before store.JoinToken
		result error
	)
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketJoinTokens)
		v := b.Get([]byte(hash))
		if v == nil {
			result = store.ErrNotFound
			return nil
		}
		if err := json.Unmarshal(v, &before); err != nil {
			return err
		}
		switch {
		case !before.UsedAt.IsZero():
			result = store.ErrJoinTokenUsed
			return nil
		case !now.Before(before.ExpiresAt):
			result = store.ErrJoinTokenExpired
			return nil
		}
		used := before
		used.UsedAt, used.UsedBy = now, usedBy
		data, err := json.Marshal(used)
		if err != nil {
			return err
		}
		return b.Put([]byte(hash), data)
	})
	if err != nil {
		return nil, wrap("consume join token", err)
	}
	if result != nil {
		return &before, result
	}
	return &before, nil
}

// PruneJoinTokens implements store.Store.
func (s *Store) PruneJoinTokens(ctx context.Context, cutoff time.Time) (int, error) {
	if err := s.enter(ctx); err != nil {
		return 0, err
	}
	n := 0
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketJoinTokens)
		var expired [][]byte // deleting under a cursor would skip entries
		err := b.ForEach(func(k, v []byte) error {
			var t store.JoinToken
			if err := json.Unmarshal(v, &t); err != nil {
				return err
			}
			if t.ExpiresAt.Before(cutoff) {
				expired = append(expired, k)
			}
			return nil
		})
		for _, k := range expired {
			if err == nil {
				err = b.Delete(k)
			}
		}
		n = len(expired)
		return err
	})
	return n, wrap("prune join tokens", err)
}
