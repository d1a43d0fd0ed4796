// Package testproc finds and runs the real servers that integration tests
// start (kube-apiserver, etcd, Vault): the binaries `make testenv` and
// `make vault` build into <repo>/.testenv/bin (or the directory named by
// MESHCA_TESTENV_BIN), started as child processes that die with the test
// binary, with their output in a log file whose tail goes into errors.
//
// It is a test helper: import it only from _test.go files and other test
// helpers (internal/kubeenv, internal/vaultenv).
package testproc

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

const (
	// EnvBinDir names the directory of the binaries instead of
	// <repo>/.testenv/bin.
	EnvBinDir = "MESHCA_TESTENV_BIN"
	// EnvRequire set to 1 (CI) makes a missing binary fail the test
	// instead of skipping it.
	EnvRequire = "MESHCA_REQUIRE_TESTENV"

	stopTimeout = 10 * time.Second
)

// BinDir returns the directory holding every one of names, or skips t
// (fails it under MESHCA_REQUIRE_TESTENV=1) with a message naming the make
// target that builds them.
func BinDir(t testing.TB, target string, names ...string) string {
	t.Helper()
	dir, err := FindBinaries(names...)
	if err == nil {
		return dir
	}
	msg := fmt.Sprintf("%v; run `make %s` to build it (or set %s)", err, target, EnvBinDir)
	if os.Getenv(EnvRequire) == "1" {
		t.Fatalf("%s [%s=1]", msg, EnvRequire)
	}
	t.Skip(msg)
	return ""
}

// FindBinaries returns the directory holding every one of names.
func FindBinaries(names ...string) (string, error) {
	dir := os.Getenv(EnvBinDir)
	if dir == "" {
		root, err := RepoRoot()
		if err != nil {
			return "", err
		}
		dir = filepath.Join(root, ".testenv", "bin")
	}
	for _, name := range names {
		fi, err := os.Stat(filepath.Join(dir, name)) // #nosec G703 -- the test environment's own directory
		if err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
			return "", fmt.Errorf("no executable %s in %s", name, dir)
		}
	}
	return dir, nil
}

// RepoRoot walks up from the working directory (a test's package directory)
// to the directory whose go.mod declares module github.com/meshca/meshca.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if b, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil {
			for _, line := range strings.Split(string(b), "\n") {
				if f := strings.Fields(line); len(f) == 2 && f[0] == "module" && f[1] == "github.com/meshca/meshca" {
					return dir, nil
				}
			}
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("repository root (go.mod of github.com/meshca/meshca) not found")
		}
		dir = parent
	}
}

// FreePort returns a TCP port free on 127.0.0.1 a moment ago.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer func() { _ = l.Close() }() // only its port was wanted
	return l.Addr().(*net.TCPAddr).Port, nil
}

// Proc is a running server.
type Proc struct {
	Name    string
	LogPath string
	cmd     *exec.Cmd
	done    chan struct{}
	waitErr error
}

// Start runs path with args, its output appended to logPath. env, when
// not nil, is its whole environment. The process is killed when the test
// binary dies.
func Start(name, path, logPath string, env []string, args ...string) (*Proc, error) {
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600) // #nosec G304 -- a test's own temp dir
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(path, args...) // #nosec G204 -- a test server the test chose
	cmd.Stdout, cmd.Stderr, cmd.Env = f, f, env
	cmd.SysProcAttr = sysProcAttr()
	if err := cmd.Start(); err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &Proc{Name: name, LogPath: logPath, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		_ = f.Close()
		close(p.done)
	}()
	return p, nil
}

// Done is closed when the process has exited.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Err is how the process exited, once Done is closed.
func (p *Proc) Err() error { return p.waitErr }

// WaitFor polls cond until it holds, the process exits, or timeout passes.
// The error does not include the log: add Tail.
func (p *Proc) WaitFor(timeout time.Duration, cond func() bool) error {
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return nil
		}
		select {
		case <-p.done:
			return fmt.Errorf("%s exited early: %v", p.Name, p.waitErr)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready after %s", p.Name, timeout)
		}
	}
}

// Stop sends SIGTERM and kills the process if it has not exited after ten
// seconds. It is a no-op on a nil or exited process.
func (p *Proc) Stop() {
	if p == nil {
		return
	}
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(stopTimeout):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// Tail is the end of the process's log, formatted for an error message.
func (p *Proc) Tail() string {
	if p == nil {
		return ""
	}
	return fmt.Sprintf("\n---- %s log (%s) ----\n%s", p.Name, p.LogPath, ReadTail(p.LogPath, 0, 8<<10))
}

// ReadTail reads path from offset from, at most its last limit bytes.
func ReadTail(path string, from, limit int64) string {
	f, err := os.Open(path) // #nosec G304 -- a test's own log file
	if err != nil {
		return "(" + err.Error() + ")"
	}
	defer func() { _ = f.Close() }() // read only
	if fi, err := f.Stat(); err == nil && fi.Size()-from > limit {
		from = fi.Size() - limit
	}
	if _, err := f.Seek(from, io.SeekStart); err != nil {
		return "(" + err.Error() + ")"
	}
	b, _ := io.ReadAll(f)
	return string(b)
}
