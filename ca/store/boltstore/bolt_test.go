package boltstore_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshca/meshca/ca/store"
	"github.com/meshca/meshca/ca/store/boltstore"
)

// t0 is an arbitrary base time, in UTC so records compare equal after a JSON
// round trip.
var t0 = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

func open(t testing.TB, path string) *boltstore.Store {
	t.Helper()
	if path == "" {
		path = filepath.Join(t.TempDir(), "meshca.db")
	}
	s, err := boltstore.Open(path, boltstore.Options{})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// rec returns an issuance issued at t0+issued hours, expiring at t0+expires
// hours.
func rec(serial, id string, issued, expires int) store.Issuance {
	return store.Issuance{
		Serial:          serial,
		SPIFFEID:        id,
		NotBefore:       t0.Add(time.Duration(issued)*time.Hour - time.Minute),
		NotAfter:        t0.Add(time.Duration(expires) * time.Hour),
		PublicKeySHA256: "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
		CredentialKind:  "mtls",
		Requester:       "0a1b",
		Peer:            "10.0.0.1:4242",
		IssuedAt:        t0.Add(time.Duration(issued) * time.Hour),
		Details:         map[string]string{"node": "n1"},
	}
}

func serials(recs []store.Issuance) []string {
	out := []string{}
	for _, r := range recs {
		out = append(out, r.Serial)
	}
	return out
}

func TestCAState(t *testing.T) {
	ctx := context.Background()
	s := open(t, "")
	if _, err := s.LoadCAState(ctx); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("LoadCAState on an empty store: got %v, want ErrNotFound", err)
	}
	key := func(b byte) *store.CAKey {
		return &store.CAKey{CertDER: []byte{b}, Key: store.SealedKey{Alg: "aes-256-gcm", KeyID: "k1", Nonce: []byte{1, 2}, Data: []byte{b, b}}}
	}
	// The steps run in order against the same store.
	steps := []struct {
		name        string
		st          store.CAState
		wantVersion uint64 // 0: ErrConflict
	}{
		{"first save", store.CAState{Version: 0, Root: key(1)}, 1},
		{"stale create", store.CAState{Version: 0, Root: key(9)}, 0},
		{"update", store.CAState{Version: 1, Root: key(1), Active: key(2)}, 2},
		{"stale update", store.CAState{Version: 1, Root: key(1), Active: key(9)}, 0},
		{"version from the future", store.CAState{Version: 7, Root: key(9)}, 0},
		{"rotation", store.CAState{Version: 2, Root: key(1), Active: key(2), Next: key(3)}, 3},
	}
	want := store.CAState{}
	for _, step := range steps {
		t.Run(step.name, func(t *testing.T) {
			in := step.st
			v, err := s.SaveCAState(ctx, &in)
			if step.wantVersion == 0 {
				if !errors.Is(err, store.ErrConflict) {
					t.Fatalf("SaveCAState: got (%d, %v), want ErrConflict", v, err)
				}
				if !strings.HasPrefix(err.Error(), "boltstore: ") {
					t.Errorf("error %q lacks the package prefix", err)
				}
			} else {
				if err != nil || v != step.wantVersion {
					t.Fatalf("SaveCAState: got (%d, %v), want (%d, nil)", v, err, step.wantVersion)
				}
				want = step.st
				want.Version = v
			}
			if in.Version != step.st.Version {
				t.Errorf("SaveCAState changed its argument's version to %d", in.Version)
			}
			got, err := s.LoadCAState(ctx)
			if err != nil {
				t.Fatalf("LoadCAState: %v", err)
			}
			if !reflect.DeepEqual(*got, want) {
				t.Errorf("LoadCAState: got %+v, want %+v", *got, want)
			}
		})
	}
}

func TestCAStateConcurrentSaves(t *testing.T) {
	ctx := context.Background()
	s := open(t, "")
	var wins atomic.Int32
	var wg sync.WaitGroup
	for range 20 {
		wg.Go(func() {
			_, err := s.SaveCAState(ctx, &store.CAState{})
			switch {
			case err == nil:
				wins.Add(1)
			case !errors.Is(err, store.ErrConflict):
				t.Errorf("SaveCAState: %v", err)
			}
		})
	}
	wg.Wait()
	if wins.Load() != 1 {
		t.Errorf("%d concurrent creations succeeded, want 1", wins.Load())
	}
}

func TestIssuances(t *testing.T) {
	ctx := context.Background()
	s := open(t, "")
	const (
		a  = "spiffe://example.org/a"
		ab = "spiffe://example.org/ab" // a's ID is a prefix of it
		b  = "spiffe://example.org/b"
	)
	// Recorded out of issuance order on purpose.
	for _, r := range []store.Issuance{
		rec("0e", ab, 5, 10),
		rec("0a", a, 1, 10),
		rec("0c", a, 3, 10),
		rec("0b", b, 2, 10),
		rec("0d", b, 4, 10),
		rec("0f", a, 6, 10),
		rec("10", b, 6, 10), // same time as 0f: serial breaks the tie
	} {
		if err := s.RecordIssuance(ctx, r); err != nil {
			t.Fatalf("RecordIssuance(%s): %v", r.Serial, err)
		}
	}

	t.Run("lookup", func(t *testing.T) {
		got, err := s.Issuance(ctx, "0c")
		if err != nil {
			t.Fatalf("Issuance: %v", err)
		}
		if want := rec("0c", a, 3, 10); !reflect.DeepEqual(*got, want) {
			t.Errorf("Issuance: got %+v, want %+v", *got, want)
		}
		if _, err := s.Issuance(ctx, "ff"); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("Issuance of an unknown serial: got %v, want ErrNotFound", err)
		}
	})

	tests := []struct {
		name string
		f    store.IssuanceFilter
		want []string
	}{
		{"all", store.IssuanceFilter{}, []string{"0a", "0b", "0c", "0d", "0e", "0f", "10"}},
		{"by ID", store.IssuanceFilter{SPIFFEID: a}, []string{"0a", "0c", "0f"}},
		{"by ID that is another's prefix", store.IssuanceFilter{SPIFFEID: ab}, []string{"0e"}},
		{"by unknown ID", store.IssuanceFilter{SPIFFEID: "spiffe://example.org/none"}, []string{}},
		{"since", store.IssuanceFilter{IssuedSince: t0.Add(4 * time.Hour)}, []string{"0d", "0e", "0f", "10"}},
		{"since, between records", store.IssuanceFilter{IssuedSince: t0.Add(3*time.Hour + 1)}, []string{"0d", "0e", "0f", "10"}},
		{"since before 1970", store.IssuanceFilter{IssuedSince: time.Date(1900, 1, 1, 0, 0, 0, 0, time.UTC)}, []string{"0a", "0b", "0c", "0d", "0e", "0f", "10"}},
		{"since far future", store.IssuanceFilter{IssuedSince: time.Date(3000, 1, 1, 0, 0, 0, 0, time.UTC)}, []string{}},
		{"by ID since", store.IssuanceFilter{SPIFFEID: b, IssuedSince: t0.Add(3 * time.Hour)}, []string{"0d", "10"}},
		{"limit", store.IssuanceFilter{Limit: 2}, []string{"0a", "0b"}},
		{"limit above count", store.IssuanceFilter{Limit: 100}, []string{"0a", "0b", "0c", "0d", "0e", "0f", "10"}},
		{"by ID with limit", store.IssuanceFilter{SPIFFEID: b, Limit: 2}, []string{"0b", "0d"}},
		{"all filters", store.IssuanceFilter{SPIFFEID: a, IssuedSince: t0.Add(2 * time.Hour), Limit: 1}, []string{"0c"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := s.Issuances(ctx, tt.f)
			if err != nil {
				t.Fatalf("Issuances: %v", err)
			}
			if !reflect.DeepEqual(serials(got), tt.want) {
				t.Errorf("Issuances: got %v, want %v", serials(got), tt.want)
			}
		})
	}
	if _, err := s.Issuances(ctx, store.IssuanceFilter{Limit: -1}); err == nil {
		t.Error("Issuances with a negative limit succeeded")
	}
}

func TestRecordIssuanceInvalid(t *testing.T) {
	ctx := context.Background()
	s := open(t, "")
	if err := s.RecordIssuance(ctx, rec("aa", "spiffe://example.org/a", 1, 2)); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		modify func(*store.Issuance)
	}{
		{"duplicate serial", func(r *store.Issuance) { r.Serial = "aa" }},
		{"missing serial", func(r *store.Issuance) { r.Serial = "" }},
		{"uppercase serial", func(r *store.Issuance) { r.Serial = "AB" }},
		{"serial not hex", func(r *store.Issuance) { r.Serial = "xyz" }},
		{"serial too long", func(r *store.Issuance) { r.Serial = strings.Repeat("a", 65) }},
		{"missing SPIFFE ID", func(r *store.Issuance) { r.SPIFFEID = "" }},
		{"SPIFFE ID with NUL", func(r *store.Issuance) { r.SPIFFEID = "spiffe://example.org/a\x00b" }},
		{"SPIFFE ID not UTF-8", func(r *store.Issuance) { r.SPIFFEID = "spiffe://example.org/\xa7" }},
		{"zero IssuedAt", func(r *store.Issuance) { r.IssuedAt = time.Time{} }},
		{"zero NotAfter", func(r *store.Issuance) { r.NotAfter = time.Time{} }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := rec("bb", "spiffe://example.org/b", 1, 2)
			tt.modify(&r)
			err := s.RecordIssuance(ctx, r)
			if err == nil {
				t.Fatal("RecordIssuance succeeded")
			}
			if !strings.HasPrefix(err.Error(), "boltstore: ") {
				t.Errorf("error %q lacks the package prefix", err)
			}
			if all, _ := s.Issuances(ctx, store.IssuanceFilter{}); len(all) != 1 {
				t.Errorf("store holds %d records after a failed RecordIssuance, want 1", len(all))
			}
		})
	}
}

// TestBatchErrorsPerRecord checks that records that cannot be written do not
// fail the others written in the same transaction.
func TestBatchErrorsPerRecord(t *testing.T) {
	ctx := context.Background()
	s := open(t, "")
	const id = "spiffe://example.org/a"
	if err := s.RecordIssuance(ctx, rec("01", id, 1, 2)); err != nil {
		t.Fatal(err)
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	before := boltstore.Commits(s)
	errs := boltstore.CommitBatch(s,
		[]store.Issuance{rec("02", id, 2, 3), rec("01", id, 3, 4), rec("03", id, 4, 5), rec("02", id, 5, 6), rec("04", id, 6, 7)},
		[]context.Context{4: cancelled})
	if n := boltstore.Commits(s) - before; n != 1 {
		t.Errorf("batch written in %d commits, want 1", n)
	}
	want := []error{nil, boltstore.ErrDuplicate, nil, boltstore.ErrDuplicate, context.Canceled}
	for i := range want {
		if want[i] == nil && errs[i] != nil || !errors.Is(errs[i], want[i]) {
			t.Errorf("record %d: got %v, want %v", i, errs[i], want[i])
		}
	}
	all, err := s.Issuances(ctx, store.IssuanceFilter{})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := serials(all), []string{"01", "02", "03"}; !reflect.DeepEqual(got, want) {
		t.Errorf("stored %v, want %v", got, want)
	}
	// The duplicate of 02 did not overwrite it.
	if r, _ := s.Issuance(ctx, "02"); r == nil || !r.IssuedAt.Equal(t0.Add(2*time.Hour)) {
		t.Errorf("record 02 = %+v, want the first one written", r)
	}
}

func TestPersistence(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "sub", "dir", "meshca.db")
	s, err := boltstore.Open(path, boltstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	st := store.CAState{Active: &store.CAKey{CertDER: []byte("cert"), Key: store.SealedKey{Alg: "none", Data: []byte("key")}}}
	v, err := s.SaveCAState(ctx, &st)
	if err != nil {
		t.Fatal(err)
	}
	st.Version = v
	r := rec("abcdef", "spiffe://example.org/a", 1, 2)
	rev := store.Revocation{SPIFFEID: "spiffe://example.org/a", RevokedAt: t0, Reason: "compromised"}
	if err := s.RecordIssuance(ctx, r); err != nil {
		t.Fatal(err)
	}
	if err := s.Revoke(ctx, rev); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}

	s = open(t, path)
	gotSt, err := s.LoadCAState(ctx)
	if err != nil || !reflect.DeepEqual(*gotSt, st) {
		t.Errorf("LoadCAState after reopening: got (%+v, %v), want %+v", gotSt, err, st)
	}
	got, err := s.Issuances(ctx, store.IssuanceFilter{SPIFFEID: r.SPIFFEID})
	if err != nil || !reflect.DeepEqual(got, []store.Issuance{r}) {
		t.Errorf("Issuances after reopening: got (%+v, %v), want %+v", got, err, r)
	}
	revs, err := s.Revocations(ctx, "", rev.SPIFFEID)
	if err != nil || !reflect.DeepEqual(revs, []store.Revocation{rev}) {
		t.Errorf("Revocations after reopening: got (%+v, %v), want %+v", revs, err, rev)
	}
}

func TestPruneIssuances(t *testing.T) {
	const (
		a = "spiffe://example.org/a"
		b = "spiffe://example.org/b"
	)
	all := []store.Issuance{
		rec("01", a, 0, 1),
		rec("02", b, 0, 2),
		rec("03", a, 1, 3),
		rec("04", b, 2, 4),
		rec("05", a, 3, 5),
	}
	tests := []struct {
		name    string
		cutoff  time.Time
		removed int
		kept    []string
	}{
		{"nothing expired", t0, 0, []string{"01", "02", "03", "04", "05"}},
		{"cutoff equal to a NotAfter keeps it", t0.Add(1 * time.Hour), 0, []string{"01", "02", "03", "04", "05"}},
		{"just after a NotAfter", t0.Add(1*time.Hour + 1), 1, []string{"02", "03", "04", "05"}},
		{"some expired", t0.Add(3*time.Hour + time.Minute), 3, []string{"04", "05"}},
		{"all expired", t0.Add(10 * time.Hour), 5, []string{}},
		{"cutoff before 1970", time.Date(1900, 1, 1, 0, 0, 0, 0, time.UTC), 0, []string{"01", "02", "03", "04", "05"}},
		{"cutoff after 2262", time.Date(3000, 1, 1, 0, 0, 0, 0, time.UTC), 5, []string{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			s := open(t, "")
			for _, r := range all {
				if err := s.RecordIssuance(ctx, r); err != nil {
					t.Fatal(err)
				}
			}
			n, err := s.PruneIssuances(ctx, tt.cutoff)
			if err != nil || n != tt.removed {
				t.Fatalf("PruneIssuances: got (%d, %v), want (%d, nil)", n, err, tt.removed)
			}
			got, err := s.Issuances(ctx, store.IssuanceFilter{})
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(serials(got), tt.kept) {
				t.Errorf("kept %v, want %v", serials(got), tt.kept)
			}
			// Every index lost exactly the pruned records' entries.
			k := len(tt.kept)
			if counts := boltstore.KeyCounts(s); counts != [4]int{k, k, k, k} {
				t.Errorf("keys in records and NotAfter, IssuedAt, SPIFFE ID indexes: %v, want %d each", counts, k)
			}
			var byID []string
			for _, id := range []string{a, b} {
				got, err := s.Issuances(ctx, store.IssuanceFilter{SPIFFEID: id})
				if err != nil {
					t.Fatal(err)
				}
				byID = append(byID, serials(got)...)
			}
			if len(byID) != k {
				t.Errorf("by-ID listings return %v, want %d records", byID, k)
			}
			for _, serial := range serials(all) {
				_, err := s.Issuance(ctx, serial)
				if kept := strings.Contains(strings.Join(tt.kept, ","), serial); kept != (err == nil) {
					t.Errorf("Issuance(%s) after prune: %v", serial, err)
				}
			}
		})
	}
}

func TestPruneManyRecords(t *testing.T) {
	// More than one prune transaction's worth.
	ctx := context.Background()
	s := open(t, "")
	const n = 12000
	recs := make([]store.Issuance, n)
	for i := range recs {
		recs[i] = rec(fmt.Sprintf("%04x", i), "spiffe://example.org/a", 0, 1+i%2)
	}
	for _, err := range boltstore.CommitBatch(s, recs, nil) {
		if err != nil {
			t.Fatal(err)
		}
	}
	got, err := s.PruneIssuances(ctx, t0.Add(90*time.Minute))
	if err != nil || got != n/2 {
		t.Fatalf("PruneIssuances: got (%d, %v), want (%d, nil)", got, err, n/2)
	}
	if counts := boltstore.KeyCounts(s); counts != [4]int{n / 2, n / 2, n / 2, n / 2} {
		t.Errorf("keys left: %v, want %d each", counts, n/2)
	}
}

func TestRevocations(t *testing.T) {
	const (
		a  = "spiffe://example.org/a"
		ab = "spiffe://example.org/ab"
	)
	bySerial := store.Revocation{Serial: "0a", RevokedAt: t0, Reason: "key compromise"}
	byA1 := store.Revocation{SPIFFEID: a, RevokedAt: t0.Add(time.Hour), Reason: "first"}
	byA2 := store.Revocation{SPIFFEID: a, RevokedAt: t0.Add(2 * time.Hour), Reason: "second"}
	byAB := store.Revocation{SPIFFEID: ab, RevokedAt: t0, Reason: "other"}
	ctx := context.Background()
	s := open(t, "")
	for _, r := range []store.Revocation{byA2, bySerial, byAB, byA1} {
		if err := s.Revoke(ctx, r); err != nil {
			t.Fatalf("Revoke(%+v): %v", r, err)
		}
	}
	tests := []struct {
		name           string
		serial, spiffe string
		want           []store.Revocation
	}{
		{"by serial", "0a", "", []store.Revocation{bySerial}},
		{"by ID, oldest first", "", a, []store.Revocation{byA1, byA2}},
		{"by ID that is another's prefix", "", ab, []store.Revocation{byAB}},
		{"either", "0a", ab, []store.Revocation{bySerial, byAB}},
		{"unknown serial, known ID", "0b", a, []store.Revocation{byA1, byA2}},
		{"nothing matches", "0b", "spiffe://example.org/c", nil},
		{"neither given", "", "", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := s.Revocations(ctx, tt.serial, tt.spiffe)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Revocations(%q, %q): got %+v, want %+v", tt.serial, tt.spiffe, got, tt.want)
			}
		})
	}
}

func TestRevokeInvalid(t *testing.T) {
	tests := []struct {
		name string
		r    store.Revocation
	}{
		{"neither serial nor ID", store.Revocation{RevokedAt: t0}},
		{"both serial and ID", store.Revocation{Serial: "0a", SPIFFEID: "spiffe://example.org/a", RevokedAt: t0}},
		{"serial not lowercase hex", store.Revocation{Serial: "0A", RevokedAt: t0}},
		{"ID with NUL", store.Revocation{SPIFFEID: "spiffe://example.org/a\x00", RevokedAt: t0}},
		{"zero time", store.Revocation{Serial: "0a"}},
	}
	ctx := context.Background()
	s := open(t, "")
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := s.Revoke(ctx, tt.r)
			if err == nil || !strings.HasPrefix(err.Error(), "boltstore: ") {
				t.Fatalf("Revoke: got %v, want a boltstore error", err)
			}
			if got, _ := s.Revocations(ctx, tt.r.Serial, "spiffe://example.org/a"); len(got) != 0 {
				t.Errorf("invalid revocation stored: %+v", got)
			}
		})
	}
}

func TestConcurrentRecordIssuance(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "meshca.db")
	s := open(t, path)
	const n = 200
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			<-start
			if err := s.RecordIssuance(ctx, rec(fmt.Sprintf("%032x", i), "spiffe://example.org/a", i, i+1)); err != nil {
				t.Errorf("RecordIssuance: %v", err)
			}
		})
	}
	close(start)
	wg.Wait()
	commits := boltstore.Commits(s)
	t.Logf("%d records in %d commits", n, commits)
	if commits >= n {
		t.Errorf("%d records took %d commits: not grouped", n, commits)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = open(t, path)
	got, err := s.Issuances(ctx, store.IssuanceFilter{})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != n {
		t.Errorf("%d records durable after reopening, want %d", len(got), n)
	}
}

func TestCloseWithPendingRecords(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "meshca.db")
	baseline := runtime.NumGoroutine()
	s, err := boltstore.Open(path, boltstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	var ok sync.Map
	var wg sync.WaitGroup
	for i := range 100 {
		wg.Go(func() {
			serial := fmt.Sprintf("%032x", i)
			switch err := s.RecordIssuance(ctx, rec(serial, "spiffe://example.org/a", 1, 2)); {
			case err == nil:
				ok.Store(serial, true)
			case !errors.Is(err, boltstore.ErrClosed):
				t.Errorf("RecordIssuance racing Close: %v", err)
			}
		})
	}
	time.Sleep(time.Millisecond)
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	wg.Wait()
	// The committer is gone.
	for deadline := time.Now().Add(5 * time.Second); runtime.NumGoroutine() > baseline; {
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines after Close, %d before Open", runtime.NumGoroutine(), baseline)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Every record reported written was.
	s = open(t, path)
	for serial := range ok.Range {
		if _, err := s.Issuance(ctx, serial.(string)); err != nil {
			t.Errorf("record %s reported written: %v", serial, err)
		}
	}
}

func TestOpenInUse(t *testing.T) {
	path := filepath.Join(t.TempDir(), "meshca.db")
	open(t, path)
	start := time.Now()
	s, err := boltstore.Open(path, boltstore.Options{Timeout: 50 * time.Millisecond})
	if err == nil {
		s.Close()
		t.Fatal("second Open of the same file succeeded")
	}
	if !strings.Contains(err.Error(), "in use by another process") {
		t.Errorf("second Open: got %q, want it to say the file is in use", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("second Open took %v to fail", d)
	}
}

func TestFileMode(t *testing.T) {
	tests := []struct {
		name     string
		existing os.FileMode // 0: no file yet
		warn     bool
	}{
		{"new file", 0, false},
		{"existing private file", 0o600, false},
		{"existing world-readable file", 0o644, true},
		{"existing group-readable file", 0o640, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "state")
			path := filepath.Join(dir, "meshca.db")
			if tt.existing != 0 {
				s, err := boltstore.Open(path, boltstore.Options{})
				if err != nil {
					t.Fatal(err)
				}
				s.Close()
				if err := os.Chmod(path, tt.existing); err != nil {
					t.Fatal(err)
				}
			}
			var log bytes.Buffer
			s, err := boltstore.Open(path, boltstore.Options{Logger: slog.New(slog.NewTextHandler(&log, nil))})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			for p, want := range map[string]os.FileMode{path: 0o600, dir: 0o700} {
				fi, err := os.Stat(p)
				if err != nil {
					t.Fatal(err)
				}
				if got := fi.Mode().Perm(); got != want {
					t.Errorf("mode of %s: %v, want %v", p, got, want)
				}
			}
			if warned := strings.Contains(log.String(), "restricted it to mode 0600"); warned != tt.warn {
				t.Errorf("warned = %v, want %v; log: %s", warned, tt.warn, log.String())
			}
		})
	}
}

// methods calls every Store method but Close, for tests of what they all do.
var methods = []struct {
	name string
	call func(context.Context, *boltstore.Store) error
}{
	{"LoadCAState", func(ctx context.Context, s *boltstore.Store) error {
		_, err := s.LoadCAState(ctx)
		return err
	}},
	{"SaveCAState", func(ctx context.Context, s *boltstore.Store) error {
		_, err := s.SaveCAState(ctx, &store.CAState{})
		return err
	}},
	{"RecordIssuance", func(ctx context.Context, s *boltstore.Store) error {
		return s.RecordIssuance(ctx, rec("0123", "spiffe://example.org/a", 1, 2))
	}},
	{"Issuance", func(ctx context.Context, s *boltstore.Store) error {
		_, err := s.Issuance(ctx, "0123")
		return err
	}},
	{"Issuances", func(ctx context.Context, s *boltstore.Store) error {
		_, err := s.Issuances(ctx, store.IssuanceFilter{})
		return err
	}},
	{"PruneIssuances", func(ctx context.Context, s *boltstore.Store) error {
		_, err := s.PruneIssuances(ctx, t0)
		return err
	}},
	{"Revoke", func(ctx context.Context, s *boltstore.Store) error {
		return s.Revoke(ctx, store.Revocation{Serial: "0123", RevokedAt: t0})
	}},
	{"Revocations", func(ctx context.Context, s *boltstore.Store) error {
		_, err := s.Revocations(ctx, "0123", "")
		return err
	}},
}

func TestContextCancelled(t *testing.T) {
	s := open(t, "")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for _, m := range methods {
		t.Run(m.name, func(t *testing.T) {
			if err := m.call(ctx, s); !errors.Is(err, context.Canceled) {
				t.Errorf("got %v, want context.Canceled", err)
			}
		})
	}
	// Nothing was written.
	if counts := boltstore.KeyCounts(s); counts != [4]int{} {
		t.Errorf("keys after cancelled calls: %v", counts)
	}
	if _, err := s.LoadCAState(context.Background()); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("LoadCAState after a cancelled save: %v", err)
	}
}

func TestClosed(t *testing.T) {
	s := open(t, "")
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	for _, m := range methods {
		t.Run(m.name, func(t *testing.T) {
			if err := m.call(context.Background(), s); !errors.Is(err, boltstore.ErrClosed) {
				t.Errorf("got %v, want ErrClosed", err)
			}
		})
	}
}

func BenchmarkRecordIssuance(b *testing.B) {
	bench := func(b *testing.B, run func(b *testing.B, s *boltstore.Store, next func() store.Issuance)) {
		s := open(b, "")
		var n atomic.Uint64
		next := func() store.Issuance {
			i := n.Add(1)
			return rec(fmt.Sprintf("%032x", i), "spiffe://example.org/workload", int(i%1000), 1000+int(i%1000))
		}
		before := boltstore.Commits(s)
		b.ResetTimer()
		run(b, s, next)
		b.StopTimer()
		b.ReportMetric(float64(boltstore.Commits(s)-before)/float64(b.N), "commits/op")
	}
	b.Run("sequential", func(b *testing.B) {
		bench(b, func(b *testing.B, s *boltstore.Store, next func() store.Issuance) {
			ctx := context.Background()
			for range b.N {
				if err := s.RecordIssuance(ctx, next()); err != nil {
					b.Fatal(err)
				}
			}
		})
	})
	b.Run("parallel", func(b *testing.B) {
		// CA requests wait on the disk, not the CPU: model many of them.
		b.SetParallelism(32)
		bench(b, func(b *testing.B, s *boltstore.Store, next func() store.Issuance) {
			ctx := context.Background()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if err := s.RecordIssuance(ctx, next()); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	})
}
