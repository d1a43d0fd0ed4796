package pgstore_test

import (
	"context"
	"errors"
	"net"
	"net/url"
	"strconv"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/meshca/meshca/ca/store"
	"github.com/meshca/meshca/ca/store/pgstore"
	"github.com/meshca/meshca/internal/clock/clocktest"
	"github.com/meshca/meshca/internal/pgenv"
	"github.com/meshca/meshca/internal/storetest"
)

// query runs sql on dsn and scans its one row into dst.
func query(t *testing.T, dsn, sql string, dst ...any) {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if err := conn.QueryRow(ctx, sql).Scan(dst...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// closedPort is a TCP port on 127.0.0.1 where nothing listens.
func closedPort(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
	l.Close()
	return port
}

// TestOpenErrors: what a wrong DSN, server or schema says at start, never
// with the password in it.
func TestOpenErrors(t *testing.T) {
	srv := pgenv.Get(t)
	const secret = "s3cret-Pa55"
	withPassword := func(dsn, pw string) string {
		u, err := url.Parse(dsn)
		if err != nil {
			t.Fatal(err)
		}
		u.User = url.UserPassword(u.User.Username(), pw)
		return u.String()
	}
	newer := srv.NewDatabase(t)
	open(t, newer, pgstore.Options{}).Close()
	var ignored int
	query(t, newer, "INSERT INTO meshca_schema_migrations (version, name) VALUES (99, 'future') RETURNING version", &ignored)

	tests := []struct {
		name        string
		dsn         string
		want        string // in the error
		unavailable bool   // the error wraps store.ErrUnavailable
		is          error
	}{
		{"unreachable", "postgres://meshca:" + secret + "@127.0.0.1:" + closedPort(t) + "/x?sslmode=disable", "connect", true, nil},
		{"wrong password", withPassword(srv.DSN("postgres"), secret), "password authentication failed", false, nil},
		{"unknown database", withPassword(srv.DSN("nosuchdb"), srv.Password), "does not exist", false, nil},
		{"malformed", "postgres://meshca:" + secret + "@127.0.0.1:notaport/x", "cannot parse", false, nil},
		{"schema from a newer meshca", newer, "schema version 99", false, pgstore.ErrSchemaTooNew},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := pgstore.Open(context.Background(), tt.dsn, pgstore.Options{})
			if err == nil {
				s.Close()
				t.Fatal("Open succeeded")
			}
			t.Log(err)
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not say %q", err, tt.want)
			}
			if strings.Contains(err.Error(), secret) || strings.Contains(err.Error(), srv.Password) {
				t.Errorf("error %q shows the password", err)
			}
			if errors.Is(err, store.ErrUnavailable) != tt.unavailable {
				t.Errorf("errors.Is(err, store.ErrUnavailable) = %v, want %v", !tt.unavailable, tt.unavailable)
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Errorf("error does not match %v", tt.is)
			}
		})
	}
}

// TestDatabaseGoesAway: while the server is down every call fails with
// store.ErrUnavailable, Ping included; when it is back the same Store works
// again, without reopening.
func TestDatabaseGoesAway(t *testing.T) {
	srv := pgenv.Start(t)
	ctx := context.Background()
	s := open(t, srv.NewDatabase(t), pgstore.Options{})
	if err := s.RecordIssuance(ctx, storetest.Issuance("0a", idA, 1, 10)); err != nil {
		t.Fatal(err)
	}
	srv.Stop(t)
	calls := []struct {
		name string
		call func() error
	}{
		{"Ping", func() error { return s.Ping(ctx) }},
		{"RecordIssuance", func() error { return s.RecordIssuance(ctx, storetest.Issuance("0b", idA, 1, 10)) }},
		{"ConsumeJoinToken", func() error { _, err := s.ConsumeJoinToken(ctx, tokenHash(1), t0, "x"); return err }},
		{"Revocations", func() error { _, err := s.Revocations(ctx, "0a", idA); return err }},
		{"LoadCAState", func() error { _, err := s.LoadCAState(ctx); return err }},
		{"Issuances", func() error { _, err := s.Issuances(ctx, store.IssuanceFilter{}); return err }},
	}
	for _, c := range calls {
		t.Run("down/"+c.name, func(t *testing.T) {
			if err := c.call(); !errors.Is(err, store.ErrUnavailable) {
				t.Errorf("got %v, want store.ErrUnavailable", err)
			}
		})
	}
	srv.Restart(t)
	clocktest.Eventually(t, "Ping after the restart", func() bool { return s.Ping(ctx) == nil })
	if err := s.RecordIssuance(ctx, storetest.Issuance("0c", idA, 1, 10)); err != nil {
		t.Fatalf("RecordIssuance after the restart: %v", err)
	}
	if list, err := s.Issuances(ctx, store.IssuanceFilter{}); err != nil || len(list) != 2 {
		t.Errorf("after the restart: %d records, %v; want 0a and 0c", len(list), err)
	}
}
