package proc

import (
	"testing"
	"time"
)

func TestParseStatCPU(t *testing.T) {
	for _, tc := range []struct {
		name string
		line string
		want time.Duration
		err  bool
	}{
		{"plain", "42 (meshca) S 1 42 42 0 -1 4194560 100 0 0 0 250 37 0 0 20 0 9 0", 2870 * time.Millisecond, false},
		{"name with spaces and parens", "7 (a (b) c) R 1 7 7 0 -1 0 0 0 0 0 1 2 0 0", 30 * time.Millisecond, false},
		{"short", "7 (x) R 1 2", 0, true},
		{"no name", "7 x R", 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseStatCPU([]byte(tc.line))
			if (err != nil) != tc.err || got != tc.want {
				t.Fatalf("parseStatCPU = %v, %v; want %v, error %v", got, err, tc.want, tc.err)
			}
		})
	}
}

func TestParseMachineTimes(t *testing.T) {
	for _, tc := range []struct {
		name string
		stat string
		want MachineTimes
		err  bool
	}{
		{"ten fields", "cpu  100 5 50 800 40 0 5 20 30 7\ncpu0 1 2 3 4 5 6 7 8 9 10\n", MachineTimes{Idle: 840, Total: 1020}, false},
		{"old kernel, seven fields", "cpu 10 0 10 70 10 0 0\n", MachineTimes{Idle: 80, Total: 100}, false},
		{"a field a later kernel adds", "cpu  100 5 50 800 40 0 5 20 30 7 999\n", MachineTimes{Idle: 840, Total: 1020}, false},
		{"not the cpu line", "intr 1 2 3 4 5 6\n", MachineTimes{}, true},
		{"not a number", "cpu 1 2 x 4 5 6\n", MachineTimes{}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseMachineTimes([]byte(tc.stat))
			if (err != nil) != tc.err || got != tc.want {
				t.Fatalf("parseMachineTimes = %+v, %v; want %+v, error %v", got, err, tc.want, tc.err)
			}
		})
	}
	if idle := (MachineTimes{Idle: 840, Total: 1000}).IdleSince(MachineTimes{Idle: 800, Total: 900}); idle != 0.4 {
		t.Fatalf("IdleSince = %v, want 0.4", idle)
	}
}
