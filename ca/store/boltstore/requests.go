package boltstore

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"

	"github.com/meshca/meshca/ca/store"
	bolt "go.etcd.io/bbolt"
)

// RecordIssuanceOnce implements store.Store. The record skips the journal:
// it goes straight into the data file, with its indexes and the answer, in
// one bbolt transaction (fsynced before the call returns). Concurrent calls
// share a transaction (bbolt's Batch, which waits up to 10 ms for
// company); a call that fails (a conflict) is taken out and run alone, so
// it fails alone.
func (s *Store) RecordIssuanceOnce(ctx context.Context, rec store.Issuance, req store.IssuedRequest) error {
	if err := s.enter(ctx); err != nil {
		return err
	}
	if err := store.CheckIssuedRequest(&req, &rec); err != nil {
		return fmt.Errorf("boltstore: record issuance once: %w", err)
	}
	p, err := newPending(ctx, &rec)
	if err != nil {
		return err
	}
	answer, err := json.Marshal(&req)
	if err != nil {
		return fmt.Errorf("boltstore: record issuance once: %w", err)
	}
	err = s.db.Batch(func(tx *bolt.Tx) error {
		if tx.Bucket(bucketIssuedRequests).Get([]byte(req.Request)) != nil {
			return fmt.Errorf("request %s already answered: %w", req.Request, store.ErrConflict)
		}
		// The journal first, then the data file (see Store.mu).
		s.mu.RLock()
		_, inJournal := s.pend[rec.Serial]
		s.mu.RUnlock()
		if inJournal || tx.Bucket(bucketIssuances).Get([]byte(rec.Serial)) != nil {
			return fmt.Errorf("%w %s", errDuplicate, rec.Serial)
		}
		if _, err := s.storeRecords(tx, []*journaled{p.rec}, false); err != nil {
			return err
		}
		if err := tx.Bucket(bucketIssuedRequests).Put([]byte(req.Request), answer); err != nil {
			return err
		}
		return tx.Bucket(bucketIssuedRequestsBySerial).Put([]byte(rec.Serial), []byte(req.Request))
	})
	return wrap("record issuance once", err)
}

// IssuedRequest implements store.Store.
func (s *Store) IssuedRequest(ctx context.Context, request string) (*store.IssuedRequest, error) {
	if err := s.enter(ctx); err != nil {
		return nil, err
	}
	req := new(store.IssuedRequest)
	err := s.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketIssuedRequests).Get([]byte(request))
		if v == nil {
			return store.ErrNotFound
		}
		return json.Unmarshal(v, req)
	})
	if err != nil {
		return nil, wrap("issued request "+request, err)
	}
	return req, nil
}

// deleteIssuedRequest deletes, in tx, the answer given with the record of
// serial, if any.
func deleteIssuedRequest(tx *bolt.Tx, serial []byte) error {
	bySerial := tx.Bucket(bucketIssuedRequestsBySerial)
	key := bytes.Clone(bySerial.Get(serial))
	if key == nil {
		return nil
	}
	if err := tx.Bucket(bucketIssuedRequests).Delete(key); err != nil {
		return err
	}
	return bySerial.Delete(serial)
}
