package boltstore

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// replay copies into the data file the records of the journal files a
// crash left (both, if it came in the middle of a checkpoint), then starts
// an empty journal. A torn tail, the unfinished write of a batch that no
// caller heard back about, is logged and dropped; any other damage is
// ErrJournalCorrupt, naming the file and offset, and nothing is changed.
func (s *Store) replay() error {
	var recs []*journaled
	for _, path := range []string{s.journalPath, s.nextPath} {
		data, err := os.ReadFile(path)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("boltstore: read journal: %w", err)
		}
		raw, end, err := decodeJournal(data)
		if err != nil {
			return fmt.Errorf("%w: %s %w; it is kept as it is: restore the data directory from a backup, "+
				"or move the file aside to start without the records it holds", ErrJournalCorrupt, path, err)
		}
		if end < len(data) && !zeroTail(data[end:]) {
			s.log.Warn("journal ends in a write interrupted by a crash, before any caller heard back; dropped",
				"path", path, "offset", end, "bytes", len(data)-end)
		}
		for _, r := range raw {
			j, err := parseRecord(r.value)
			if err != nil {
				return fmt.Errorf("%w: %s: record in the batch at offset %d: %w", ErrJournalCorrupt, path, r.frame, err)
			}
			recs = append(recs, j)
		}
	}
	if len(recs) > 0 {
		skipped, err := s.store(recs, true)
		if err != nil {
			return fmt.Errorf("boltstore: replay journal: %w", err)
		}
		s.log.Info("replayed the issuance journal left by a crash", "records", len(recs)-skipped, "already_stored", skipped)
	}
	f, err := s.resetJournal(minPrealloc)
	if err != nil {
		return err
	}
	s.active = &journalFile{f: f, size: int64(len(journalHeader)), gen: 1}
	return nil
}

// headerOnly reports whether the journal being written is its header alone,
// without records or reserved space.
func (s *Store) headerOnly() bool {
	fi, err := s.active.f.Stat()
	return err == nil && fi.Size() == int64(len(journalHeader))
}

// resetJournal replaces the journal files, whose records must all be in the
// data file, with one empty journal of prealloc bytes, and returns it open.
func (s *Store) resetJournal(prealloc int64) (*os.File, error) {
	f, err := s.createJournal(s.nextPath, prealloc)
	if err == nil {
		if err = os.Rename(s.nextPath, s.journalPath); err == nil {
			err = syncDir(filepath.Dir(s.journalPath))
		}
		if err != nil {
			_ = f.Close() // the error above is the one to report
		}
	}
	if err != nil {
		return nil, fmt.Errorf("boltstore: start the journal: %w", err)
	}
	return f, nil
}

// closeJournal, at Close, copies every journaled record into the data file
// and empties the journal, so that the data file alone is complete after a
// clean stop. If the copy fails, the journal is left for the next Open.
func (s *Store) closeJournal() error {
	defer func() {
		_ = s.active.f.Close() // synced after each write
		if s.sealed != nil {
			_ = s.sealed.f.Close()
		}
	}()
	s.mu.RLock()
	recs := s.order
	s.mu.RUnlock()
	if len(recs) == 0 && s.sealed == nil && s.active.records == 0 && s.headerOnly() {
		return nil
	}
	if _, err := s.store(recs, false); err != nil {
		return fmt.Errorf("boltstore: close: the journal is kept for the next start: %w", err)
	}
	f, err := s.resetJournal(0) // a stopped store's journal is its header alone
	if err != nil {
		return err
	}
	return f.Close()
}
