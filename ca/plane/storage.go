package plane

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/pflag"

	"github.com/meshca/meshca/ca/store"
	"github.com/meshca/meshca/ca/store/boltstore"
	"github.com/meshca/meshca/ca/store/pgstore"
	"github.com/meshca/meshca/internal/clock"
	"github.com/meshca/meshca/internal/files"
	"github.com/meshca/meshca/internal/metrics"
)

// Storage says where the CA keeps its state. The zero value is the bbolt
// file DataFile in the data directory.
type Storage struct {
	// Store is "" or "bolt" for the bbolt file, or a PostgreSQL DSN
	// (postgres:// or postgresql://) shared by every replica.
	Store string
	// DSNFile is a file holding the PostgreSQL DSN (a URL or libpq's
	// key=value form), so that its password is on no command line; it
	// must not be readable by others. Store must then be "" or "postgres".
	DSNFile string
}

// AddFlags registers the store's flags of `meshca server`
// (docs/configuration.md lists them).
func (s *Storage) AddFlags(fs *pflag.FlagSet) {
	fs.StringVar(&s.Store, "store", "bolt", "where the CA keeps its state: bolt (the file meshca.db in --data-dir) or a PostgreSQL DSN postgres://user@host/db shared by replicas (see docs/operations.md; give the password with --store-dsn-file)")
	fs.StringVar(&s.DSNFile, "store-dsn-file", "", "file (not readable by others) holding the PostgreSQL DSN, password included; implies --store postgres")
}

// pgStoreReadyEvery bounds how often readiness writes PostgreSQL's
// heartbeat; answers in between repeat the last one.
const pgStoreReadyEvery = time.Second

// postgresDSN returns the PostgreSQL DSN configured, or "" for bbolt.
func (s Storage) postgresDSN() (string, error) {
	switch {
	case s.DSNFile != "":
		if s.Store != "" && s.Store != "bolt" && s.Store != "postgres" {
			return "", errors.New("--store-dsn-file: --store must be empty or postgres, not a DSN too")
		}
		if err := files.CheckSecretMode(s.DSNFile); err != nil {
			return "", fmt.Errorf("--store-dsn-file: %w", err)
		}
		b, err := os.ReadFile(s.DSNFile)
		if err != nil {
			return "", fmt.Errorf("--store-dsn-file: %w", err)
		}
		dsn := strings.TrimSpace(string(b))
		if dsn == "" {
			return "", fmt.Errorf("--store-dsn-file: %s is empty", s.DSNFile)
		}
		return dsn, nil
	case s.Store == "" || s.Store == "bolt":
		return "", nil
	case strings.HasPrefix(s.Store, "postgres://"), strings.HasPrefix(s.Store, "postgresql://"):
		return s.Store, nil
	case s.Store == "postgres":
		return "", errors.New("--store postgres needs --store-dsn-file")
	}
	// Never echo the value: it may be a DSN with a password.
	return "", errors.New("--store must be bolt, or a PostgreSQL DSN starting with postgres:// or postgresql://")
}

// openedStore is the CA's store as Start and Seal open it.
type openedStore struct {
	store.Store
	// where names it for people: the data file's path, or the database
	// without the password.
	where string
	// ready, when set, is part of /readyz: a shared store is probed for
	// itself, since a lost database may not show in a failed write first.
	ready func(context.Context) error
	// replica names this replica when the store is shared (PostgreSQL):
	// it then keeps its own intermediates (ca.Config.Replica).
	replica string
}

// replicaName names a replica sharing the store: its host name (the pod's
// name in Kubernetes) and a random suffix, new at each start, since a
// restarted replica holds a new intermediate.
func replicaName() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "meshca"
	}
	b := make([]byte, 3)
	_, _ = rand.Read(b) // crypto/rand does not fail
	return host + "-" + hex.EncodeToString(b)
}

// openStore opens the store c.Storage names. reg receives its metrics: the
// group commits, and for bbolt the journal's checkpoints.
func (c *Config) openStore(ctx context.Context, reg prometheus.Registerer, log *slog.Logger) (*openedStore, error) {
	dsn, err := c.Storage.postgresDSN()
	if err != nil {
		return nil, err
	}
	if dsn == "" {
		path := filepath.Join(c.DataDir, DataFile)
		st, err := boltstore.Open(path, boltstore.Options{Logger: log, Metrics: metrics.NewStore(reg, true)})
		if err != nil {
			return nil, err
		}
		return &openedStore{Store: st, where: path}, nil
	}
	st, err := pgstore.Open(ctx, dsn, pgstore.Options{Logger: log, Metrics: metrics.NewStore(reg, false), Clock: c.Clock})
	if err != nil {
		return nil, err
	}
	return &openedStore{Store: st, where: st.Target(), ready: throttledPing(st, c.Clock, pgStoreReadyEvery), replica: replicaName()}, nil
}

// throttledPing pings s at most once per every and otherwise answers as
// the last ping did, so that /readyz, which anyone reaching the monitoring
// port may call, costs the database at most one write per interval.
func throttledPing(s store.Store, clk clock.Clock, every time.Duration) func(context.Context) error {
	var (
		mu   sync.Mutex
		last time.Time
		err  error
	)
	return func(ctx context.Context) error {
		mu.Lock()
		defer mu.Unlock()
		if now := clk.Now(); last.IsZero() || now.Sub(last) >= every {
			perr := s.Ping(ctx)
			if errors.Is(perr, context.Canceled) || errors.Is(perr, context.DeadlineExceeded) {
				return perr // says nothing of the store
			}
			last, err = now, perr
		}
		if err != nil {
			return fmt.Errorf("the store cannot record: %w", err)
		}
		return nil
	}
}
