package jointoken_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshca/meshca/attestor"
	"github.com/meshca/meshca/attestor/jointoken"
	"github.com/meshca/meshca/internal/clock/clocktest"
	"github.com/meshca/meshca/internal/storetest"
)

var t0 = time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)

func TestAttest(t *testing.T) {
	ctx := context.Background()
	st := storetest.NewMem()
	clk := clocktest.New(t0)
	var logs bytes.Buffer
	a, err := jointoken.New(jointoken.Config{Store: st, Clock: clk, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := jointoken.New(jointoken.Config{}); err == nil {
		t.Fatal("New without a store succeeded")
	}
	id := spiffeid.RequireFromString("spiffe://example.org/vm/web-1")
	good, _, err := jointoken.Create(ctx, st, id, time.Hour, t0)
	if err != nil {
		t.Fatal(err)
	}
	short, _, err := jointoken.Create(ctx, st, id, time.Minute, t0)
	if err != nil {
		t.Fatal(err)
	}

	// The steps run in order: the first use of good consumes it.
	steps := []struct {
		name    string
		token   string
		advance time.Duration
		wantErr error
		wantMsg string
	}{
		{"not a join token", "eyJhbGciOi.x.y", 0, attestor.ErrNoCredential, ""},
		{"unknown", jointoken.Prefix + "never-issued", 0, attestor.ErrUnauthenticated, "unknown join token"},
		{"first use", good, 0, nil, ""},
		{"replay", good, time.Second, attestor.ErrUnauthenticated, "join token already used"},
		{"expired", short, time.Minute, attestor.ErrUnauthenticated, "join token expired at 2026-11-01T12:01:00Z"},
	}
	for _, step := range steps {
		t.Run(step.name, func(t *testing.T) {
			clk.Advance(step.advance)
			got, err := a.Attest(ctx, attestor.Credential{BearerToken: step.token, Peer: "10.0.0.1:5000"})
			if step.wantErr == nil {
				if err != nil || got.ID != id || got.Kind != jointoken.Kind {
					t.Fatalf("Attest = %+v, %v", got, err)
				}
				return
			}
			if !errors.Is(err, step.wantErr) || !strings.Contains(err.Error(), step.wantMsg) {
				t.Fatalf("Attest error = %v, want %v saying %q", err, step.wantErr, step.wantMsg)
			}
		})
	}
	for _, want := range []string{`msg="join token replayed"`, "spiffe_id=spiffe://example.org/vm/web-1", "first_used_by=10.0.0.1:5000", "replayed_by=10.0.0.1:5000"} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("log lacks %s:\n%s", want, logs.String())
		}
	}
}
