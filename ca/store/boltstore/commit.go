package boltstore

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"runtime/metrics"
	"time"

	"github.com/meshca/meshca/ca/store"
)

// errDuplicate is returned by RecordIssuance for a serial already recorded.
// Serials carry 80 random bits after their time prefix, so a duplicate means a bug.
var errDuplicate = errors.New("boltstore: duplicate serial")

// pending is one RecordIssuance call waiting for the committer.
type pending struct {
	ctx context.Context
	// rec was prepared by the caller (its JSON encoded, its fields
	// checked), so the committer does nothing but write it.
	rec *journaled
	// reply receives the outcome; it is buffered so the committer never
	// blocks on a caller that stopped waiting.
	reply chan error
}

// journalFile is a journal file being written, or sealed (see checkpoint).
type journalFile struct {
	f *os.File
	// size is where the next frame goes: every byte before it belongs to
	// a frame that was synced.
	size int64
	// records is how many records the file holds.
	records int
	// gen numbers the files in the order they were written.
	gen uint64
	// broken is the error of a failed write that could not be undone
	// (truncating the file back to size failed); until it can, nothing
	// more is written to the file.
	broken error
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
	return store.AwaitCommit(ctx, p.reply, s.stopped, "boltstore", ErrClosed)
}

// newPending checks rec and prepares what the committer writes.
func newPending(ctx context.Context, rec *store.Issuance) (*pending, error) {
	value, err := store.EncodeIssuance(rec)
	if err != nil {
		return nil, fmt.Errorf("boltstore: record issuance %q: %w", rec.Serial, err)
	}
	return &pending{
		ctx: ctx,
		rec: &journaled{
			serial: rec.Serial, spiffeID: rec.SPIFFEID,
			issuedAt: rec.IssuedAt.UnixNano(), notAfter: rec.NotAfter.UnixNano(),
			value: value,
		},
		reply: make(chan error, 1),
	}, nil
}

// committer writes queued issuance records until Close. It blocks for the
// first record, then takes whatever else is already queued, and writes them
// all in one frame of the journal: one write, one fdatasync. A lone record
// is thus written at once, and records that arrive during an fdatasync are
// written together by the next one. Under load the batch may also wait a
// little for company (see linger).
func (s *Store) committer() {
	defer close(s.stopped)
	batch := make([]*pending, 0, s.maxBatch)
	l := newLingerer(s.commitDelay)
	for {
		select {
		case <-s.done:
			s.failQueued()
			return
		case p := <-s.queue:
			batch = append(batch, p)
		}
		batch = s.drain(batch)
		batch = l.linger(s, batch)
		s.commit(batch)
		clear(batch) // let the records be collected
		batch = batch[:0]
	}
}

// drain adds to batch the records already queued, up to the batch's cap.
func (s *Store) drain(batch []*pending) []*pending {
	for len(batch) < s.maxBatch {
		select {
		case p := <-s.queue:
			batch = append(batch, p)
		default:
			return batch
		}
	}
	return batch
}

// lingerGap is how long a lingering batch waits for the next record.
const lingerGap = 250 * time.Microsecond

// lingerer holds what the committer needs to linger.
type lingerer struct {
	delay, gap time.Duration
	// busy reports whether the batch may wait: cpuQueued, but for tests.
	busy   func() bool
	sample []metrics.Sample
}

func newLingerer(delay time.Duration) *lingerer {
	l := &lingerer{
		delay:  delay,
		gap:    lingerGap,
		sample: []metrics.Sample{{Name: "/sched/goroutines/runnable:goroutines"}},
	}
	l.busy = l.cpuQueued
	return l
}

// cpuQueued reports whether goroutines are waiting for a CPU: at least as many
// as there are CPUs, so that while the committer waits none is idle.
func (l *lingerer) cpuQueued() bool {
	metrics.Read(l.sample)
	v := l.sample[0].Value
	return v.Kind() == metrics.KindUint64 && v.Uint64() >= uint64(runtime.GOMAXPROCS(0)) //nolint:gosec // G115: GOMAXPROCS is positive
}

// linger lets more records join batch while waiting idles no CPU: an
// fdatasync costs the same CPU however many records it carries, so while
// other goroutines wait for a CPU (the process is CPU-bound, and callers
// that wait longer leave none idle), the batch waits for the next record,
// up to the gap (lingerGap) after each one and commitDelay in all. When the
// CPUs have no queue (a lone caller, or a process waiting on its clients)
// it returns at once.
func (l *lingerer) linger(s *Store, batch []*pending) []*pending {
	if l.delay <= 0 {
		return batch
	}
	now := time.Now()
	deadline, last := now.Add(l.delay), now
	// t fires at or before the gap after the last record ends: one
	// timer per gap waited out, made anew and never reset. The runtime
	// marks a reset timer still in its heap as modified and, when it
	// fires, scans the whole heap, every request's deadline included (a
	// tenth of the CPU with 50,000 requests in line); a timer per record
	// instead costs a few per cent at a steady load.
	var t *time.Timer
	defer func() {
		if t != nil {
			t.Stop()
		}
	}()
	for len(batch) < s.maxBatch && l.busy() {
		wait := min(time.Until(last.Add(l.gap)), time.Until(deadline))
		if wait <= 0 {
			return batch
		}
		if t == nil {
			t = time.NewTimer(wait)
		}
		select {
		case p := <-s.queue:
			batch = s.drain(append(batch, p))
			last = time.Now()
		case <-t.C:
			t = nil // the gap may have moved on since: the loop looks again
		case <-s.done:
			return batch
		}
	}
	return batch
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

// commit writes batch as one frame of the journal, makes its records visible
// to reads, and replies to each caller. A record that cannot be written (a
// duplicate, or its caller gave up) gets its own error without failing the
// others.
func (s *Store) commit(batch []*pending) {
	s.jmu.Lock()
	defer s.jmu.Unlock()
	start := time.Now()
	errs := make([]error, len(batch))
	n := s.check(batch, errs)
	var err error
	if n > 0 {
		err = s.write(batch, errs, n)
	}
	if err != nil {
		err = fmt.Errorf("boltstore: record issuance: %w", err)
		s.log.Error("writing issuance records failed", "records", n, "err", err)
	} else if n > 0 {
		s.metrics.Committed(n, time.Since(start))
		if s.active.records >= s.ckptRecords {
			select {
			case s.ckptSignal <- struct{}{}:
			default: // already signalled
			}
		}
	}
	for i, p := range batch {
		if errs[i] == nil {
			errs[i] = err
		}
		p.reply <- errs[i]
	}
}

// check sets errs[i] for the records of batch that must not be written, and
// returns how many may be. A record is a duplicate if its serial is in the
// batch before it, among the journaled records (s.pend), or in the data
// file. The data file is read only for serials at or below s.maxIssued,
// which serials above it cannot be in: time-ordered serials are all above,
// so a batch usually opens no transaction.
//
// The order of the reads is what makes this right while the checkpointer
// moves records from s.pend to the data file:
//
//   - the checkpointer raises s.maxIssued (storeRecords) before the
//     transaction that puts the records in the data file, which commits
//     before it drops them from s.pend under s.mu;
//   - check reads s.pend and then s.maxIssued under s.mu, and then, if some
//     serial is at or below that bound, opens its read transaction.
//
// So a record absent from s.pend when check read it had been dropped
// already: the bound check read is at least its serial, and the
// transaction check opens next sees the commit that stored it. A record
// still in s.pend is refused from there. A record RecordIssuanceOnce put
// straight into the data file before this batch was queued is covered the
// same way (it raises the bound before its transaction too).
func (s *Store) check(batch []*pending, errs []error) int {
	clear(s.seen)
	s.mu.RLock()
	for i, p := range batch {
		if err := p.ctx.Err(); err != nil {
			errs[i] = fmt.Errorf("boltstore: %w", err)
			continue
		}
		_, journaled := s.pend[p.rec.serial]
		_, inBatch := s.seen[p.rec.serial]
		if journaled || inBatch {
			errs[i] = fmt.Errorf("%w %s", errDuplicate, p.rec.serial)
			continue
		}
		s.seen[p.rec.serial] = struct{}{}
	}
	var bound string // nothing stored yet: every serial is above ""
	if p := s.maxIssued.Load(); p != nil {
		bound = *p
	}
	s.mu.RUnlock()
	n, read := 0, false
	for i, p := range batch {
		if errs[i] == nil {
			n++
			read = read || p.rec.serial <= bound
		}
	}
	if !read {
		return n
	}
	tx, err := s.db.Begin(false)
	if err != nil {
		err = wrap("record issuance", err)
		for i := range batch {
			if errs[i] == nil {
				errs[i] = err
			}
		}
		return 0
	}
	defer func() { _ = tx.Rollback() }() // read only
	recs := tx.Bucket(bucketIssuances)
	for i, p := range batch {
		if errs[i] != nil || p.rec.serial > bound {
			continue
		}
		if recs.Get([]byte(p.rec.serial)) != nil {
			errs[i] = fmt.Errorf("%w %s", errDuplicate, p.rec.serial)
			n--
		}
	}
	return n
}

// write appends the n records of batch without an error to the journal as
// one frame, syncs it, and adds them to the journaled records, all under
// s.jmu: the records are in s.pend before the file can be sealed.
func (s *Store) write(batch []*pending, errs []error, n int) error {
	j := s.active
	if j.broken != nil {
		if err := j.f.Truncate(j.size); err != nil {
			return fmt.Errorf("journal unusable since a failed write: %w", j.broken)
		}
		j.broken = nil
	}
	b := beginFrame(s.frame[:0])
	for i, p := range batch {
		if errs[i] == nil {
			b = append(append(b, p.rec.value...), '\n')
		}
	}
	endFrame(b, 0)
	if cap(b) <= 1<<20 { // keep a usual frame's buffer, not a huge one
		s.frame = b
	}
	_, err := j.f.WriteAt(b, j.size)
	if err == nil {
		err = fdatasync(j.f)
	}
	if err != nil {
		// Leave nothing after the last good frame: a frame written
		// after a damaged one would make the file read as corrupt.
		if terr := j.f.Truncate(j.size); terr != nil {
			j.broken = errors.Join(err, terr)
		}
		return err
	}
	j.size += int64(len(b))
	j.records += n
	s.mu.Lock()
	for i, p := range batch {
		if errs[i] == nil {
			p.rec.gen = j.gen
			s.pend[p.rec.serial] = p.rec
			s.order = append(s.order, p.rec)
		}
	}
	s.mu.Unlock()
	return nil
}
