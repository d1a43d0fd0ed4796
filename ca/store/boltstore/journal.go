package boltstore

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/meshca/meshca/ca/store"
)

// The issuance journal is a file of frames after a fixed header. Each frame
// is one group commit, written with one write and made durable with one
// fdatasync before any of its callers hears back:
//
//	magic   4 bytes  0xff 'm' 'j' '1'
//	length  4 bytes  little-endian length of the payload
//	crc     4 bytes  little-endian CRC-32C (Castagnoli) of the payload
//	payload          the batch's records, each the record's JSON (its value
//	                 in the data file) followed by '\n'
//
// JSON as encoding/json writes it is UTF-8 with control characters escaped,
// so a payload holds neither a newline inside a record nor the byte 0xff:
// a scan for the magic after a damaged frame finds only frame starts.
//
// The next frame is written only after the previous one was synced, so
// after a crash only the last frame can be incomplete (torn). A damaged
// frame followed by a valid one is therefore not a crash but corruption of
// data already acknowledged, and Open refuses the file rather than lose
// records silently (see decodeJournal).
const (
	journalHeader  = "meshca journal 1\n"
	frameHeaderLen = 12
	// maxRecordLen bounds one record's JSON (store.EncodeIssuance), and
	// with maxBatchRecords the size of a frame.
	maxRecordLen = store.MaxIssuanceLen
	// maxBatchRecords caps Options.MaxBatch so that a frame stays below
	// maxFramePayload.
	maxBatchRecords = 1024
	maxFramePayload = maxBatchRecords * (maxRecordLen + 1)
)

var (
	frameMagic = [4]byte{0xff, 'm', 'j', '1'}
	castagnoli = crc32.MakeTable(crc32.Castagnoli)
)

// ErrJournalCorrupt is returned by Open when the journal holds a damaged
// record that is not the torn end of a write interrupted by a crash.
var ErrJournalCorrupt = errors.New("boltstore: journal is corrupt")

// JournalPath is the journal beside the data file at path: the same name
// with the extension ".journal" in place of its own (meshca.db:
// meshca.journal). While a checkpoint runs, the journal being written is
// JournalPath(path)+".next".
func JournalPath(path string) string {
	j := strings.TrimSuffix(path, filepath.Ext(path)) + ".journal"
	if j == path {
		j += ".journal"
	}
	return j
}

// rawRecord is one record read from a journal: its JSON and the offset of
// the frame that holds it.
type rawRecord struct {
	frame int
	value []byte
}

// corruptError is what decodeJournal reports about a damaged file.
type corruptError struct {
	offset int
	reason string
}

func (e *corruptError) Error() string { return fmt.Sprintf("at offset %d: %s", e.offset, e.reason) }

// beginFrame appends a frame header to b, to be completed by endFrame once
// the payload has been appended after it.
func beginFrame(b []byte) []byte {
	return append(b, frameMagic[0], frameMagic[1], frameMagic[2], frameMagic[3], 0, 0, 0, 0, 0, 0, 0, 0)
}

// endFrame fills in the header of the frame that starts at b[start:].
func endFrame(b []byte, start int) {
	payload := b[start+frameHeaderLen:]
	binary.LittleEndian.PutUint32(b[start+4:], uint32(len(payload))) //nolint:gosec // G115: at most maxFramePayload
	binary.LittleEndian.PutUint32(b[start+8:], crc32.Checksum(payload, castagnoli))
}

// frameAt returns the payload of the valid frame at data[off:], if there
// is one.
func frameAt(data []byte, off int) ([]byte, bool) {
	h := data[off:]
	if len(h) < frameHeaderLen || [4]byte(h[:4]) != frameMagic {
		return nil, false
	}
	n := binary.LittleEndian.Uint32(h[4:])
	if n > maxFramePayload || int64(n) > int64(len(h)-frameHeaderLen) {
		return nil, false
	}
	payload := h[frameHeaderLen : frameHeaderLen+int(n)]
	if crc32.Checksum(payload, castagnoli) != binary.LittleEndian.Uint32(h[8:]) {
		return nil, false
	}
	return payload, true
}

// nextFrame returns the offset of the first valid frame at or after off,
// or -1.
func nextFrame(data []byte, off int) int {
	for off < len(data) {
		i := bytes.Index(data[off:], frameMagic[:])
		if i < 0 {
			return -1
		}
		if _, ok := frameAt(data, off+i); ok {
			return off + i
		}
		off += i + 1
	}
	return -1
}

// decodeJournal reads a journal file's contents. It returns the records of
// its valid frames in order, and the offset where they end: before
// len(data) when the file ends in a torn frame, whose bytes are not
// returned. A file shorter than the header and holding the start of it is
// empty: it was being created when the process stopped.
//
// A damaged frame followed by a valid one, a valid frame whose payload is
// not newline-terminated records, or a wrong header is an error
// (*corruptError): those are not what a crash leaves.
func decodeJournal(data []byte) ([]rawRecord, int, error) {
	if len(data) < len(journalHeader) {
		if string(data) == journalHeader[:len(data)] {
			return nil, len(data), nil
		}
		return nil, 0, &corruptError{0, "not a meshca journal"}
	}
	if string(data[:len(journalHeader)]) != journalHeader {
		return nil, 0, &corruptError{0, "not a meshca journal, or a version this build does not read"}
	}
	var recs []rawRecord
	off := len(journalHeader)
	for off < len(data) {
		payload, ok := frameAt(data, off)
		if !ok {
			if next := nextFrame(data, off+1); next >= 0 {
				return nil, off, &corruptError{off, fmt.Sprintf("damaged record followed by a valid one at offset %d", next)}
			}
			return recs, off, nil // the torn tail of an interrupted write
		}
		if len(payload) == 0 || payload[len(payload)-1] != '\n' {
			return nil, off, &corruptError{off, "record batch not newline-terminated"}
		}
		for rest := payload; len(rest) > 0; {
			i := bytes.IndexByte(rest, '\n')
			recs = append(recs, rawRecord{frame: off, value: rest[:i:i]})
			rest = rest[i+1:]
		}
		off += frameHeaderLen + len(payload)
	}
	return recs, off, nil
}

// journaled is a record in the journal that no checkpoint has copied into
// the data file yet, with what reads and the checkpoint need of it.
type journaled struct {
	serial, spiffeID string
	// issuedAt and notAfter are Unix nanoseconds (they fit: checked).
	issuedAt, notAfter int64
	// value is the record's JSON, as stored in the data file. It is
	// never modified.
	value []byte
	// gen is the generation of the journal file that holds it.
	gen uint64
}

// parseRecord reads a journaled record's JSON, checked as RecordIssuance
// checks a new one.
func parseRecord(value []byte) (*journaled, error) {
	var rec store.Issuance
	if err := json.Unmarshal(value, &rec); err != nil {
		return nil, err
	}
	if err := store.CheckIssuance(&rec); err != nil {
		return nil, err
	}
	return &journaled{
		serial: rec.Serial, spiffeID: rec.SPIFFEID,
		issuedAt: rec.IssuedAt.UnixNano(), notAfter: rec.NotAfter.UnixNano(),
		value: value,
	}, nil
}

// The space a journal file will take is written with zeros when the file
// is created, off the request path (Open, a checkpoint's seal), so that a
// group commit usually overwrites blocks the file already has: its
// fdatasync then flushes the data alone, without the inode and extent
// changes (and the filesystem journal commit) that growing the file would
// need. On this project's test machines (ext4 on a virtual disk) that takes
// about 40 % off the fdatasync's wall time and a third off its CPU
// (BenchmarkFrameSync), and gains a little end to end (BENCHMARKS.md). A
// frame past the zeros is appended as before; so are all frames after a
// failed write (which cuts the file back to its last good frame) or when
// the zeros could not be written (a full disk). Readers need nothing for
// this: the zeros after the last frame hold no frame magic, so
// decodeJournal ends the journal there as at a torn tail (replay logs
// nothing for a tail of zeros alone).
const (
	// minPrealloc is what a journal gets at Open, and the least a
	// checkpoint's next file gets. (At Close, none: see closeJournal.)
	minPrealloc = 256 << 10
	// maxPrealloc caps it.
	maxPrealloc = 64 << 20
	// zeroChunk is the size of the writes that fill it.
	zeroChunk = 64 << 10
)

// preallocFor is how much a journal file following one that held used
// bytes gets: a quarter more, rounded up to a multiple of minPrealloc, at
// most maxPrealloc.
func preallocFor(used int64) int64 {
	n := (used + used/4 + minPrealloc - 1) &^ (minPrealloc - 1)
	return min(max(n, minPrealloc), maxPrealloc)
}

// createJournal creates (or empties) the journal file at path, mode 0600,
// holding the header and then zeros up to prealloc bytes (see minPrealloc),
// and syncs it and its directory, so that it exists with its header after a
// crash.
func (s *Store) createJournal(path string, prealloc int64) (*os.File, error) {
	return createJournal(path, prealloc, fillZeros, s.log)
}

// createJournal is Store.createJournal with the function that writes the
// zeros. The header is synced before them, so that a crash during a long
// fill leaves a file that starts with it. If the zeros cannot be written or
// synced (the disk is full), the file is cut back to its header and the
// journal works without the reserved space.
func createJournal(path string, prealloc int64, fill func(f *os.File, off, end int64) error, log *slog.Logger) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, err
	}
	// A file left by someone else keeps its mode through O_TRUNC.
	if err = f.Chmod(0o600); err == nil {
		_, err = f.WriteAt([]byte(journalHeader), 0)
	}
	if err == nil {
		err = f.Sync()
	}
	if err == nil && prealloc > int64(len(journalHeader)) {
		zerr := fill(f, int64(len(journalHeader)), prealloc)
		if zerr == nil {
			zerr = f.Sync()
		}
		if zerr != nil {
			log.Warn("could not reserve space for the issuance journal; it grows as it is written", "path", path, "err", zerr)
			if err = f.Truncate(int64(len(journalHeader))); err == nil {
				err = f.Sync()
			}
		}
	}
	if err == nil {
		err = syncDir(filepath.Dir(path))
	}
	if err != nil {
		_ = f.Close() // the write's error is the one to report
		return nil, err
	}
	return f, nil
}

// fillZeros writes zeros to f from off up to end.
func fillZeros(f *os.File, off, end int64) error {
	var zeros [zeroChunk]byte
	for off < end {
		n, err := f.WriteAt(zeros[:min(int64(len(zeros)), end-off)], off)
		if err != nil {
			return err
		}
		off += int64(n)
	}
	return nil
}

// zeroTail reports whether b holds only zeros: the unused space of a
// journal (see minPrealloc), not a torn write.
func zeroTail(b []byte) bool {
	for len(b) >= 8 {
		if binary.LittleEndian.Uint64(b) != 0 {
			return false
		}
		b = b[8:]
	}
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
