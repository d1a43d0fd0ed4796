package clocktest

import (
	"testing"
	"time"
)

// Eventually polls cond on the wall clock until it holds, for what
// happens on another goroutine or process (an informer, the API server, a
// goroutine reaching its wait); it fails t after 30 s. Time the code under
// test reads comes from Fake; this only bounds how long the test waits.
func Eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not after 30s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
