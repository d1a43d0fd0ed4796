package boltstore_test

import (
	"bytes"
	"context"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/meshca/meshca/ca/store"
	"github.com/meshca/meshca/ca/store/boltstore"
)

// FuzzIndexes records two issuances and a revocation with arbitrary SPIFFE
// IDs and times, and checks the index-driven queries against a model: the
// byte-level key encoding must neither mix up IDs (one a prefix of the other,
// say) nor misorder times.
func FuzzIndexes(f *testing.F) {
	h := int64(time.Hour)
	base := t0.UnixNano()
	f.Add("spiffe://example.org/a", "spiffe://example.org/ab", base, base+h, base+2*h, base+3*h, base, base+2*h)
	f.Add("spiffe://example.org/a", "spiffe://example.org/a", base+h, base, base+h, base, base, base+h)
	f.Add("a", "a\x00b", base, base, base, base, int64(0), int64(-1))
	f.Add("", "x", int64(-1), int64(0), int64(1), int64(1<<62), int64(-1<<63), int64(1<<63-1))
	f.Fuzz(func(t *testing.T, idA, idB string, issuedA, issuedB, expiresA, expiresB, since, cutoff int64) {
		ctx := context.Background()
		s, err := boltstore.Open(filepath.Join(t.TempDir(), "f.db"), boltstore.Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()

		var model []store.Issuance // stored records, oldest first
		for _, r := range []store.Issuance{
			{Serial: "0a", SPIFFEID: idA, IssuedAt: time.Unix(0, issuedA).UTC(), NotAfter: time.Unix(0, expiresA).UTC()},
			{Serial: "0b", SPIFFEID: idB, IssuedAt: time.Unix(0, issuedB).UTC(), NotAfter: time.Unix(0, expiresB).UTC()},
		} {
			valid := r.SPIFFEID != "" && len(r.SPIFFEID) <= 2048 && !strings.Contains(r.SPIFFEID, "\x00") && utf8.ValidString(r.SPIFFEID) &&
				r.IssuedAt.UnixNano() >= 0 && r.NotAfter.UnixNano() >= 0
			err := s.RecordIssuance(ctx, r)
			if valid != (err == nil) {
				t.Fatalf("RecordIssuance(%+v): %v, valid = %v", r, err, valid)
			}
			if err == nil {
				model = append(model, r)
			}
		}
		slices.SortStableFunc(model, func(a, b store.Issuance) int { return a.IssuedAt.Compare(b.IssuedAt) })

		sinceT := time.Unix(0, since)
		for _, id := range []string{idA, idB} {
			if id == "" { // no filter
				continue
			}
			if _, err := s.Issuances(ctx, store.IssuanceFilter{SPIFFEID: id}); err != nil {
				continue // an invalid ID, never stored
			}
			want := []string{}
			for _, r := range model {
				if r.SPIFFEID == id && !r.IssuedAt.Before(sinceT) {
					want = append(want, r.Serial)
				}
			}
			got, err := s.Issuances(ctx, store.IssuanceFilter{SPIFFEID: id, IssuedSince: sinceT})
			if err != nil || !reflect.DeepEqual(serials(got), want) {
				t.Errorf("Issuances(%q since %v): got (%v, %v), want %v", id, sinceT, serials(got), err, want)
			}
		}

		if err := s.Revoke(ctx, store.Revocation{SPIFFEID: idA, RevokedAt: time.Unix(0, issuedA)}); err == nil {
			got, err := s.Revocations(ctx, "", idB)
			if err != nil {
				t.Fatal(err)
			}
			if want := map[bool]int{true: 1, false: 0}[idA == idB]; len(got) != want {
				t.Errorf("Revocations(%q) after revoking %q: %+v", idB, idA, got)
			}
		}

		wantPruned := 0
		for _, r := range model {
			if r.NotAfter.Before(time.Unix(0, cutoff)) {
				wantPruned++
			}
		}
		n, err := s.PruneIssuances(ctx, time.Unix(0, cutoff))
		if err != nil || n != wantPruned {
			t.Errorf("PruneIssuances: got (%d, %v), want %d", n, err, wantPruned)
		}
		k := len(model) - wantPruned
		if counts := boltstore.KeyCounts(s); counts != [4]int{k, k, k, k} {
			t.Errorf("keys after prune: %v, want %d each", counts, k)
		}
	})
}

// FuzzJournalDecode feeds arbitrary bytes to the journal decoder, which
// reads a file a crash or a disk may have damaged: it must not panic, must
// report an end within the file, and what it accepts must survive being
// framed again; a damaged frame is either the tail (nothing valid after
// it) or an error.
func FuzzJournalDecode(f *testing.F) {
	v := func(serial string) []byte {
		b, err := boltstore.AppendIssuance(ptr(rec(serial, "spiffe://example.org/a", 1, 2)))
		if err != nil {
			f.Fatal(err)
		}
		return b
	}
	h := []byte(boltstore.JournalHeader)
	two := append(append(bytes.Clone(h), boltstore.Frame(v("01"), v("02"))...), boltstore.Frame(v("03"))...)
	f.Add([]byte{})
	f.Add(h[:5])
	f.Add(h)
	f.Add(two)
	f.Add(two[:len(two)-3])
	f.Add(append(bytes.Clone(two), 0, 0, 0, 0))
	damaged := bytes.Clone(two)
	damaged[len(h)+15] ^= 1
	f.Add(damaged)
	f.Add(append(bytes.Clone(h), boltstore.RawFrame([]byte("x"))...))
	f.Fuzz(func(t *testing.T, data []byte) {
		values, end, err := boltstore.DecodeJournal(data)
		if end < 0 || end > len(data) {
			t.Fatalf("end %d outside the file (%d bytes)", end, len(data))
		}
		if err != nil {
			return
		}
		for _, v := range values {
			_ = boltstore.ParseRecord(v) // must not panic
			if bytes.IndexByte(v, '\n') >= 0 {
				t.Fatalf("record with a newline: %q", v)
			}
		}
		// The valid prefix, framed again, reads back the same.
		again := []byte(boltstore.JournalHeader)
		if len(values) > 0 {
			again = append(again, boltstore.Frame(values...)...)
		}
		got, gotEnd, err := boltstore.DecodeJournal(again)
		if err != nil || gotEnd != len(again) || !slices.EqualFunc(got, values, bytes.Equal) {
			t.Fatalf("re-framed records read back as %q (%d, %v), want %q", got, gotEnd, err, values)
		}
	})
}
