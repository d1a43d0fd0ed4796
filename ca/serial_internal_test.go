package ca

import (
	"bytes"
	"math/big"
	"testing"
	"time"
)

// TestNewSerial: serials are positive, at most 128 bits, start with the
// Unix millisecond of their time (so they sort by issuance time across
// milliseconds) and differ within one millisecond.
func TestNewSerial(t *testing.T) {
	for _, tc := range []struct {
		name string
		at   time.Time
		ms   uint64
	}{
		{"now", time.Date(2026, 11, 23, 22, 0, 0, 123e6, time.UTC), uint64(time.Date(2026, 11, 23, 22, 0, 0, 123e6, time.UTC).UnixMilli())},
		{"epoch", time.Unix(0, 0), 1},
		{"before the epoch", time.Unix(-10, 0), 1},
		{"48-bit clock wrapped", time.UnixMilli(1 << 48), 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, err := newSerial(tc.at)
			if err != nil {
				t.Fatal(err)
			}
			b, err := newSerial(tc.at)
			if err != nil {
				t.Fatal(err)
			}
			if a.Sign() <= 0 || a.BitLen() > 128 || a.Cmp(b) == 0 {
				t.Fatalf("serials %x and %x: want positive, distinct, ≤128 bits", a, b)
			}
			if got := new(big.Int).Rsh(a, 80).Uint64(); got != tc.ms {
				t.Fatalf("serial %x starts with %d, want %d", a, got, tc.ms)
			}
		})
	}
	earlier, _ := newSerial(time.UnixMilli(1_800_000_000_000))
	later, _ := newSerial(time.UnixMilli(1_800_000_000_001))
	if bytes.Compare(earlier.FillBytes(make([]byte, 16)), later.FillBytes(make([]byte, 16))) >= 0 {
		t.Fatal("a serial of a later millisecond does not sort after")
	}
}
