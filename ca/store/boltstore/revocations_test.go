package boltstore_test

import (
	"context"
	"fmt"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshca/meshca/ca/store"
	"github.com/meshca/meshca/ca/store/boltstore"
)

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

// TestRevocationKeysInMemory: Revocations answers from the deny-list's keys
// held in memory when none matches, so those must follow every Revoke at
// once, every PruneRevocations, and a reopening.
func TestRevocationKeysInMemory(t *testing.T) {
	const idA, idAB, idB = "spiffe://example.org/a", "spiffe://example.org/a/b", "spiffe://example.org/b"
	at := func(h int) time.Time { return t0.Add(time.Duration(h) * time.Hour) }
	type query struct {
		serial, id string
		want       []int // indexes into revs
	}
	tests := []struct {
		name   string
		revs   []store.Revocation
		cutoff time.Time // zero: no prune
		pruned int
		after  []query // after the prune, then after reopening
		keys   [2][]string
	}{
		{
			name:  "serial",
			revs:  []store.Revocation{{Serial: "0a", RevokedAt: t0}},
			after: []query{{"0a", "", []int{0}}, {"0a", idA, []int{0}}, {"0b", idA, nil}},
			keys:  [2][]string{{"0a"}, {}},
		},
		{
			name:  "ID",
			revs:  []store.Revocation{{SPIFFEID: idA, RevokedAt: t0}},
			after: []query{{"", idA, []int{0}}, {"0a", idA, []int{0}}, {"", idAB, nil}, {"", "spiffe://example.org", nil}},
			keys:  [2][]string{{}, {idA}},
		},
		{
			name: "revoked then pruned serial",
			revs: []store.Revocation{
				{Serial: "0a", RevokedAt: t0, ExpiresAt: at(1)},
				{Serial: "0b", RevokedAt: t0, ExpiresAt: at(3)},
			},
			cutoff: at(2), pruned: 1,
			after: []query{{"0a", "", nil}, {"0b", "", []int{1}}},
			keys:  [2][]string{{"0b"}, {}},
		},
		{
			name: "ID revoked twice, pruned partially",
			revs: []store.Revocation{
				{SPIFFEID: idA, RevokedAt: t0, ExpiresAt: at(1)},
				{SPIFFEID: idA, RevokedAt: at(1), ExpiresAt: at(5)},
			},
			cutoff: at(2), pruned: 1,
			after: []query{{"", idA, []int{1}}},
			keys:  [2][]string{{}, {idA}},
		},
		{
			name: "ID revoked twice, both pruned",
			revs: []store.Revocation{
				{SPIFFEID: idA, RevokedAt: t0, ExpiresAt: at(1)},
				{SPIFFEID: idA, RevokedAt: at(1), ExpiresAt: at(2)},
				{SPIFFEID: idAB, RevokedAt: t0, ExpiresAt: at(1)},
				{SPIFFEID: idB, RevokedAt: t0},
			},
			cutoff: at(3), pruned: 3,
			after: []query{{"", idA, nil}, {"", idAB, nil}, {"", idB, []int{3}}},
			keys:  [2][]string{{}, {idB}},
		},
		{
			name: "ID pruned, the ID it is a prefix of kept",
			revs: []store.Revocation{
				{SPIFFEID: idA, RevokedAt: t0, ExpiresAt: at(1)},
				{SPIFFEID: idAB, RevokedAt: t0},
			},
			cutoff: at(3), pruned: 1,
			after: []query{{"", idA, nil}, {"", idAB, []int{1}}},
			keys:  [2][]string{{}, {idAB}},
		},
		{
			name:   "revoked again after pruned",
			revs:   []store.Revocation{{Serial: "0a", RevokedAt: t0, ExpiresAt: at(1)}, {SPIFFEID: idA, RevokedAt: t0, ExpiresAt: at(1)}},
			cutoff: at(2), pruned: 2,
			after: []query{{"0a", idA, nil}},
			keys:  [2][]string{{}, {}},
		},
	}
	ctx := context.Background()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "meshca.db")
			s := open(t, path)
			for _, r := range tt.revs {
				if err := s.Revoke(ctx, r); err != nil {
					t.Fatal(err)
				}
				got, err := s.Revocations(ctx, r.Serial, r.SPIFFEID)
				if err != nil || !slices.Contains(got, r) {
					t.Fatalf("Revocations right after Revoke(%+v): got (%+v, %v)", r, got, err)
				}
			}
			if !tt.cutoff.IsZero() {
				if n, err := s.PruneRevocations(ctx, tt.cutoff); err != nil || n != tt.pruned {
					t.Fatalf("PruneRevocations: got (%d, %v), want %d", n, err, tt.pruned)
				}
			}
			check := func(t *testing.T, s *boltstore.Store) {
				for _, q := range tt.after {
					var want []store.Revocation
					for _, i := range q.want {
						want = append(want, tt.revs[i])
					}
					if got, err := s.Revocations(ctx, q.serial, q.id); err != nil || !reflect.DeepEqual(got, want) {
						t.Errorf("Revocations(%q, %q): got (%+v, %v), want %+v", q.serial, q.id, got, err, want)
					}
				}
				mem, file := boltstore.DeniedKeys(s)
				if !reflect.DeepEqual(mem, tt.keys) || !reflect.DeepEqual(file, tt.keys) {
					t.Errorf("keys in memory %q, in the file %q, want %q", mem, file, tt.keys)
				}
			}
			check(t, s)
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			t.Run("reopened", func(t *testing.T) { check(t, open(t, path)) })
			if tt.cutoff.IsZero() {
				return
			}
			// Revoked again after the prune: seen again.
			r := tt.revs[0]
			r.ExpiresAt = time.Time{}
			s = open(t, path)
			if err := s.Revoke(ctx, r); err != nil {
				t.Fatal(err)
			}
			if got, err := s.Revocations(ctx, r.Serial, r.SPIFFEID); err != nil || !slices.Contains(got, r) {
				t.Errorf("Revocations after revoking again: got (%+v, %v)", got, err)
			}
		})
	}
}

// TestRevocationsDuringPrunes: Revoke and PruneRevocations racing on the
// same keys leave the keys in memory as the file has them, and a revocation
// is seen as soon as Revoke returns.
func TestRevocationsDuringPrunes(t *testing.T) {
	ctx := context.Background()
	s := open(t, "")
	expired, cutoff := t0.Add(time.Hour), t0.Add(2*time.Hour)
	const id = "spiffe://example.org/a"
	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Go(func() { // pruner
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := s.PruneRevocations(ctx, cutoff); err != nil {
				t.Error(err)
				return
			}
		}
	})
	wg.Go(func() { // reader
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := s.Revocations(ctx, "0a", id); err != nil {
				t.Error(err)
				return
			}
		}
	})
	const n = 50
	for i := range n {
		// Revoked with an entry the pruner deletes, then for good.
		for _, r := range []store.Revocation{
			{Serial: "0a", RevokedAt: t0, ExpiresAt: expired},
			{Serial: "0a", RevokedAt: t0.Add(time.Duration(i) * time.Second)}, // replaces it
			{SPIFFEID: id, RevokedAt: t0, ExpiresAt: expired},
			{Serial: fmt.Sprintf("1%03x", i), RevokedAt: t0},
			{SPIFFEID: fmt.Sprintf("%s/%d", id, i), RevokedAt: t0},
		} {
			if err := s.Revoke(ctx, r); err != nil {
				t.Fatal(err)
			}
			if r.ExpiresAt.IsZero() {
				if got, err := s.Revocations(ctx, r.Serial, r.SPIFFEID); err != nil || !reflect.DeepEqual(got, []store.Revocation{r}) {
					t.Fatalf("Revocations right after Revoke(%+v): got (%+v, %v)", r, got, err)
				}
			}
		}
	}
	close(stop)
	wg.Wait()
	mem, file := boltstore.DeniedKeys(s)
	if !reflect.DeepEqual(mem, file) {
		t.Errorf("keys in memory %q, in the file %q", mem, file)
	}
	if len(mem[0]) < n || len(mem[1]) < n {
		t.Errorf("keys in memory: %d serials and %d IDs, want at least %d of each", len(mem[0]), len(mem[1]), n)
	}
}

// BenchmarkRevocations measures the check of a renewal, whose serial and
// SPIFFE ID are almost never revoked, with an empty deny-list and with
// 1000 serials and 100 IDs on it; and a check that finds an entry.
func BenchmarkRevocations(b *testing.B) {
	ctx := context.Background()
	const id = "spiffe://example.org/ns/default/sa/workload"
	fill := func(b *testing.B, s *boltstore.Store) {
		for i := range 1000 {
			r := store.Revocation{Serial: fmt.Sprintf("%031x", i), RevokedAt: t0}
			if i%10 == 0 {
				r = store.Revocation{SPIFFEID: fmt.Sprintf("%s%d", id, i), RevokedAt: t0}
			}
			if err := s.Revoke(ctx, r); err != nil {
				b.Fatal(err)
			}
		}
	}
	for _, bc := range []struct {
		name   string
		full   bool
		serial string
		want   int
	}{
		{"empty", false, "19a4b3c2d1e0f00112233445566778", 0},
		{"1000/none", true, "19a4b3c2d1e0f00112233445566778", 0},
		{"1000/serial", true, fmt.Sprintf("%031x", 7), 1},
	} {
		b.Run(bc.name, func(b *testing.B) {
			s := open(b, "")
			if bc.full {
				fill(b, s)
			}
			b.ReportAllocs()
			for b.Loop() {
				got, err := s.Revocations(ctx, bc.serial, id)
				if err != nil || len(got) != bc.want {
					b.Fatalf("Revocations: got (%+v, %v), want %d", got, err, bc.want)
				}
			}
		})
	}
}
