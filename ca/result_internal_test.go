package ca

import (
	"errors"
	"fmt"
	"testing"

	"github.com/meshca/meshca/ca/store"
)

// TestResult: the metrics' result label of each kind of failure of Sign and
// MintJWTSVID, wrapped as they return it.
func TestResult(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want string
	}{
		{"ok", nil, "ok"},
		{"answered elsewhere", fmt.Errorf("ca: %w", store.ErrConflict), "answered-elsewhere"},
		{"bad CSR", fmt.Errorf("%w: bad", ErrInvalidCSR), "invalid"},
		{"bad JWT request", fmt.Errorf("%w: no audience", ErrInvalidJWTRequest), "invalid"},
		{"bad TTL", fmt.Errorf("%w: negative", ErrInvalidTTL), "invalid"},
		{"other trust domain", fmt.Errorf("%w: elsewhere", ErrIdentityMismatch), "denied"},
		{"store down", fmt.Errorf("%w: recording failed", ErrUnavailable), "unavailable"},
		{"anything else", errors.New("boom"), "error"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := result(tt.err); got != tt.want {
				t.Errorf("result(%v) = %q, want %q", tt.err, got, tt.want)
			}
		})
	}
}
