package boltstore

import (
	"encoding/binary"
	"fmt"
	"log/slog"
	"math"
	"os"
	"time"

	"github.com/meshca/meshca/ca/store"
	bolt "go.etcd.io/bbolt"
)

const (
	// schemaVersion is the layout of the buckets below; Open refuses a file
	// written with another one rather than misreading it.
	schemaVersion = "1"
)

// store.CheckSerial and store.CheckSPIFFEID keep keys well under bbolt's
// maximum key size and make the 0x00 separator in index keys unambiguous.

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
	// bucketIssuedRequests: request key → JSON store.IssuedRequest.
	// Added without a schema change: a file written before has none, and
	// an older build ignores the buckets it does not know.
	bucketIssuedRequests = []byte("issued_requests")
	// bucketIssuedRequestsBySerial: serial → request key; for
	// PruneIssuances.
	bucketIssuedRequestsBySerial = []byte("issued_requests_by_serial")
	// bucketFederated: trust domain name → JSON store.FederatedBundle.
	// Added after schema 1 without changing it: an older build ignores it,
	// and Open creates it in an older file.
	bucketFederated = []byte("federated_bundles")
)

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
			bucketBySPIFFEID, bucketRevokedSerials, bucketRevokedIDs, bucketJoinTokens,
			bucketIssuedRequests, bucketIssuedRequestsBySerial, bucketFederated} {
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

// seekNanos is the key timestamp to start a scan from for t, which need not
// fit in a key.
func seekNanos(t time.Time) uint64 {
	switch {
	case t.Before(store.MinTime):
		return 0
	case t.After(store.MaxTime):
		return math.MaxInt64
	}
	return uint64(t.UnixNano())
}

// timeSerialKey is an index key: t (which fits) then serial.
func timeSerialKey(t time.Time, serial string) []byte {
	return nanosSerialKey(make([]byte, 0, 8+len(serial)), t.UnixNano(), serial)
}

// nanosSerialKey appends to prefix the index key of a time in Unix
// nanoseconds (which fits) and a serial.
func nanosSerialKey(prefix []byte, nanos int64, serial string) []byte {
	k := binary.BigEndian.AppendUint64(prefix, uint64(nanos)) //nolint:gosec // G115: key times are not negative (see store.MinTime)
	return append(k, serial...)
}

// splitTimeSerial parses timeSerialKey's result.
func splitTimeSerial(k []byte) (time.Time, []byte, bool) {
	if len(k) <= 8 {
		return time.Time{}, nil, false
	}
	// Keys hold times from 1970 to 2262 only (see store.MinTime): the value
	// fits an int64.
	return time.Unix(0, int64(binary.BigEndian.Uint64(k))), k[8:], true //nolint:gosec // G115: see above
}

// spiffeIDKey is rec's key in bucketBySPIFFEID.
func spiffeIDKey(rec *store.Issuance) []byte {
	k := append([]byte(rec.SPIFFEID), 0)
	return append(k, timeSerialKey(rec.IssuedAt, rec.Serial)...)
}
