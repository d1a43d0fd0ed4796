// Package pgenv runs a real PostgreSQL server for integration tests: the
// server of Debian's postgresql package, initialised in a temporary
// directory and listening on 127.0.0.1 (password authentication) and on a
// Unix socket in that directory.
//
// It is a test helper: import it only from _test.go files. The binaries are
// found in MESHCA_PG_BIN, else in `pg_config --bindir`, else in the newest
// /usr/lib/postgresql/*/bin; when they are missing, tests that use this
// package are skipped with a message saying so, unless
// MESHCA_REQUIRE_TESTENV=1 (CI), in which case they fail. PostgreSQL
// refuses to run as root, so when the tests run as root the server runs as
// the postgres user (or nobody) and its directory belongs to that user.
//
// Get shares one server among the tests of a package and needs the
// package's TestMain to call Main, which stops it:
//
//	func TestMain(m *testing.M) { pgenv.Main(m) }
//
// Each test takes a database of its own from it (Server.NewDatabase), so
// tests stay independent. Start gives a test a server of its own, which it
// may stop and start again (a database that goes away and comes back).
package pgenv

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/meshca/meshca/internal/testproc"
)

const (
	envBinDir = "MESHCA_PG_BIN"

	// User is the superuser of every Server.
	User = "meshca"

	readyTimeout = 60 * time.Second
	stopTimeout  = 15 * time.Second
	logTailBytes = 16 << 10
)

// Option changes how a Server is started.
type Option func(*options)

type options struct {
	durable bool
	params  []string
}

// Durable keeps PostgreSQL's durability defaults (fsync, full-page writes,
// synchronous commit), for benchmarks that compare durable writes. Without
// it the server skips fsync: tests check behaviour, not crash safety, and
// creating a database per test stays cheap.
func Durable() Option { return func(o *options) { o.durable = true } }

// Param sets a server parameter (name=value, as postgres -c takes it).
func Param(nameValue string) Option {
	return func(o *options) { o.params = append(o.params, nameValue) }
}

// Server is a running PostgreSQL server.
type Server struct {
	// Host and Port are its TCP address (127.0.0.1); SocketDir holds its
	// Unix socket.
	Host      string
	Port      int
	SocketDir string
	// Password is User's password, required over TCP.
	Password string
	// Version is the server's major version (from the binaries' folder).
	Version string
	// StartupTime is how long initdb and the first start took.
	StartupTime time.Duration

	bin, dir, logPath string
	opts              options
	cred              *syscall.Credential

	mu   sync.Mutex
	proc *proc
	dbs  atomic.Int64
}

// DSN is the postgres:// URL of database db on the server over TCP, with
// the password.
func (s *Server) DSN(db string) string {
	u := url.URL{Scheme: "postgres", User: url.UserPassword(User, s.Password),
		Host: net.JoinHostPort(s.Host, strconv.Itoa(s.Port)), Path: "/" + db, RawQuery: "sslmode=disable"}
	return u.String()
}

// NewDatabase creates an empty database for t and returns its DSN (see
// DSN); the database is dropped when t ends, after t's own cleanups (which
// close what t opened on it).
func (s *Server) NewDatabase(t testing.TB) string {
	t.Helper()
	name := fmt.Sprintf("test_%d", s.dbs.Add(1))
	if err := s.exec("CREATE DATABASE " + name); err != nil {
		t.Fatalf("pgenv: %v", err)
	}
	t.Cleanup(func() {
		if err := s.exec("DROP DATABASE IF EXISTS " + name + " WITH (FORCE)"); err != nil && s.Running() {
			t.Errorf("pgenv: %v", err)
		}
	})
	return s.DSN(name)
}

// exec runs one statement as the superuser in database postgres.
func (s *Server) exec(sql string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, s.DSN("postgres"))
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, sql); err != nil {
		return fmt.Errorf("%s: %w", sql, err)
	}
	return nil
}

// Start starts a Server for t and stops it, removing its files, when t
// ends. It skips t when PostgreSQL is missing (see the package
// documentation).
func Start(t testing.TB, opts ...Option) *Server {
	t.Helper()
	bin := binDir(t)
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	s, err := start(bin, o)
	if err != nil {
		t.Fatalf("pgenv: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("pgenv: ---- postgres log (%s) ----\n%s", s.logPath, testproc.ReadTail(s.logPath, 0, logTailBytes))
		}
		s.destroy()
	})
	t.Logf("pgenv: PostgreSQL %s on %s:%d ready in %s", s.Version, s.Host, s.Port, s.StartupTime.Round(time.Millisecond))
	return s
}

var shared struct {
	mu     sync.Mutex
	inMain bool
	done   bool
	srv    *Server
	err    error
}

// Main runs the tests of a package (m.Run), stops the Server that Get
// started if any, and exits with the tests' status. Call it from TestMain.
func Main(m *testing.M) {
	shared.mu.Lock()
	shared.inMain = true
	shared.mu.Unlock()
	code := m.Run()
	shared.mu.Lock()
	if shared.srv != nil {
		shared.srv.destroy()
	}
	shared.mu.Unlock()
	os.Exit(code)
}

// Get returns the Server shared by the tests of this test binary, starting
// it on first use. The package's TestMain must call Main, which stops it.
// Tests must not stop it; each takes its own database (NewDatabase).
func Get(t testing.TB) *Server {
	t.Helper()
	bin := binDir(t)
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if !shared.inMain {
		t.Fatal("pgenv.Get needs the package's TestMain to call pgenv.Main(m)")
	}
	if !shared.done {
		shared.done = true
		shared.srv, shared.err = start(bin, options{})
		if shared.err == nil {
			t.Logf("pgenv: shared PostgreSQL %s on %s:%d ready in %s", shared.srv.Version, shared.srv.Host, shared.srv.Port,
				shared.srv.StartupTime.Round(time.Millisecond))
		}
	}
	if shared.err != nil {
		t.Fatalf("pgenv: shared server: %v", shared.err)
	}
	return shared.srv
}

// binDir returns the directory holding initdb and postgres, or skips t
// (fails it under MESHCA_REQUIRE_TESTENV=1) when they are missing.
func binDir(t testing.TB) string {
	t.Helper()
	dir, err := FindBinaries()
	if err == nil {
		return dir
	}
	msg := fmt.Sprintf("pgenv: %v; install PostgreSQL (apt-get install postgresql) or set %s", err, envBinDir)
	if os.Getenv(testproc.EnvRequire) == "1" {
		t.Fatalf("%s [%s=1]", msg, testproc.EnvRequire)
	}
	t.Skip(msg)
	return ""
}

// FindBinaries returns the directory holding PostgreSQL's initdb and
// postgres (see the package documentation for where it looks).
func FindBinaries() (string, error) {
	var candidates []string
	if dir := os.Getenv(envBinDir); dir != "" {
		candidates = append(candidates, dir)
	} else {
		if out, err := exec.Command("pg_config", "--bindir").Output(); err == nil {
			candidates = append(candidates, strings.TrimSpace(string(out)))
		}
		matches, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
		slices.SortFunc(matches, func(a, b string) int { return versionOf(b) - versionOf(a) }) // newest first
		candidates = append(candidates, matches...)
	}
	for _, dir := range candidates {
		if executable(filepath.Join(dir, "initdb")) && executable(filepath.Join(dir, "postgres")) {
			return dir, nil
		}
	}
	where := "pg_config --bindir, /usr/lib/postgresql/*/bin"
	if len(candidates) > 0 {
		where = strings.Join(candidates, ", ")
	}
	return "", fmt.Errorf("no PostgreSQL server binaries (initdb and postgres) in %s", where)
}

// versionOf is the major version in a /usr/lib/postgresql/N/bin path, or 0.
func versionOf(binDir string) int {
	v, _ := strconv.Atoi(filepath.Base(filepath.Dir(binDir)))
	return v
}

func executable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0
}

// start initialises a cluster in a new temporary directory and starts it.
// On error nothing is left running or on disk.
func start(bin string, o options) (_ *Server, err error) {
	begin := time.Now()
	s := &Server{Host: "127.0.0.1", bin: bin, opts: o, Version: strconv.Itoa(versionOf(bin))}
	// Not t.TempDir(): its parents are root's 0700 folders, closed to the
	// postgres user.
	if s.dir, err = os.MkdirTemp("", "pgenv-"); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			err = fmt.Errorf("%w\n---- postgres log ----\n%s", err, testproc.ReadTail(s.logPath, 0, 8<<10))
			s.destroy()
		}
	}()
	s.SocketDir, s.logPath = s.dir, filepath.Join(s.dir, "postgres.log")
	if s.cred, err = credential(); err != nil {
		return nil, err
	}
	pw := make([]byte, 16)
	_, _ = rand.Read(pw) // never fails
	s.Password = hex.EncodeToString(pw)
	pwFile := filepath.Join(s.dir, "pwfile")
	if err := os.WriteFile(pwFile, []byte(s.Password+"\n"), 0o600); err != nil {
		return nil, err
	}
	if err := s.chown(s.dir, pwFile); err != nil {
		return nil, err
	}
	initdb := exec.Command(filepath.Join(bin, "initdb"), "-D", s.dataDir(), "-U", User, "--pwfile="+pwFile,
		"--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C", "--no-sync")
	initdb.Dir, initdb.SysProcAttr = s.dir, sysProcAttr(s.cred)
	if out, err := initdb.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("initdb: %w\n%s", err, out)
	}
	_ = os.Remove(pwFile)
	for attempt := 1; ; attempt++ {
		if s.Port, err = testproc.FreePort(); err != nil {
			return nil, err
		}
		if err = s.run(); err == nil || !errors.Is(err, errAddrInUse) || attempt == 3 {
			break
		}
	}
	if err != nil {
		return nil, err
	}
	s.StartupTime = time.Since(begin)
	return s, nil
}

func (s *Server) dataDir() string { return filepath.Join(s.dir, "data") }

// credential is who runs PostgreSQL: nil (the current user) unless that is
// root, which initdb and postgres refuse.
func credential() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	for _, name := range []string{"postgres", "nobody"} {
		u, err := user.Lookup(name)
		if err != nil {
			continue
		}
		uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
		gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
		if err1 == nil && err2 == nil {
			return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), NoSetGroups: true}, nil
		}
	}
	return nil, errors.New("running as root, and neither the postgres nor the nobody user exists to run PostgreSQL as")
}

// chown gives paths to the user PostgreSQL runs as.
func (s *Server) chown(paths ...string) error {
	if s.cred == nil {
		return nil
	}
	for _, p := range paths {
		if err := os.Chown(p, int(s.cred.Uid), int(s.cred.Gid)); err != nil {
			return err
		}
	}
	return nil
}

var errAddrInUse = errors.New("address already in use")

// run starts postgres on s.Port and waits until it accepts connections.
func (s *Server) run() error {
	args := []string{"-D", s.dataDir(), "-p", strconv.Itoa(s.Port), "-h", s.Host, "-k", s.SocketDir,
		"-c", "logging_collector=off", "-c", "max_connections=200"}
	if !s.opts.durable {
		args = append(args, "-c", "fsync=off", "-c", "full_page_writes=off", "-c", "synchronous_commit=off")
	}
	for _, p := range s.opts.params {
		args = append(args, "-c", p)
	}
	f, err := os.OpenFile(s.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	if err := s.chown(s.logPath); err != nil {
		f.Close()
		return err
	}
	cmd := exec.Command(filepath.Join(s.bin, "postgres"), args...)
	cmd.Dir, cmd.Stdout, cmd.Stderr, cmd.SysProcAttr = s.dir, f, f, sysProcAttr(s.cred)
	if err := cmd.Start(); err != nil {
		f.Close()
		return fmt.Errorf("start postgres: %w", err)
	}
	p := &proc{cmd: cmd, done: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		f.Close()
		close(p.done)
	}()
	deadline := time.Now().Add(readyTimeout)
	for {
		if err := s.ping(); err == nil {
			break
		}
		select {
		case <-p.done:
			if strings.Contains(testproc.ReadTail(s.logPath, 0, 4<<10), "already in use") {
				return fmt.Errorf("postgres exited: %w", errAddrInUse)
			}
			return fmt.Errorf("postgres exited early: %v", p.waitErr)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			p.stop(syscall.SIGKILL)
			return fmt.Errorf("postgres not ready after %s", readyTimeout)
		}
	}
	s.mu.Lock()
	s.proc = p
	s.mu.Unlock()
	return nil
}

// ping connects over TCP with the password.
func (s *Server) ping() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, s.DSN("postgres"))
	if err != nil {
		return err
	}
	return conn.Close(ctx)
}

// Running reports whether the server is up (not stopped by Stop).
func (s *Server) Running() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.proc != nil
}

// Stop shuts the server down as an operator would (fast shutdown: open
// sessions are ended); its data stays for Restart.
func (s *Server) Stop(t testing.TB) {
	t.Helper()
	s.mu.Lock()
	p := s.proc
	s.proc = nil
	s.mu.Unlock()
	if p == nil {
		t.Fatal("pgenv: Stop: the server is not running")
	}
	if err := p.stop(syscall.SIGINT); err != nil {
		t.Fatalf("pgenv: Stop: %v", err)
	}
}

// Restart starts a stopped server again on the same port with its data.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	if s.Running() {
		t.Fatal("pgenv: Restart: the server is running")
	}
	if err := s.run(); err != nil {
		t.Fatalf("pgenv: Restart: %v\n%s", err, testproc.ReadTail(s.logPath, 0, 8<<10))
	}
}

// destroy stops the server and removes its directory.
func (s *Server) destroy() {
	s.mu.Lock()
	p := s.proc
	s.proc = nil
	s.mu.Unlock()
	if p != nil {
		_ = p.stop(syscall.SIGINT) // best effort: the directory goes anyway
	}
	_ = os.RemoveAll(s.dir)
}

type proc struct {
	cmd     *exec.Cmd
	done    chan struct{}
	waitErr error
}

// stop sends sig and waits for the process to exit, killing it after
// stopTimeout.
func (p *proc) stop(sig syscall.Signal) error {
	_ = p.cmd.Process.Signal(sig)
	select {
	case <-p.done:
		return nil
	case <-time.After(stopTimeout):
		_ = p.cmd.Process.Kill()
		<-p.done
		return fmt.Errorf("postgres did not stop within %s after %v; killed", stopTimeout, sig)
	}
}
