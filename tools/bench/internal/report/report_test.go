package report

import (
	"testing"
	"time"
)

func TestFormats(t *testing.T) {
	for _, tc := range []struct {
		name, got, want string
	}{
		{"small int", Int(999), "999"},
		{"thousands", Int(1234567), "1,234,567"},
		{"negative", Int(-4500), "-4,500"},
		{"micros", Micros(322 * time.Microsecond), "322 µs"},
		{"micros past 10 ms", Micros(12 * time.Millisecond), "12 ms"},
		{"millis under 10", Millis(3940 * time.Microsecond), "3.9 ms"},
		{"MiB", MiB(369 << 20), "369 MiB"},
		{"codes by count", Codes(map[string]int{"Unavailable": 3, "DeadlineExceeded": 12, "OK": 0}), "12 DeadlineExceeded, 3 Unavailable"},
		{"no codes", Codes(nil), "0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.got != tc.want {
				t.Fatalf("got %q, want %q", tc.got, tc.want)
			}
		})
	}
}
