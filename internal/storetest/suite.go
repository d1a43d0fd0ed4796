package storetest

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshca/meshca/ca/store"
)

// t0 is the suite's base time, in UTC so that values compare equal after a
// round trip through JSON.
var t0 = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

const (
	idA  = "spiffe://example.org/a"
	idAB = "spiffe://example.org/ab" // idA is a prefix of it
	idB  = "spiffe://example.org/b"
)

// Run checks that the stores open returns keep the contract of store.Store.
// open returns a new, empty store for each subtest, and closes it when the
// test ends (t.Cleanup).
func Run(t *testing.T, open func(t *testing.T) store.Store) {
	for _, tc := range []struct {
		name string
		run  func(*testing.T, func(*testing.T) store.Store)
	}{
		{"CAState", testCAState},
		{"CAStateConcurrentSaves", testCAStateConcurrentSaves},
		{"RecordIssuance", testRecordIssuance},
		{"Issuances", testIssuances},
		{"IssuancesWithRevocations", testIssuancesWithRevocations},
		{"PruneIssuances", testPruneIssuances},
		{"IssuedRequests", testIssuedRequests},
		{"IssuedRequestAnsweredOnce", testIssuedRequestAnsweredOnce},
		{"PruneIssuedRequests", testPruneIssuedRequests},
		{"Revocations", testRevocations},
		{"RevokeInvalid", testRevokeInvalid},
		{"PruneRevocations", testPruneRevocations},
		{"JoinTokens", testJoinTokens},
		{"JoinTokenConsumedOnce", testJoinTokenConsumedOnce},
		{"PruneJoinTokens", testPruneJoinTokens},
		{"FederatedBundles", testFederatedBundles},
		{"ContextDone", testContextDone},
		{"Ping", testPing},
	} {
		t.Run(tc.name, func(t *testing.T) { tc.run(t, open) })
	}
}

// Issuance returns a record issued at t0+issued hours and expiring at
// t0+expires hours.
func Issuance(serial, id string, issued, expires int) store.Issuance {
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

func serials(recs []store.IssuanceWithRevocations) []string {
	out := []string{}
	for _, r := range recs {
		out = append(out, r.Serial)
	}
	return out
}

func record(t *testing.T, s store.Store, recs ...store.Issuance) {
	t.Helper()
	for _, r := range recs {
		if err := s.RecordIssuance(context.Background(), r); err != nil {
			t.Fatalf("RecordIssuance(%s): %v", r.Serial, err)
		}
	}
}

func revoke(t *testing.T, s store.Store, revs ...store.Revocation) {
	t.Helper()
	for _, r := range revs {
		if err := s.Revoke(context.Background(), r); err != nil {
			t.Fatalf("Revoke(%+v): %v", r, err)
		}
	}
}

// hash returns a token hash, 64 hex digits, made of c.
func hash(c byte) string {
	b := make([]byte, 64)
	for i := range b {
		b[i] = c
	}
	return string(b)
}

func testCAState(t *testing.T, open func(*testing.T) store.Store) {
	ctx := context.Background()
	at := func(h int) time.Time { return time.Date(2026, 11, 1, h, 0, 0, 0, time.UTC) }
	s := open(t)
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
		{"root rotation prepared", store.CAState{Version: 3, Root: key(1), Active: key(2), Next: key(3), RootRotation: &store.RootRotation{
			Phase: store.PhasePrepared, OldRoots: [][]byte{{1}}, NewRoots: [][]byte{{4}, {5}}, NewRoot: key(4),
			PreparedAt: at(0), SwitchAfter: at(24)}}, 4},
		{"root rotation switched, an intermediate revoked", store.CAState{Version: 4, Root: key(4), Active: key(6), RootRotation: &store.RootRotation{
			Phase: store.PhaseSwitched, OldRoots: [][]byte{{1}}, NewRoots: [][]byte{{4}, {5}}, OldSigner: []byte{2},
			PreparedAt: at(0), SwitchAfter: at(24), SwitchedAt: at(25), RetireAfter: at(97)},
			RevokedIntermediates: []store.RevokedCA{{CertDER: []byte{2}, RevokedAt: at(30), Reason: "key compromise"}, {CertDER: []byte{3}, RevokedAt: at(30)}}}, 5},
		{"stale root rotation step", store.CAState{Version: 4, Root: key(4), Active: key(9), RootRotation: &store.RootRotation{Phase: store.PhaseCompleted}}, 0},
		{"root rotation completed", store.CAState{Version: 5, Root: key(4), Active: key(6), RootRotation: &store.RootRotation{
			Phase: store.PhaseCompleted, OldRoots: [][]byte{{1}}, NewRoots: [][]byte{{4}, {5}}, OldSigner: []byte{2},
			PreparedAt: at(0), SwitchAfter: at(24), SwitchedAt: at(25), RetireAfter: at(97), CompletedAt: at(97)}}, 6},
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
	t.Run("values are not shared", func(t *testing.T) {
		got, err := s.LoadCAState(ctx)
		if err != nil {
			t.Fatal(err)
		}
		got.Active.CertDER[0] = 0xff
		got.Next = nil
		again, err := s.LoadCAState(ctx)
		if err != nil || !reflect.DeepEqual(*again, want) {
			t.Errorf("LoadCAState after changing the last result: got (%+v, %v), want %+v", again, err, want)
		}
	})
}

func testCAStateConcurrentSaves(t *testing.T, open func(*testing.T) store.Store) {
	ctx := context.Background()
	s := open(t)
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

func testRecordIssuance(t *testing.T, open func(*testing.T) store.Store) {
	ctx := context.Background()
	s := open(t)
	first := Issuance("0a", idA, 1, 2)
	record(t, s, first)

	got, err := s.Issuance(ctx, "0a")
	if err != nil || !reflect.DeepEqual(*got, first) {
		t.Fatalf("Issuance: got (%+v, %v), want %+v", got, err, first)
	}
	got.Details["node"] = "changed"
	if again, _ := s.Issuance(ctx, "0a"); again == nil || again.Details["node"] != "n1" {
		t.Errorf("changing a returned record changed the stored one: %+v", again)
	}
	if _, err := s.Issuance(ctx, "ff"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Issuance of an unknown serial: got %v, want ErrNotFound", err)
	}

	tests := []struct {
		name   string
		modify func(*store.Issuance)
	}{
		{"duplicate serial", func(r *store.Issuance) { r.Serial = "0a" }},
		{"missing serial", func(r *store.Issuance) { r.Serial = "" }},
		{"missing SPIFFE ID", func(r *store.Issuance) { r.SPIFFEID = "" }},
		{"serial not lowercase hex", func(r *store.Issuance) { r.Serial = "0B" }},
		{"no issued_at", func(r *store.Issuance) { r.IssuedAt = time.Time{} }},
		{"record over MaxIssuanceLen", func(r *store.Issuance) {
			r.Details = map[string]string{"big": strings.Repeat("x", store.MaxIssuanceLen)}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := Issuance("0b", idB, 3, 4)
			tt.modify(&r)
			if err := s.RecordIssuance(ctx, r); err == nil {
				t.Fatal("RecordIssuance succeeded")
			}
			all, err := s.Issuances(ctx, store.IssuanceFilter{})
			if err != nil || !reflect.DeepEqual(serials(all), []string{"0a"}) {
				t.Errorf("records after a failed RecordIssuance: (%v, %v), want [0a]", serials(all), err)
			}
			if got, _ := s.Issuance(ctx, "0a"); got == nil || !reflect.DeepEqual(*got, first) {
				t.Errorf("record 0a = %+v, want the first one written", got)
			}
		})
	}
}

func testIssuances(t *testing.T, open func(*testing.T) store.Store) {
	ctx := context.Background()
	s := open(t)
	// Recorded out of issuance order on purpose.
	record(t, s,
		Issuance("0e", idAB, 5, 10),
		Issuance("0a", idA, 1, 10),
		Issuance("0c", idA, 3, 10),
		Issuance("0b", idB, 2, 10),
		Issuance("0d", idB, 4, 10),
		Issuance("0f", idA, 6, 10),
		Issuance("10", idB, 6, 10), // same time as 0f: serial breaks the tie
	)
	tests := []struct {
		name string
		f    store.IssuanceFilter
		want []string
	}{
		{"all", store.IssuanceFilter{}, []string{"0a", "0b", "0c", "0d", "0e", "0f", "10"}},
		{"by ID", store.IssuanceFilter{SPIFFEID: idA}, []string{"0a", "0c", "0f"}},
		{"by ID that is another's prefix", store.IssuanceFilter{SPIFFEID: idAB}, []string{"0e"}},
		{"by unknown ID", store.IssuanceFilter{SPIFFEID: "spiffe://example.org/none"}, []string{}},
		{"since", store.IssuanceFilter{IssuedSince: t0.Add(4 * time.Hour)}, []string{"0d", "0e", "0f", "10"}},
		{"since, between records", store.IssuanceFilter{IssuedSince: t0.Add(3*time.Hour + 1)}, []string{"0d", "0e", "0f", "10"}},
		{"since before 1970", store.IssuanceFilter{IssuedSince: time.Date(1900, 1, 1, 0, 0, 0, 0, time.UTC)}, []string{"0a", "0b", "0c", "0d", "0e", "0f", "10"}},
		{"since far future", store.IssuanceFilter{IssuedSince: time.Date(3000, 1, 1, 0, 0, 0, 0, time.UTC)}, []string{}},
		{"by ID since", store.IssuanceFilter{SPIFFEID: idB, IssuedSince: t0.Add(3 * time.Hour)}, []string{"0d", "10"}},
		{"limit", store.IssuanceFilter{Limit: 2}, []string{"0a", "0b"}},
		{"limit above count", store.IssuanceFilter{Limit: 100}, []string{"0a", "0b", "0c", "0d", "0e", "0f", "10"}},
		{"by ID with limit", store.IssuanceFilter{SPIFFEID: idB, Limit: 2}, []string{"0b", "0d"}},
		{"all filters", store.IssuanceFilter{SPIFFEID: idA, IssuedSince: t0.Add(2 * time.Hour), Limit: 1}, []string{"0c"}},
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
			for _, r := range got {
				if r.Revocations != nil {
					t.Errorf("record %s has revocations %+v, none stored", r.Serial, r.Revocations)
				}
			}
		})
	}
	t.Run("negative limit", func(t *testing.T) {
		if _, err := s.Issuances(ctx, store.IssuanceFilter{Limit: -1}); err == nil {
			t.Error("Issuances with a negative limit succeeded")
		}
	})
}

// testIssuancesWithRevocations checks that each record comes with every
// entry naming its serial or its SPIFFE ID, whether or not the entry
// covers it: the store applies no rule.
func testIssuancesWithRevocations(t *testing.T, open func(*testing.T) store.Store) {
	ctx := context.Background()
	s := open(t)
	record(t, s,
		Issuance("0a", idA, 1, 10),
		Issuance("0b", idA, 5, 10), // issued after both ID revocations
		Issuance("0c", idAB, 2, 10),
		Issuance("0d", idB, 3, 10),
	)
	serialA := store.Revocation{Serial: "0a", RevokedAt: t0.Add(4 * time.Hour), Reason: "key compromise"}
	byA1 := store.Revocation{SPIFFEID: idA, RevokedAt: t0.Add(2 * time.Hour), Reason: "first"}
	byA2 := store.Revocation{SPIFFEID: idA, RevokedAt: t0.Add(3 * time.Hour), Reason: "second", ExpiresAt: t0.Add(20 * time.Hour)}
	other := store.Revocation{Serial: "ff", RevokedAt: t0, Reason: "not listed"}
	revoke(t, s, byA2, other, serialA, byA1)

	want := map[string][]store.Revocation{
		"0a": {serialA, byA1, byA2},
		"0b": {byA1, byA2},
		"0c": nil, // idA is a prefix of its ID, not its ID
		"0d": nil,
	}
	tests := []struct {
		name string
		f    store.IssuanceFilter
		want []string
	}{
		{"all", store.IssuanceFilter{}, []string{"0a", "0c", "0d", "0b"}},
		{"by ID", store.IssuanceFilter{SPIFFEID: idA}, []string{"0a", "0b"}},
		{"limit", store.IssuanceFilter{Limit: 1}, []string{"0a"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := s.Issuances(ctx, tt.f)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(serials(got), tt.want) {
				t.Fatalf("Issuances: got %v, want %v", serials(got), tt.want)
			}
			for _, r := range got {
				if !reflect.DeepEqual(r.Revocations, want[r.Serial]) {
					t.Errorf("record %s: revocations %+v, want %+v", r.Serial, r.Revocations, want[r.Serial])
				}
			}
		})
	}
	t.Run("values are not shared", func(t *testing.T) {
		got, err := s.Issuances(ctx, store.IssuanceFilter{SPIFFEID: idA})
		if err != nil || len(got) != 2 {
			t.Fatalf("Issuances = %v, %v", serials(got), err)
		}
		got[1].Revocations[0].Reason = "changed"
		if got[0].Revocations[1].Reason != "first" {
			t.Error("two records share their revocations")
		}
		revs, err := s.Revocations(ctx, "", idA)
		if err != nil || !reflect.DeepEqual(revs, []store.Revocation{byA1, byA2}) {
			t.Errorf("Revocations after changing a listing: (%+v, %v)", revs, err)
		}
	})
}

func testPruneIssuances(t *testing.T, open func(*testing.T) store.Store) {
	all := []store.Issuance{
		Issuance("01", idA, 0, 1),
		Issuance("02", idB, 0, 2),
		Issuance("03", idA, 1, 3),
		Issuance("04", idB, 2, 4),
		Issuance("05", idA, 3, 5),
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
			s := open(t)
			record(t, s, all...)
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
			var byID []string
			for _, id := range []string{idA, idB} {
				got, err := s.Issuances(ctx, store.IssuanceFilter{SPIFFEID: id})
				if err != nil {
					t.Fatal(err)
				}
				byID = append(byID, serials(got)...)
			}
			if len(byID) != len(tt.kept) {
				t.Errorf("by-ID listings return %v, want %d records", byID, len(tt.kept))
			}
			for _, r := range all {
				_, err := s.Issuance(ctx, r.Serial)
				if kept := contains(tt.kept, r.Serial); kept != (err == nil) || !kept && !errors.Is(err, store.ErrNotFound) {
					t.Errorf("Issuance(%s) after prune: %v", r.Serial, err)
				}
			}
		})
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func testRevocations(t *testing.T, open func(*testing.T) store.Store) {
	bySerial := store.Revocation{Serial: "0a", RevokedAt: t0, Reason: "key compromise"}
	byA1 := store.Revocation{SPIFFEID: idA, RevokedAt: t0.Add(time.Hour), Reason: "first"}
	byA2 := store.Revocation{SPIFFEID: idA, RevokedAt: t0.Add(2 * time.Hour), Reason: "second", ExpiresAt: t0.Add(48 * time.Hour)}
	byAB := store.Revocation{SPIFFEID: idAB, RevokedAt: t0, Reason: "other"}
	ctx := context.Background()
	s := open(t)
	revoke(t, s, byA2, bySerial, byAB, byA1)
	tests := []struct {
		name           string
		serial, spiffe string
		want           []store.Revocation
	}{
		{"by serial", "0a", "", []store.Revocation{bySerial}},
		{"by ID, oldest first", "", idA, []store.Revocation{byA1, byA2}},
		{"by ID that is another's prefix", "", idAB, []store.Revocation{byAB}},
		{"either", "0a", idAB, []store.Revocation{bySerial, byAB}},
		{"unknown serial, known ID", "0b", idA, []store.Revocation{byA1, byA2}},
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

	t.Run("serial revoked again replaces its entry", func(t *testing.T) {
		again := store.Revocation{Serial: "0a", RevokedAt: t0.Add(time.Hour), Reason: "again"}
		revoke(t, s, again)
		if got, err := s.Revocations(ctx, "0a", ""); err != nil || !reflect.DeepEqual(got, []store.Revocation{again}) {
			t.Errorf("Revocations: got (%+v, %v), want %+v", got, err, again)
		}
	})
	t.Run("ID revoked again adds an entry, or replaces the one at the same time", func(t *testing.T) {
		byA3 := store.Revocation{SPIFFEID: idA, RevokedAt: t0.Add(90 * time.Minute), Reason: "third"}
		byA1bis := store.Revocation{SPIFFEID: idA, RevokedAt: byA1.RevokedAt, Reason: "first, again"}
		revoke(t, s, byA3, byA1bis)
		want := []store.Revocation{byA1bis, byA3, byA2}
		if got, err := s.Revocations(ctx, "", idA); err != nil || !reflect.DeepEqual(got, want) {
			t.Errorf("Revocations: got (%+v, %v), want %+v", got, err, want)
		}
	})
}

func testRevokeInvalid(t *testing.T, open func(*testing.T) store.Store) {
	tests := []struct {
		name string
		r    store.Revocation
	}{
		{"neither serial nor ID", store.Revocation{RevokedAt: t0}},
		{"both serial and ID", store.Revocation{Serial: "0a", SPIFFEID: idA, RevokedAt: t0}},
		{"zero time", store.Revocation{Serial: "0a"}},
	}
	ctx := context.Background()
	s := open(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := s.Revoke(ctx, tt.r); err == nil {
				t.Fatal("Revoke succeeded")
			}
			if got, _ := s.Revocations(ctx, "0a", idA); len(got) != 0 {
				t.Errorf("invalid revocation stored: %+v", got)
			}
		})
	}
}

func testPruneRevocations(t *testing.T, open func(*testing.T) store.Store) {
	at := func(h int) time.Time { return t0.Add(time.Duration(h) * time.Hour) }
	// Entries by serial and by ID, expiring at t0+1h, +2h, +3h or never.
	revs := []store.Revocation{
		{Serial: "01", RevokedAt: t0, ExpiresAt: at(1)},
		{Serial: "02", RevokedAt: t0, ExpiresAt: at(3)},
		{Serial: "03", RevokedAt: t0}, // older version: never pruned
		{SPIFFEID: idA, RevokedAt: at(-2), ExpiresAt: at(1)},
		{SPIFFEID: idA, RevokedAt: at(-1), ExpiresAt: at(2)},
		{SPIFFEID: idA, RevokedAt: t0},
		{SPIFFEID: idB, RevokedAt: t0, ExpiresAt: at(2)},
	}
	tests := []struct {
		name    string
		cutoff  time.Time
		removed int
		kept    []int // indexes into revs
	}{
		{"nothing expired", t0, 0, []int{0, 1, 2, 3, 4, 5, 6}},
		{"cutoff equal to an ExpiresAt keeps it", at(1), 0, []int{0, 1, 2, 3, 4, 5, 6}},
		{"just after an ExpiresAt", at(1).Add(1), 2, []int{1, 2, 4, 5, 6}},
		{"some expired", at(2).Add(time.Minute), 4, []int{1, 2, 5}},
		{"all that expire", at(100), 5, []int{2, 5}},
		{"zero cutoff", time.Time{}, 0, []int{0, 1, 2, 3, 4, 5, 6}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			s := open(t)
			revoke(t, s, revs...)
			record(t, s, Issuance("01", idA, -3, 10), Issuance("04", idB, -3, 10))
			n, err := s.PruneRevocations(ctx, tt.cutoff)
			if err != nil || n != tt.removed {
				t.Fatalf("PruneRevocations: got (%d, %v), want (%d, nil)", n, err, tt.removed)
			}
			// What is left is what Revocations and Issuances both see.
			want := map[string][]store.Revocation{}
			for _, i := range tt.kept {
				r := revs[i]
				want[r.Serial+r.SPIFFEID] = append(want[r.Serial+r.SPIFFEID], r)
			}
			for _, key := range []string{"01", "02", "03", idA, idB} {
				serial, id := key, ""
				if len(key) > 2 {
					serial, id = "", key
				}
				got, err := s.Revocations(ctx, serial, id)
				if err != nil || !reflect.DeepEqual(got, want[key]) {
					t.Errorf("Revocations(%q, %q): got (%+v, %v), want %+v", serial, id, got, err, want[key])
				}
			}
			recs, err := s.Issuances(ctx, store.IssuanceFilter{})
			if err != nil || len(recs) != 2 {
				t.Fatalf("Issuances: %v, %v", serials(recs), err)
			}
			for _, r := range recs {
				w := append(append([]store.Revocation(nil), want[r.Serial]...), want[r.SPIFFEID]...)
				if !reflect.DeepEqual(r.Revocations, w) {
					t.Errorf("record %s: revocations %+v, want %+v", r.Serial, r.Revocations, w)
				}
			}
		})
	}
}

func testJoinTokens(t *testing.T, open func(*testing.T) store.Store) {
	ctx := context.Background()
	s := open(t)
	now := t0
	tok := func(c byte, ttl time.Duration) store.JoinToken {
		return store.JoinToken{Hash: hash(c), SPIFFEID: idA, CreatedAt: now, ExpiresAt: now.Add(ttl)}
	}
	good, short := tok('a', time.Hour), tok('b', time.Minute)
	for _, jt := range []store.JoinToken{good, short} {
		if err := s.CreateJoinToken(ctx, jt); err != nil {
			t.Fatalf("CreateJoinToken: %v", err)
		}
	}

	invalid := []struct {
		name string
		t    store.JoinToken
	}{
		{"same hash as another", tok('a', 2*time.Hour)},
		{"no hash", store.JoinToken{SPIFFEID: idA, CreatedAt: now, ExpiresAt: now.Add(time.Hour)}},
		{"no SPIFFE ID", store.JoinToken{Hash: hash('c'), CreatedAt: now, ExpiresAt: now.Add(time.Hour)}},
		{"expires at creation", tok('d', 0)},
		{"already used", store.JoinToken{Hash: hash('e'), SPIFFEID: idA, CreatedAt: now, ExpiresAt: now.Add(time.Hour), UsedAt: now}},
	}
	for _, tt := range invalid {
		t.Run("create: "+tt.name, func(t *testing.T) {
			if err := s.CreateJoinToken(ctx, tt.t); err == nil {
				t.Fatal("CreateJoinToken succeeded")
			}
		})
	}

	// The steps run in order against the same store.
	used := good
	used.UsedAt, used.UsedBy = now.Add(time.Minute), "10.0.0.1:5000"
	steps := []struct {
		name    string
		hash    string
		now     time.Time
		want    *store.JoinToken // the token returned
		wantErr error
	}{
		{"unknown", hash('f'), now, nil, store.ErrJoinTokenUnknown},
		{"first use", good.Hash, used.UsedAt, &good, nil},
		{"replay", good.Hash, now.Add(2 * time.Minute), &used, store.ErrJoinTokenUsed},
		{"replay after expiry", good.Hash, now.Add(2 * time.Hour), &used, store.ErrJoinTokenUsed},
		{"at expiry", short.Hash, short.ExpiresAt, &short, store.ErrJoinTokenExpired},
		{"after expiry", short.Hash, short.ExpiresAt.Add(time.Hour), &short, store.ErrJoinTokenExpired},
	}
	for _, step := range steps {
		t.Run("consume: "+step.name, func(t *testing.T) {
			got, err := s.ConsumeJoinToken(ctx, step.hash, step.now, "10.0.0.1:5000")
			if step.wantErr == nil && err != nil || !errors.Is(err, step.wantErr) {
				t.Fatalf("ConsumeJoinToken: got %v, want %v", err, step.wantErr)
			}
			if step.wantErr == store.ErrJoinTokenUnknown && !errors.Is(err, store.ErrNotFound) {
				t.Errorf("ConsumeJoinToken of an unknown token: %v does not match ErrNotFound", err)
			}
			if !reflect.DeepEqual(got, step.want) {
				t.Errorf("ConsumeJoinToken returned %+v, want %+v", got, step.want)
			}
		})
	}
	t.Run("consume: just before expiry", func(t *testing.T) {
		jt := tok('9', time.Minute)
		if err := s.CreateJoinToken(ctx, jt); err != nil {
			t.Fatal(err)
		}
		if _, err := s.ConsumeJoinToken(ctx, jt.Hash, jt.ExpiresAt.Add(-1), "x"); err != nil {
			t.Fatalf("ConsumeJoinToken: %v", err)
		}
	})
}

// testJoinTokenConsumedOnce: of many concurrent uses exactly one wins.
func testJoinTokenConsumedOnce(t *testing.T, open func(*testing.T) store.Store) {
	ctx := context.Background()
	s := open(t)
	jt := store.JoinToken{Hash: hash('a'), SPIFFEID: idA, CreatedAt: t0, ExpiresAt: t0.Add(time.Hour)}
	if err := s.CreateJoinToken(ctx, jt); err != nil {
		t.Fatal(err)
	}
	const n = 50
	var wins, replays atomic.Int32
	var winner atomic.Value
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			by := fmt.Sprintf("10.0.0.%d:5000", i)
			_, err := s.ConsumeJoinToken(ctx, jt.Hash, t0, by)
			switch {
			case err == nil:
				wins.Add(1)
				winner.Store(by)
			case errors.Is(err, store.ErrJoinTokenUsed):
				replays.Add(1)
			default:
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if wins.Load() != 1 || replays.Load() != n-1 {
		t.Fatalf("%d uses succeeded and %d were replays; want 1 and %d", wins.Load(), replays.Load(), n-1)
	}
	got, err := s.ConsumeJoinToken(ctx, jt.Hash, t0, "late")
	if !errors.Is(err, store.ErrJoinTokenUsed) || got == nil || got.UsedBy != winner.Load() {
		t.Errorf("after the race: (%+v, %v), want the winner %v recorded", got, err, winner.Load())
	}
}

func testPruneJoinTokens(t *testing.T, open func(*testing.T) store.Store) {
	at := func(h int) time.Time { return t0.Add(time.Duration(h) * time.Hour) }
	// Tokens expiring at t0+1h, +2h and +3h; the first two used.
	toks := []store.JoinToken{
		{Hash: hash('1'), SPIFFEID: idA, CreatedAt: t0, ExpiresAt: at(1)},
		{Hash: hash('2'), SPIFFEID: idA, CreatedAt: t0, ExpiresAt: at(2)},
		{Hash: hash('3'), SPIFFEID: idB, CreatedAt: t0, ExpiresAt: at(3)},
	}
	tests := []struct {
		name    string
		cutoff  time.Time
		removed int
		kept    []int
	}{
		{"nothing expired", t0, 0, []int{0, 1, 2}},
		{"cutoff equal to an ExpiresAt keeps it", at(1), 0, []int{0, 1, 2}},
		{"used and expired", at(1).Add(1), 1, []int{1, 2}},
		{"unused and expired too", at(3).Add(1), 3, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			s := open(t)
			for i, jt := range toks {
				if err := s.CreateJoinToken(ctx, jt); err != nil {
					t.Fatal(err)
				}
				if i < 2 {
					if _, err := s.ConsumeJoinToken(ctx, jt.Hash, t0, "x"); err != nil {
						t.Fatal(err)
					}
				}
			}
			n, err := s.PruneJoinTokens(ctx, tt.cutoff)
			if err != nil || n != tt.removed {
				t.Fatalf("PruneJoinTokens: got (%d, %v), want (%d, nil)", n, err, tt.removed)
			}
			for i, jt := range toks {
				_, err := s.ConsumeJoinToken(ctx, jt.Hash, t0, "y")
				kept := false
				for _, k := range tt.kept {
					kept = kept || k == i
				}
				if pruned := errors.Is(err, store.ErrJoinTokenUnknown); pruned == kept {
					t.Errorf("token %d: kept = %v, but ConsumeJoinToken says %v", i, kept, err)
				}
			}
		})
	}
}

// testContextDone checks that every method but Close fails with the
// context's error and changes nothing when its context is done.
func testContextDone(t *testing.T, open func(*testing.T) store.Store) {
	s := open(t)
	bg := context.Background()
	record(t, s, Issuance("0a", idA, 1, 2))
	revoke(t, s, store.Revocation{Serial: "0a", RevokedAt: t0, ExpiresAt: t0})
	jt := store.JoinToken{Hash: hash('a'), SPIFFEID: idA, CreatedAt: t0, ExpiresAt: t0.Add(time.Hour)}
	if err := s.CreateJoinToken(bg, jt); err != nil {
		t.Fatal(err)
	}
	methods := []struct {
		name string
		call func(context.Context) error
	}{
		{"LoadCAState", func(ctx context.Context) error { _, err := s.LoadCAState(ctx); return err }},
		{"SaveCAState", func(ctx context.Context) error { _, err := s.SaveCAState(ctx, &store.CAState{}); return err }},
		{"RecordIssuance", func(ctx context.Context) error { return s.RecordIssuance(ctx, Issuance("0b", idA, 1, 2)) }},
		{"Issuance", func(ctx context.Context) error { _, err := s.Issuance(ctx, "0a"); return err }},
		{"Issuances", func(ctx context.Context) error { _, err := s.Issuances(ctx, store.IssuanceFilter{}); return err }},
		{"PruneIssuances", func(ctx context.Context) error { _, err := s.PruneIssuances(ctx, t0.Add(time.Hour*100)); return err }},
		{"RecordIssuanceOnce", func(ctx context.Context) error {
			return s.RecordIssuanceOnce(ctx, Issuance("0c", idA, 1, 2), Answer("req-0c", "0c"))
		}},
		{"IssuedRequest", func(ctx context.Context) error { _, err := s.IssuedRequest(ctx, "req-0c"); return err }},
		{"Revoke", func(ctx context.Context) error {
			return s.Revoke(ctx, store.Revocation{Serial: "0b", RevokedAt: t0})
		}},
		{"Revocations", func(ctx context.Context) error { _, err := s.Revocations(ctx, "0a", idA); return err }},
		{"PruneRevocations", func(ctx context.Context) error { _, err := s.PruneRevocations(ctx, t0.Add(time.Hour)); return err }},
		{"CreateJoinToken", func(ctx context.Context) error {
			return s.CreateJoinToken(ctx, store.JoinToken{Hash: hash('b'), SPIFFEID: idA, CreatedAt: t0, ExpiresAt: t0.Add(time.Hour)})
		}},
		{"ConsumeJoinToken", func(ctx context.Context) error { _, err := s.ConsumeJoinToken(ctx, jt.Hash, t0, "x"); return err }},
		{"PruneJoinTokens", func(ctx context.Context) error { _, err := s.PruneJoinTokens(ctx, t0.Add(100*time.Hour)); return err }},
		{"SaveFederatedBundle", func(ctx context.Context) error { return s.SaveFederatedBundle(ctx, federated("b.test", 1)) }},
		{"FederatedBundles", func(ctx context.Context) error { _, err := s.FederatedBundles(ctx); return err }},
		{"DeleteFederatedBundle", func(ctx context.Context) error { return s.DeleteFederatedBundle(ctx, "b.test") }},
		{"Ping", s.Ping},
	}
	ctx, cancel := context.WithCancel(bg)
	cancel()
	for _, m := range methods {
		t.Run(m.name, func(t *testing.T) {
			if err := m.call(ctx); !errors.Is(err, context.Canceled) {
				t.Errorf("got %v, want context.Canceled", err)
			}
		})
	}
	// Nothing changed.
	if _, err := s.LoadCAState(bg); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("LoadCAState: %v, want ErrNotFound", err)
	}
	if recs, err := s.Issuances(bg, store.IssuanceFilter{}); err != nil || !reflect.DeepEqual(serials(recs), []string{"0a"}) {
		t.Errorf("records: %v, %v; want [0a]", serials(recs), err)
	}
	if revs, err := s.Revocations(bg, "0a", ""); err != nil || len(revs) != 1 {
		t.Errorf("revocations of 0a: %+v, %v; want one", revs, err)
	}
	if revs, err := s.Revocations(bg, "0b", ""); err != nil || len(revs) != 0 {
		t.Errorf("revocations of 0b: %+v, %v; want none", revs, err)
	}
	if _, err := s.ConsumeJoinToken(bg, hash('b'), t0, "x"); !errors.Is(err, store.ErrJoinTokenUnknown) {
		t.Errorf("token created with a done context: %v", err)
	}
	if _, err := s.ConsumeJoinToken(bg, jt.Hash, t0, "x"); err != nil {
		t.Errorf("token consumed with a done context: %v", err)
	}
}

// testPing: an open store can record; a closed one cannot.
func testPing(t *testing.T, open func(*testing.T) store.Store) {
	s := open(t)
	if err := s.Ping(context.Background()); err != nil {
		t.Fatalf("Ping on an open store: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Ping(context.Background()); err == nil {
		t.Fatal("Ping on a closed store succeeded")
	}
}

// federated returns a federated bundle of td refreshed at t0+h hours.
func federated(td string, h int) store.FederatedBundle {
	at := t0.Add(time.Duration(h) * time.Hour)
	return store.FederatedBundle{
		TrustDomain: td,
		Bundle:      fmt.Appendf(nil, `{"keys":[],"spiffe_sequence":%d}`, h),
		Source:      store.FederatedFromEndpoint,
		RefreshedAt: at,
		ChangedAt:   t0,
	}
}

// testFederatedBundles: bundles are listed in trust domain order, a save
// replaces its trust domain's bundle, a delete removes it (and deleting
// one not stored is no error), and invalid bundles are refused.
func testFederatedBundles(t *testing.T, open func(*testing.T) store.Store) {
	ctx := context.Background()
	s := open(t)
	list := func() []store.FederatedBundle {
		t.Helper()
		got, err := s.FederatedBundles(ctx)
		if err != nil {
			t.Fatalf("FederatedBundles: %v", err)
		}
		return got
	}
	if got := list(); len(got) != 0 {
		t.Fatalf("an empty store lists %d federated bundles", len(got))
	}
	steps := []struct {
		name string
		do   func() error
		want []store.FederatedBundle
	}{
		{"save c", func() error { return s.SaveFederatedBundle(ctx, federated("c.test", 1)) }, []store.FederatedBundle{federated("c.test", 1)}},
		{"save b", func() error { return s.SaveFederatedBundle(ctx, federated("b.test", 2)) },
			[]store.FederatedBundle{federated("b.test", 2), federated("c.test", 1)}},
		{"replace c", func() error { return s.SaveFederatedBundle(ctx, federated("c.test", 3)) },
			[]store.FederatedBundle{federated("b.test", 2), federated("c.test", 3)}},
		{"delete b", func() error { return s.DeleteFederatedBundle(ctx, "b.test") }, []store.FederatedBundle{federated("c.test", 3)}},
		{"delete b again", func() error { return s.DeleteFederatedBundle(ctx, "b.test") }, []store.FederatedBundle{federated("c.test", 3)}},
	}
	for _, st := range steps {
		if err := st.do(); err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		if got := list(); !reflect.DeepEqual(got, st.want) {
			t.Fatalf("%s: stored\n%+v\nwant\n%+v", st.name, got, st.want)
		}
	}
	bad := []struct {
		name   string
		change func(*store.FederatedBundle)
	}{
		{"no trust domain", func(b *store.FederatedBundle) { b.TrustDomain = "" }},
		{"upper case trust domain", func(b *store.FederatedBundle) { b.TrustDomain = "B.test" }},
		{"NUL in the trust domain", func(b *store.FederatedBundle) { b.TrustDomain = "b\x00.test" }},
		{"trust domain too long", func(b *store.FederatedBundle) { b.TrustDomain = strings.Repeat("a", store.MaxTrustDomainLen+1) }},
		{"empty bundle", func(b *store.FederatedBundle) { b.Bundle = nil }},
		{"bundle too long", func(b *store.FederatedBundle) { b.Bundle = make([]byte, store.MaxFederatedBundleLen+1) }},
		{"time before 1970", func(b *store.FederatedBundle) { b.RefreshedAt = time.Unix(-1, 0) }},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			b := federated("d.test", 4)
			tc.change(&b)
			if err := s.SaveFederatedBundle(ctx, b); err == nil {
				t.Fatal("accepted")
			}
		})
	}
	if got := list(); !reflect.DeepEqual(got, []store.FederatedBundle{federated("c.test", 3)}) {
		t.Fatalf("refused saves changed the store: %+v", got)
	}
}
