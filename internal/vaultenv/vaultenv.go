// Package vaultenv runs a real Vault server (v1.14.0, built from its Go
// module by `make vault` into <repo>/.testenv/bin/vault) in dev mode on
// 127.0.0.1 for integration tests, with TLS (dev mode's own CA) and an
// in-memory storage that goes away with it.
//
// It is a test helper: import it only from _test.go files. When the binary
// is missing the tests that use it are skipped, with the make target in the
// message, unless MESHCA_REQUIRE_TESTENV=1 (CI), in which case they fail.
package vaultenv

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/meshca/meshca/internal/testproc"
)

const readyTimeout = 30 * time.Second

// Env is a running Vault dev server.
type Env struct {
	// Addr is https://127.0.0.1:<port>.
	Addr string
	// CAFile verifies the server's TLS certificate.
	CAFile string
	// RootToken is the dev server's root token.
	RootToken string
	// Client is logged in with RootToken.
	Client *api.Client

	proc *testproc.Proc
}

// Start starts a Vault dev server for t, stopped when t ends.
func Start(t testing.TB) *Env {
	t.Helper()
	bin := testproc.BinDir(t, "vault", "vault")
	dir := t.TempDir()
	var lastErr error
	for range 3 { // a port taken between choosing and binding it
		e, err := start(filepath.Join(bin, "vault"), dir)
		if err == nil {
			t.Cleanup(e.Stop)
			return e
		}
		lastErr = err
	}
	t.Fatalf("vaultenv: %v", lastErr)
	return nil
}

func start(bin, dir string) (*Env, error) {
	port, err := testproc.FreePort()
	if err != nil {
		return nil, err
	}
	tok := make([]byte, 16)
	if _, err := rand.Read(tok); err != nil {
		return nil, err
	}
	run := filepath.Join(dir, "run"+strconv.Itoa(port))
	if err := os.MkdirAll(filepath.Join(run, "tls"), 0o700); err != nil {
		return nil, err
	}
	// The dev server removes its TLS files when it stops; CAFile is a
	// copy that outlives it (a client started while Vault is down).
	certs := filepath.Join(run, "tls")
	e := &Env{Addr: "https://127.0.0.1:" + strconv.Itoa(port), CAFile: filepath.Join(run, "vault-ca.pem"), RootToken: hex.EncodeToString(tok)}
	// A clean environment: dev mode writes its token to $HOME/.vault-token,
	// and VAULT_* variables of the caller must not reach it.
	env := []string{"HOME=" + run, "PATH=/usr/bin:/bin"}
	e.proc, err = testproc.Start("vault", bin, filepath.Join(run, "vault.log"), env,
		"server", "-dev", "-dev-root-token-id="+e.RootToken, "-dev-listen-address=127.0.0.1:"+strconv.Itoa(port),
		"-dev-tls", "-dev-tls-cert-dir="+certs, "-dev-no-store-token")
	if err != nil {
		return nil, err
	}
	err = e.proc.WaitFor(readyTimeout, func() bool {
		if _, err := os.Stat(e.CAFile); err != nil {
			b, err := os.ReadFile(filepath.Join(certs, "vault-ca.pem"))
			if err != nil || os.WriteFile(e.CAFile, b, 0o600) != nil { // #nosec G703 -- the test's own temp dir
				return false
			}
		}
		if e.Client == nil {
			c, err := NewClient(e.Addr, e.CAFile, e.RootToken)
			if err != nil {
				return false
			}
			e.Client = c
		}
		h, err := e.Client.Sys().Health()
		return err == nil && h.Initialized && !h.Sealed
	})
	if err != nil {
		e.Stop()
		return nil, fmt.Errorf("%w%s", err, e.proc.Tail())
	}
	return e, nil
}

// NewClient is a Vault client of addr, verifying it with caFile, logged in
// with token.
func NewClient(addr, caFile, token string) (*api.Client, error) {
	cfg := api.DefaultConfig()
	cfg.Address = addr
	if err := cfg.ConfigureTLS(&api.TLSConfig{CACert: caFile}); err != nil {
		return nil, err
	}
	cfg.MaxRetries = 0
	c, err := api.NewClient(cfg)
	if err != nil {
		return nil, err
	}
	c.SetToken(token)
	return c, nil
}

// Stop stops the server (Vault unreachable from then on). It is safe to
// call more than once.
func (e *Env) Stop() { e.proc.Stop() }

// Write writes data at path as root, failing t on error.
func (e *Env) Write(t testing.TB, path string, data map[string]any) *api.Secret {
	t.Helper()
	s, err := e.Client.Logical().WriteWithContext(context.Background(), path, data)
	if err != nil {
		t.Fatalf("vaultenv: write %s: %v", path, err)
	}
	return s
}

// Read reads path as root, failing t on error.
func (e *Env) Read(t testing.TB, path string) *api.Secret {
	t.Helper()
	s, err := e.Client.Logical().ReadWithContext(context.Background(), path)
	if err != nil {
		t.Fatalf("vaultenv: read %s: %v", path, err)
	}
	return s
}

// Mount enables a secrets engine of type typ at path.
func (e *Env) Mount(t testing.TB, path, typ string) {
	t.Helper()
	if err := e.Client.Sys().Mount(path, &api.MountInput{Type: typ, Config: api.MountConfigInput{MaxLeaseTTL: "87600h"}}); err != nil {
		t.Fatalf("vaultenv: mount %s at %s: %v", typ, path, err)
	}
}

// EnableAuth enables an auth method of type typ at path.
func (e *Env) EnableAuth(t testing.TB, path, typ string) {
	t.Helper()
	if err := e.Client.Sys().EnableAuthWithOptions(path, &api.EnableAuthOptions{Type: typ}); err != nil {
		t.Fatalf("vaultenv: enable auth %s at %s: %v", typ, path, err)
	}
}

// String names the server for logs.
func (e *Env) String() string { return fmt.Sprintf("vault dev server at %s", e.Addr) }
