package boltstore_test

import (
	"context"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/meshca/meshca/ca/store"
)

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
