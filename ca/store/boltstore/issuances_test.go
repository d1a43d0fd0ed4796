package boltstore_test

import (
	"context"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/meshca/meshca/ca/store"
	"github.com/meshca/meshca/ca/store/boltstore"
)

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
			for _, r := range all {
				serial := r.Serial
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
