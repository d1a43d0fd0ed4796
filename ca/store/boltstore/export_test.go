package boltstore

import (
	"context"

	"github.com/meshca/meshca/ca/store"
	bolt "go.etcd.io/bbolt"
)

var ErrDuplicate = errDuplicate

// CommitBatch writes recs as one group commit, as the committer would had
// they been queued together, and returns each record's outcome. ctxs[i], if
// set, is record i's context.
func CommitBatch(s *Store, recs []store.Issuance, ctxs []context.Context) []error {
	batch := make([]*pending, len(recs))
	for i := range recs {
		ctx := context.Background()
		if i < len(ctxs) && ctxs[i] != nil {
			ctx = ctxs[i]
		}
		p, err := newPending(ctx, &recs[i])
		if err != nil {
			panic(err)
		}
		batch[i] = p
	}
	s.commit(batch)
	errs := make([]error, len(batch))
	for i, p := range batch {
		errs[i] = <-p.reply
	}
	return errs
}

// KeyCounts returns the number of keys in each issuance bucket: records, and
// the NotAfter, IssuedAt and SPIFFE ID indexes.
func KeyCounts(s *Store) (counts [4]int) {
	err := s.db.View(func(tx *bolt.Tx) error {
		for i, name := range [][]byte{bucketIssuances, bucketByNotAfter, bucketByIssuedAt, bucketBySPIFFEID} {
			counts[i] = tx.Bucket(name).Stats().KeyN
		}
		return nil
	})
	if err != nil {
		panic(err)
	}
	return counts
}
