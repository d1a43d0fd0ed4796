package pgstore_test

import (
	"context"
	"testing"

	"github.com/meshca/meshca/ca/store"
	"github.com/meshca/meshca/ca/store/pgstore"
	"github.com/meshca/meshca/internal/pgenv"
	"github.com/meshca/meshca/internal/storetest"
)

func TestMain(m *testing.M) { pgenv.Main(m) }

// open opens a store on dsn and closes it when t ends.
func open(t testing.TB, dsn string, opts pgstore.Options) *pgstore.Store {
	t.Helper()
	s, err := pgstore.Open(context.Background(), dsn, opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// TestConformance runs the store conformance suite, each test on a
// database of its own.
func TestConformance(t *testing.T) {
	srv := pgenv.Get(t)
	storetest.Run(t, func(t *testing.T) store.Store {
		return open(t, srv.NewDatabase(t), pgstore.Options{})
	})
}
