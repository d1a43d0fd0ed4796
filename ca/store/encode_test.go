package store_test

import (
	"bytes"
	"encoding/json"
	"testing"
	"time"

	"github.com/meshca/meshca/ca/store"
)

// FuzzAppendIssuanceJSON checks the stores' JSON encoding of a record
// against encoding/json: bbolt's data file format is what json.Marshal
// writes, and older versions read it with json.Unmarshal.
func FuzzAppendIssuanceJSON(f *testing.F) {
	f.Add("0a1b", "spiffe://example.org/ns/a/sa/b", "mtls", "req", "10.0.0.1:1", "node", "n1", int64(0), int64(1e18), int64(-62135596800))
	f.Add("", "<&>\u2028\"\\\x00\xff", "", "", "", "", "", int64(1), int64(-1), int64(0))
	f.Add("x", "é", "k", "r", "p", "a<", "\t", int64(1<<62), int64(1<<63-1), int64(-1<<63))
	f.Fuzz(func(t *testing.T, serial, id, kind, requester, peer, detailKey, detailValue string, before, after, issued int64) {
		zone := time.FixedZone("z", int(before%(20*3600)))
		r := store.Issuance{
			Serial: serial, SPIFFEID: id, CredentialKind: kind, Requester: requester, Peer: peer,
			NotBefore: time.Unix(0, before).In(zone), NotAfter: time.Unix(0, after).UTC(),
			PublicKeySHA256: id + serial, IssuedAt: time.Unix(issued, issued%1e9),
		}
		if detailKey != "" {
			r.Details = map[string]string{detailKey: detailValue, "z" + detailKey: detailKey}
		}
		want, wantErr := json.Marshal(r)
		got, err := store.AppendIssuanceJSON(nil, &r)
		if (err != nil) != (wantErr != nil) || !bytes.Equal(got, want) {
			t.Fatalf("AppendIssuanceJSON = %s, %v\njson.Marshal       = %s, %v", got, err, want, wantErr)
		}
	})
}
