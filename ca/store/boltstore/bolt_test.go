package boltstore_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/meshca/meshca/ca/store"
	"github.com/meshca/meshca/ca/store/boltstore"
	"github.com/meshca/meshca/internal/storetest"
)

// t0 is an arbitrary base time, in UTC so records compare equal after a JSON
// round trip.
var t0 = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

// open opens the store at path, or in a new temporary file if path is
// empty, and closes it when the test ends.
func open(t testing.TB, path string) *boltstore.Store {
	t.Helper()
	return openWith(t, path, boltstore.Options{})
}

func openWith(t testing.TB, path string, opts boltstore.Options) *boltstore.Store {
	t.Helper()
	if path == "" {
		path = filepath.Join(t.TempDir(), "meshca.db")
	}
	s, err := boltstore.Open(path, opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// rec is storetest.Issuance: a record issued at t0+issued hours, expiring
// at t0+expires hours.
var rec = storetest.Issuance

func serials(recs []store.IssuanceWithRevocations) []string {
	out := []string{}
	for _, r := range recs {
		out = append(out, r.Serial)
	}
	return out
}

func TestPersistence(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "sub", "dir", "meshca.db")
	s, err := boltstore.Open(path, boltstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	st := store.CAState{Active: &store.CAKey{CertDER: []byte("cert"), Key: store.SealedKey{Alg: "none", Data: []byte("key")}}}
	v, err := s.SaveCAState(ctx, &st)
	if err != nil {
		t.Fatal(err)
	}
	st.Version = v
	r := rec("abcdef", "spiffe://example.org/a", 1, 2)
	rev := store.Revocation{SPIFFEID: "spiffe://example.org/a", RevokedAt: t0, Reason: "compromised"}
	if err := s.RecordIssuance(ctx, r); err != nil {
		t.Fatal(err)
	}
	if err := s.Revoke(ctx, rev); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}

	s = open(t, path)
	gotSt, err := s.LoadCAState(ctx)
	if err != nil || !reflect.DeepEqual(*gotSt, st) {
		t.Errorf("LoadCAState after reopening: got (%+v, %v), want %+v", gotSt, err, st)
	}
	got, err := s.Issuances(ctx, store.IssuanceFilter{SPIFFEID: r.SPIFFEID})
	want := []store.IssuanceWithRevocations{{Issuance: r, Revocations: []store.Revocation{rev}}}
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("Issuances after reopening: got (%+v, %v), want %+v", got, err, want)
	}
	revs, err := s.Revocations(ctx, "", rev.SPIFFEID)
	if err != nil || !reflect.DeepEqual(revs, []store.Revocation{rev}) {
		t.Errorf("Revocations after reopening: got (%+v, %v), want %+v", revs, err, rev)
	}
}

func TestOpenInUse(t *testing.T) {
	path := filepath.Join(t.TempDir(), "meshca.db")
	open(t, path)
	start := time.Now()
	s, err := boltstore.Open(path, boltstore.Options{Timeout: 50 * time.Millisecond})
	if err == nil {
		s.Close()
		t.Fatal("second Open of the same file succeeded")
	}
	if !strings.Contains(err.Error(), "in use by another process") {
		t.Errorf("second Open: got %q, want it to say the file is in use", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("second Open took %v to fail", d)
	}
}

func TestFileMode(t *testing.T) {
	tests := []struct {
		name     string
		existing os.FileMode // 0: no file yet
		warn     bool
	}{
		{"new file", 0, false},
		{"existing private file", 0o600, false},
		{"existing world-readable file", 0o644, true},
		{"existing group-readable file", 0o640, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "state")
			path := filepath.Join(dir, "meshca.db")
			if tt.existing != 0 {
				s, err := boltstore.Open(path, boltstore.Options{})
				if err != nil {
					t.Fatal(err)
				}
				s.Close()
				if err := os.Chmod(path, tt.existing); err != nil {
					t.Fatal(err)
				}
			}
			var log bytes.Buffer
			s, err := boltstore.Open(path, boltstore.Options{Logger: slog.New(slog.NewTextHandler(&log, nil))})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			for p, want := range map[string]os.FileMode{path: 0o600, dir: 0o700} {
				fi, err := os.Stat(p)
				if err != nil {
					t.Fatal(err)
				}
				if got := fi.Mode().Perm(); got != want {
					t.Errorf("mode of %s: %v, want %v", p, got, want)
				}
			}
			if warned := strings.Contains(log.String(), "restricted it to mode 0600"); warned != tt.warn {
				t.Errorf("warned = %v, want %v; log: %s", warned, tt.warn, log.String())
			}
		})
	}
}

// methods calls every Store method but Close, for TestClosed.
var methods = []struct {
	name string
	call func(context.Context, *boltstore.Store) error
}{
	{"LoadCAState", func(ctx context.Context, s *boltstore.Store) error {
		_, err := s.LoadCAState(ctx)
		return err
	}},
	{"SaveCAState", func(ctx context.Context, s *boltstore.Store) error {
		_, err := s.SaveCAState(ctx, &store.CAState{})
		return err
	}},
	{"RecordIssuance", func(ctx context.Context, s *boltstore.Store) error {
		return s.RecordIssuance(ctx, rec("0123", "spiffe://example.org/a", 1, 2))
	}},
	{"Issuance", func(ctx context.Context, s *boltstore.Store) error {
		_, err := s.Issuance(ctx, "0123")
		return err
	}},
	{"Issuances", func(ctx context.Context, s *boltstore.Store) error {
		_, err := s.Issuances(ctx, store.IssuanceFilter{})
		return err
	}},
	{"PruneIssuances", func(ctx context.Context, s *boltstore.Store) error {
		_, err := s.PruneIssuances(ctx, t0)
		return err
	}},
	{"Revoke", func(ctx context.Context, s *boltstore.Store) error {
		return s.Revoke(ctx, store.Revocation{Serial: "0123", RevokedAt: t0})
	}},
	{"Revocations", func(ctx context.Context, s *boltstore.Store) error {
		_, err := s.Revocations(ctx, "0123", "")
		return err
	}},
	{"PruneRevocations", func(ctx context.Context, s *boltstore.Store) error {
		_, err := s.PruneRevocations(ctx, t0)
		return err
	}},
	{"CreateJoinToken", func(ctx context.Context, s *boltstore.Store) error {
		return s.CreateJoinToken(ctx, store.JoinToken{Hash: strings.Repeat("a", 64), SPIFFEID: "spiffe://example.org/a", CreatedAt: t0, ExpiresAt: t0.Add(time.Hour)})
	}},
	{"ConsumeJoinToken", func(ctx context.Context, s *boltstore.Store) error {
		_, err := s.ConsumeJoinToken(ctx, strings.Repeat("a", 64), t0, "x")
		return err
	}},
	{"PruneJoinTokens", func(ctx context.Context, s *boltstore.Store) error {
		_, err := s.PruneJoinTokens(ctx, t0)
		return err
	}},
}

func TestClosed(t *testing.T) {
	s := open(t, "")
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	for _, m := range methods {
		t.Run(m.name, func(t *testing.T) {
			if err := m.call(context.Background(), s); !errors.Is(err, boltstore.ErrClosed) {
				t.Errorf("got %v, want ErrClosed", err)
			}
		})
	}
}

// TestContract runs the store.Store contract suite against boltstore: with
// the default options (records stay in the journal, as the suite writes
// few), and with a checkpoint started after every group commit, so that
// reads find records in the journal, the data file or, while a checkpoint
// runs, both.
func TestContract(t *testing.T) {
	t.Run("journaled", func(t *testing.T) {
		storetest.Run(t, func(t *testing.T) store.Store { return open(t, "") })
	})
	t.Run("checkpointing", func(t *testing.T) {
		storetest.Run(t, func(t *testing.T) store.Store {
			return openWith(t, "", boltstore.Options{CheckpointRecords: 1, CheckpointInterval: time.Millisecond})
		})
	})
}
