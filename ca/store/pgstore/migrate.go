package pgstore

import (
	"context"
	"embed"
	"fmt"
	"io/fs"
	"path"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5/pgxpool"
)

// migrations holds the schema, one file per version: NNNN_name.sql,
// numbered from 1 without gaps. A released file is never edited: a change
// is a new file.
//
//go:embed migrations/*.sql
var migrations embed.FS

// migrationLock is the pg_advisory_lock key held while the schema is
// checked and migrated, so that replicas starting together migrate once
// ("meshca" in ASCII).
const migrationLock int64 = 0x6d6573686361

// migration is one schema version.
type migration struct {
	version int
	name    string
	sql     string
}

// loadMigrations returns the embedded migrations in version order.
func loadMigrations() ([]migration, error) {
	entries, err := fs.ReadDir(migrations, "migrations")
	if err != nil {
		return nil, err
	}
	var out []migration
	for _, e := range entries { // ReadDir sorts by name
		num, name, ok := strings.Cut(strings.TrimSuffix(e.Name(), ".sql"), "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil || v != len(out)+1 {
			return nil, fmt.Errorf("migration %s: want %04d_name.sql", e.Name(), len(out)+1)
		}
		b, err := migrations.ReadFile(path.Join("migrations", e.Name()))
		if err != nil {
			return nil, err
		}
		out = append(out, migration{version: v, name: name, sql: string(b)})
	}
	return out, nil
}

// SchemaVersion is the schema version this build reads and writes.
func SchemaVersion() int {
	ms, err := loadMigrations()
	if err != nil {
		return 0
	}
	return len(ms)
}

// migrate brings the database's schema to this build's version under the
// advisory lock: it creates the version table if missing, refuses a schema
// newer than this build knows, and applies each missing migration in a
// transaction of its own with its row in meshca_schema_migrations. It
// returns the version found before and the version now.
func migrate(ctx context.Context, pool *pgxpool.Pool) (before, after int, err error) {
	ms, err := loadMigrations()
	if err != nil {
		return 0, 0, fmt.Errorf("embedded migrations: %w", err)
	}
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return 0, 0, err
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock($1)", migrationLock); err != nil {
		return 0, 0, fmt.Errorf("advisory lock: %w", err)
	}
	defer func() {
		// A lost connection releases the lock with its session.
		_, _ = conn.Exec(context.WithoutCancel(ctx), "SELECT pg_advisory_unlock($1)", migrationLock)
	}()
	if _, err := conn.Exec(ctx, `CREATE TABLE IF NOT EXISTS meshca_schema_migrations (
		version    integer PRIMARY KEY,
		name       text NOT NULL,
		applied_at timestamptz NOT NULL DEFAULT now())`); err != nil {
		return 0, 0, fmt.Errorf("version table: %w", err)
	}
	if err := conn.QueryRow(ctx, "SELECT coalesce(max(version), 0) FROM meshca_schema_migrations").Scan(&before); err != nil {
		return 0, 0, fmt.Errorf("schema version: %w", err)
	}
	if before > len(ms) {
		return before, before, fmt.Errorf("%w: the database has schema version %d, this meshca knows versions up to %d: run a newer meshca (downgrades are not supported)",
			ErrSchemaTooNew, before, len(ms))
	}
	for _, m := range ms[before:] {
		tx, err := conn.Begin(ctx)
		if err != nil {
			return before, m.version - 1, err
		}
		_, err = tx.Exec(ctx, m.sql)
		if err == nil {
			_, err = tx.Exec(ctx, "INSERT INTO meshca_schema_migrations (version, name) VALUES ($1, $2)", m.version, m.name)
		}
		if err == nil {
			err = tx.Commit(ctx)
		}
		if err != nil {
			_ = tx.Rollback(ctx) // the migration's error is the one to report
			return before, m.version - 1, fmt.Errorf("migration %d (%s): %w", m.version, m.name, err)
		}
	}
	return before, len(ms), nil
}
