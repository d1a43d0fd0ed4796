package pgstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/meshca/meshca/ca/store"
)

// errDuplicate is returned by RecordIssuance for a serial already recorded,
// by this replica or another. Serials carry 80 random bits after their time
// prefix, so a duplicate means a bug.
var errDuplicate = errors.New("pgstore: duplicate serial")

// pruneChunk caps the records deleted per statement by PruneIssuances, so
// that a large prune is many short transactions, not one long one.
const pruneChunk = 10000

// pending is one RecordIssuance call waiting for the committer.
type pending struct {
	ctx                context.Context
	serial, spiffeID   string
	issuedAt, notAfter int64
	record             []byte
	// reply receives the outcome; it is buffered so the committer never
	// blocks on a caller that stopped waiting.
	reply chan error
}

// RecordIssuance implements store.Store: the record joins the next group
// commit (see committer) and the call returns once that committed. If ctx
// ends while the record is being written, it returns the context's error
// although the record may have been stored.
func (s *Store) RecordIssuance(ctx context.Context, rec store.Issuance) error {
	if err := s.enter(ctx); err != nil {
		return err
	}
	data, err := store.EncodeIssuance(&rec)
	if err != nil {
		return fmt.Errorf("pgstore: record issuance %q: %w", rec.Serial, err)
	}
	p := &pending{
		ctx: ctx, serial: rec.Serial, spiffeID: rec.SPIFFEID,
		issuedAt: rec.IssuedAt.UnixNano(), notAfter: rec.NotAfter.UnixNano(),
		record: data, reply: make(chan error, 1),
	}
	select {
	case s.queue <- p:
	case <-ctx.Done():
		return fmt.Errorf("pgstore: %w", ctx.Err())
	case <-s.done:
		return ErrClosed
	}
	return store.AwaitCommit(ctx, p.reply, s.stopped, "pgstore", ErrClosed)
}

// committer writes queued issuance records until Close. It blocks for the
// first record, then takes whatever else is already queued and writes them
// all with one statement: records that arrive during a round trip are
// written together by the next one (another committer's, or its own), so a
// lone record goes at once and a crowd shares commits.
func (s *Store) committer() {
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

// insertIssuances inserts the rows of five parallel arrays, skipping the
// serials already stored, and returns the serials it inserted.
const insertIssuances = `INSERT INTO meshca_issuances (serial, spiffe_id, issued_at_ns, not_after_ns, record)
SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::json[])
ON CONFLICT (serial) DO NOTHING RETURNING serial`

// commit inserts batch in one statement (one transaction) and replies to
// each caller: a caller that gave up, or whose serial is already stored or
// earlier in the batch, gets its own error; a failed statement fails all.
func (s *Store) commit(batch []*pending) {
	start := s.clock.Now()
	errs := make([]error, len(batch))
	seen := make(map[string]int, len(batch))
	var serials, ids []string
	var issued, notAfter []int64
	var records [][]byte
	for i, p := range batch {
		if err := p.ctx.Err(); err != nil {
			errs[i] = fmt.Errorf("pgstore: %w", err)
			continue
		}
		if _, dup := seen[p.serial]; dup {
			errs[i] = fmt.Errorf("%w %s", errDuplicate, p.serial)
			continue
		}
		seen[p.serial] = i
		serials, ids = append(serials, p.serial), append(ids, p.spiffeID)
		issued, notAfter = append(issued, p.issuedAt), append(notAfter, p.notAfter)
		records = append(records, p.record)
	}
	if len(serials) > 0 {
		inserted, err := s.insert(serials, ids, issued, notAfter, records)
		if err != nil {
			s.log.Error("writing issuance records failed", "records", len(serials), "err", err)
		} else {
			s.metrics.Committed(len(inserted), s.clock.Now().Sub(start))
		}
		for serial, i := range seen {
			switch _, ok := inserted[serial]; {
			case err != nil:
				errs[i] = err
			case !ok:
				errs[i] = fmt.Errorf("%w %s", errDuplicate, serial)
			}
		}
	}
	for i, p := range batch {
		p.reply <- errs[i]
	}
}

// insert runs insertIssuances under the commit timeout (it runs for many
// callers, under none of their contexts).
func (s *Store) insert(serials, ids []string, issued, notAfter []int64, records [][]byte) (map[string]struct{}, error) {
	ctx, cancel := context.WithTimeout(context.Background(), s.commitTimeout)
	defer cancel()
	rows, err := s.pool.Query(ctx, insertIssuances, serials, ids, issued, notAfter, records)
	if err != nil {
		return nil, wrap("record issuance", err)
	}
	inserted := make(map[string]struct{}, len(serials))
	var serial string
	_, err = pgx.ForEachRow(rows, []any{&serial}, func() error {
		inserted[serial] = struct{}{}
		return nil
	})
	if err != nil {
		return nil, wrap("record issuance", err)
	}
	return inserted, nil
}

// Issuance implements store.Store.
func (s *Store) Issuance(ctx context.Context, serial string) (*store.Issuance, error) {
	if err := s.enter(ctx); err != nil {
		return nil, err
	}
	var data []byte
	err := s.pool.QueryRow(ctx, "SELECT record FROM meshca_issuances WHERE serial = $1", serial).Scan(&data)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return nil, fmt.Errorf("pgstore: issuance %s: %w", serial, store.ErrNotFound)
	case err != nil:
		return nil, s.wrap("issuance "+serial, err)
	}
	rec := new(store.Issuance)
	if err := json.Unmarshal(data, rec); err != nil {
		return nil, fmt.Errorf("pgstore: issuance %s: %w", serial, err)
	}
	return rec, nil
}

// listIssuances selects the records of a filter ($1: SPIFFE ID or NULL
// for all, $2: issued since, $3: limit or NULL) in index order, each with
// its serial's deny-list entry and its SPIFFE ID's entries oldest first.
// One statement reads one snapshot: the records and the entries are of
// one point in time, whatever other replicas write meanwhile.
const listIssuances = `SELECT i.record, s.record,
	(SELECT json_agg(r.record ORDER BY r.revoked_at_ns) FROM meshca_revoked_ids r WHERE r.spiffe_id = i.spiffe_id)
FROM (SELECT serial, spiffe_id, issued_at_ns, record FROM meshca_issuances
	WHERE ($1::text IS NULL OR spiffe_id = $1) AND issued_at_ns >= $2
	ORDER BY issued_at_ns, serial LIMIT $3) i
LEFT JOIN meshca_revoked_serials s ON s.serial = i.serial
ORDER BY i.issued_at_ns, i.serial`

// Issuances implements store.Store with listIssuances.
func (s *Store) Issuances(ctx context.Context, f store.IssuanceFilter) ([]store.IssuanceWithRevocations, error) {
	if err := s.enter(ctx); err != nil {
		return nil, err
	}
	if f.Limit < 0 {
		return nil, fmt.Errorf("pgstore: issuances: negative limit %d", f.Limit)
	}
	var id, limit any // NULL: every ID, no limit
	if f.SPIFFEID != "" {
		if err := store.CheckSPIFFEID(f.SPIFFEID); err != nil {
			return nil, fmt.Errorf("pgstore: issuances: %w", err)
		}
		id = f.SPIFFEID
	}
	if f.Limit > 0 {
		limit = int64(f.Limit)
	}
	rows, err := s.pool.Query(ctx, listIssuances, id, nanos(f.IssuedSince), limit)
	if err != nil {
		return nil, s.wrap("issuances", err)
	}
	var (
		out                  []store.IssuanceWithRevocations
		rec, bySerial, byIDs []byte
	)
	_, err = pgx.ForEachRow(rows, []any{&rec, &bySerial, &byIDs}, func() error {
		var r store.IssuanceWithRevocations
		if err := json.Unmarshal(rec, &r.Issuance); err != nil {
			return fmt.Errorf("%w: record: %w", errDecode, err)
		}
		if bySerial != nil {
			var rev store.Revocation
			if err := json.Unmarshal(bySerial, &rev); err != nil {
				return fmt.Errorf("%w: revocation of %s: %w", errDecode, r.Serial, err)
			}
			r.Revocations = append(r.Revocations, rev)
		}
		if byIDs != nil {
			var revs []store.Revocation
			if err := json.Unmarshal(byIDs, &revs); err != nil {
				return fmt.Errorf("%w: revocations of %s: %w", errDecode, r.SPIFFEID, err)
			}
			r.Revocations = append(r.Revocations, revs...)
		}
		out = append(out, r)
		return nil
	})
	if err != nil {
		return nil, s.wrap("issuances", err)
	}
	return out, nil
}

// errDecode marks a stored value that does not decode: a damaged row, not
// an unreachable database.
var errDecode = errors.New("stored value does not decode")

// PruneIssuances implements store.Store, deleting at most pruneChunk
// records per statement; on error it returns how many were deleted before.
func (s *Store) PruneIssuances(ctx context.Context, cutoff time.Time) (int, error) {
	if err := s.enter(ctx); err != nil {
		return 0, err
	}
	total := 0
	for {
		if err := s.enter(ctx); err != nil {
			return total, err
		}
		tag, err := s.pool.Exec(ctx, `DELETE FROM meshca_issuances WHERE serial IN
			(SELECT serial FROM meshca_issuances WHERE not_after_ns < $1 LIMIT $2)`, nanos(cutoff), pruneChunk)
		if err != nil {
			return total, s.wrap("prune issuances", err)
		}
		n := int(min(tag.RowsAffected(), math.MaxInt32))
		total += n
		if n < pruneChunk {
			return total, nil
		}
	}
}
