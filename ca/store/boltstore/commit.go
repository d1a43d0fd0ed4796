package boltstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/meshca/meshca/ca/store"
	bolt "go.etcd.io/bbolt"
)

// errDuplicate is returned by RecordIssuance for a serial already recorded.
// Serials are 128-bit random numbers, so a duplicate means a bug.
var errDuplicate = errors.New("boltstore: duplicate serial")

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
	start := time.Now()
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
		s.metrics.Committed(len(batch)-countErrors(errs), time.Since(start))
	}
	for i, p := range batch {
		if err != nil {
			p.reply <- err
		} else {
			p.reply <- errs[i]
		}
	}
}

func countErrors(errs []error) int {
	n := 0
	for _, err := range errs {
		if err != nil {
			n++
		}
	}
	return n
}
