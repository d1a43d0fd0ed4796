package pgenv_test

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/meshca/meshca/internal/pgenv"
)

func TestMain(m *testing.M) { pgenv.Main(m) }

// TestDatabases: each test gets a database of its own on the shared server,
// reachable over TCP with the password and refused without it.
func TestDatabases(t *testing.T) {
	srv := pgenv.Get(t)
	ctx := context.Background()
	a, b := srv.NewDatabase(t), srv.NewDatabase(t)
	if a == b {
		t.Fatalf("two databases with one DSN %s", a)
	}
	for _, dsn := range []string{a, b} {
		conn, err := pgx.Connect(ctx, dsn)
		if err != nil {
			t.Fatalf("connect: %v", err)
		}
		if _, err := conn.Exec(ctx, "CREATE TABLE t (x int)"); err != nil {
			t.Errorf("create table: %v", err) // fails in b if a's table were there
		}
		conn.Close(ctx)
	}
	cfg, err := pgx.ParseConfig(a)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Password = "wrong"
	if conn, err := pgx.ConnectConfig(ctx, cfg); err == nil {
		conn.Close(ctx)
		t.Error("connected with a wrong password")
	}
}

// TestStopRestart: a server of a test's own goes away and comes back with
// its data.
func TestStopRestart(t *testing.T) {
	srv := pgenv.Start(t)
	ctx := context.Background()
	dsn := srv.NewDatabase(t)
	exec := func(sql string) error {
		conn, err := pgx.Connect(ctx, dsn)
		if err != nil {
			return err
		}
		defer conn.Close(ctx)
		_, err = conn.Exec(ctx, sql)
		return err
	}
	if err := exec("CREATE TABLE kept (x int)"); err != nil {
		t.Fatal(err)
	}
	srv.Stop(t)
	if err := exec("SELECT 1"); err == nil {
		t.Fatal("query succeeded on a stopped server")
	}
	srv.Restart(t)
	if err := exec("INSERT INTO kept VALUES (1)"); err != nil {
		t.Fatalf("after restart: %v", err)
	}
}
