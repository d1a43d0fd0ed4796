package boltstore_test

import (
	"context"
	"strings"
	"testing"

	"github.com/meshca/meshca/ca/store"
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
