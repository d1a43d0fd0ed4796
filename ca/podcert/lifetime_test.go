package podcert_test

import (
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/types"

	"github.com/meshca/meshca/ca/podcert"
)

func TestLifetime(t *testing.T) {
	for _, tc := range []struct {
		name   string
		maxExp *int32
		maxTTL time.Duration
		want   time.Duration
	}{
		{"maxExpirationSeconds left out", nil, 72 * time.Hour, 24 * time.Hour},
		{"the Kubernetes default", int32p(86400), 72 * time.Hour, 24 * time.Hour},
		{"the shortest Kubernetes allows", int32p(3600), 72 * time.Hour, time.Hour},
		{"more than --max-ttl", int32p(7862400), 72 * time.Hour, 72 * time.Hour},
		{"a default left out, --max-ttl shorter", nil, 12 * time.Hour, 12 * time.Hour},
		{"--max-ttl under an hour", int32p(3600), 30 * time.Minute, 30 * time.Minute},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := podcert.Lifetime(tc.maxExp, tc.maxTTL); got != tc.want {
				t.Fatalf("Lifetime = %s, want %s", got, tc.want)
			}
		})
	}
}

// TestRefreshAt: half the life ± 5 %, the same for the same request, at
// least RefreshMargin from either end.
func TestRefreshAt(t *testing.T) {
	nb := time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name     string
		life     time.Duration
		uid      string
		min, max time.Duration // from notBefore
	}{
		{"a day", 24 * time.Hour, "a", 24 * time.Hour * 45 / 100, 24 * time.Hour * 55 / 100},
		{"a day, another request", 24 * time.Hour, "b", 24 * time.Hour * 45 / 100, 24 * time.Hour * 55 / 100},
		{"an hour", time.Hour, "c", 27 * time.Minute, 33 * time.Minute},
		{"21 minutes: the margins win", 21 * time.Minute, "d", podcert.RefreshMargin, 11 * time.Minute},
		{"20 minutes: the one time allowed", 20 * time.Minute, "e", podcert.RefreshMargin, podcert.RefreshMargin},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := podcert.RefreshAt(nb, nb.Add(tc.life), types.UID("uid-"+tc.uid))
			if d := got.Sub(nb); d < tc.min || d > tc.max {
				t.Fatalf("RefreshAt at %s of %s, want %s to %s", d, tc.life, tc.min, tc.max)
			}
			if again := podcert.RefreshAt(nb, nb.Add(tc.life), types.UID("uid-"+tc.uid)); !again.Equal(got) {
				t.Errorf("another time for the same request: %s, %s", got, again)
			}
		})
	}
}
