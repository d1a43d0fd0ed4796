package boltstore_test

import (
	"context"
	"fmt"
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
