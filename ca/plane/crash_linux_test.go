//go:build linux

package plane

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshca/meshca/attestor/jointoken"
	"github.com/meshca/meshca/ca/client"
	"github.com/meshca/meshca/ca/store"
	"github.com/meshca/meshca/ca/store/boltstore"
)

// crashDirEnv, set, makes TestCrashServerProcess the CA server of
// TestCrashUnderLoad, with this data directory.
const crashDirEnv = "MESHCA_CRASH_TEST_DATA_DIR"

// TestCrashServerProcess is not a test of its own: TestCrashUnderLoad runs
// the test binary again with only this test and crashDirEnv set, so that a
// real server process, killed with SIGKILL, holds the data directory. It
// serves on 127.0.0.1, writes its address to <dir>/addr, and stops cleanly
// on SIGTERM.
func TestCrashServerProcess(t *testing.T) {
	dir := os.Getenv(crashDirEnv)
	if dir == "" {
		t.Skip("the server process of TestCrashUnderLoad, run by it")
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	p, err := Start(ctx, Config{TrustDomain: td, DataDir: dir, GRPCAddr: "127.0.0.1:0", Logger: slog.New(slog.NewTextHandler(os.Stderr, nil))})
	if err != nil {
		t.Fatal(err)
	}
	addr := filepath.Join(dir, "addr")
	if err := os.WriteFile(addr+".tmp", []byte(p.Addr("grpc").String()), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(addr+".tmp", addr); err != nil {
		t.Fatal(err)
	}
	<-ctx.Done()
	if err := p.Stop(); err != nil {
		t.Fatal(err)
	}
}

// crashServer is a server process of TestCrashUnderLoad.
type crashServer struct {
	cmd    *exec.Cmd
	output bytes.Buffer
	addr   string
	roots  *x509.CertPool
	// wait returns once the process has exited.
	wait func()
}

// startCrashServer starts a server process on dir and waits until it
// serves.
func startCrashServer(t *testing.T, dir string) *crashServer {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	addrFile := filepath.Join(dir, "addr")
	os.Remove(addrFile)
	s := &crashServer{cmd: exec.Command(exe, "-test.run=^TestCrashServerProcess$")}
	s.cmd.Env = append(os.Environ(), crashDirEnv+"="+dir)
	s.cmd.Stdout, s.cmd.Stderr = &s.output, &s.output
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- s.cmd.Wait() }()
	t.Cleanup(func() {
		s.cmd.Process.Kill()
		s.wait()
		if t.Failed() {
			t.Logf("server process output:\n%s", s.output.String())
		}
	})
	// The process writes its address once it serves (it may take a while
	// to start under -race).
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if b, err := os.ReadFile(addrFile); err == nil {
			s.addr = string(b)
			break
		}
		select {
		case err := <-exited:
			t.Fatalf("server process exited: %v\n%s", err, s.output.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("server process not serving after 30s:\n%s", s.output.String())
		}
	}
	bundle, err := os.ReadFile(filepath.Join(dir, BundleFile))
	if err != nil {
		t.Fatal(err)
	}
	s.roots = x509.NewCertPool()
	s.roots.AppendCertsFromPEM(bundle)
	s.wait = sync.OnceFunc(func() { <-exited })
	return s
}

// issued is what the clients of TestCrashUnderLoad received.
type issued struct {
	mu      sync.Mutex
	serials map[string]bool
	tokens  []string // join tokens that bought a certificate
	dupes   []string
}

func (r *issued) add(serial, token string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.serials[serial] {
		r.dupes = append(r.dupes, serial)
	}
	r.serials[serial] = true
	if token != "" {
		r.tokens = append(r.tokens, token)
	}
}

func (r *issued) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.serials)
}

// crashWorker bootstraps with join tokens and renews over mTLS, as an agent
// would, until the server goes away or the tokens run out, recording every
// certificate it receives.
func crashWorker(srv *crashServer, tokens <-chan [2]string, got *issued) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	var current atomic.Pointer[tls.Certificate]
	bootstrap, err := client.New(client.Config{Addr: srv.addr, Roots: srv.roots, ServerName: "localhost"})
	if err != nil {
		return err
	}
	defer bootstrap.Close()
	renew, err := client.New(client.Config{Addr: srv.addr, Roots: srv.roots, ServerName: "localhost",
		ClientCertificate: func() (*tls.Certificate, error) { return current.Load(), nil }})
	if err != nil {
		return err
	}
	defer renew.Close()
	sign := func(c *client.Client, id spiffeid.ID, token string) error {
		csr, err := client.NewCSR(key, id)
		if err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		chain, err := c.Sign(ctx, csr, time.Hour, token)
		if err != nil {
			return err
		}
		cert := &tls.Certificate{PrivateKey: key}
		for _, s := range chain[:len(chain)-1] {
			b, _ := pem.Decode([]byte(s))
			if b == nil {
				return fmt.Errorf("not PEM: %q", s)
			}
			cert.Certificate = append(cert.Certificate, b.Bytes)
		}
		if cert.Leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return err
		}
		got.add(cert.Leaf.SerialNumber.Text(16), token)
		current.Store(cert)
		return nil
	}
	for tok := range tokens {
		id := spiffeid.RequireFromString(tok[1])
		if err := sign(bootstrap, id, tok[0]); err != nil {
			return err
		}
		for range 4 {
			if err := sign(renew, id, ""); err != nil {
				return err
			}
		}
	}
	return nil
}

// TestCrashUnderLoad kills a real server process with SIGKILL while clients
// bootstrap with join tokens and renew over mTLS, twice, then restarts it on
// the same data directory: every certificate a client received is in the
// issuance log, no serial is there twice, and every join token that bought
// a certificate is still consumed.
func TestCrashUnderLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("starts and kills server processes")
	}
	dir := t.TempDir()
	const workers, perRound = 16, 120
	ctx := context.Background()

	// Join tokens, in the data file before the CA first starts.
	st, err := boltstore.Open(filepath.Join(dir, DataFile), boltstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	tokens := make(chan [2]string, 3*perRound)
	for i := range cap(tokens) {
		id := spiffeid.RequireFromPath(td, fmt.Sprintf("/vm/w%d", i))
		tok, _, err := jointoken.Create(ctx, st, id, time.Hour, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		tokens <- [2]string{tok, id.String()}
	}
	close(tokens)
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}

	got := &issued{serials: map[string]bool{}}
	for round := 1; round <= 2; round++ {
		srv := startCrashServer(t, dir)
		before := got.count()
		var wg sync.WaitGroup
		for range workers {
			wg.Go(func() { _ = crashWorker(srv, tokens, got) }) // ends when the server dies
		}
		// Kill it in the middle of the load.
		for deadline := time.Now().Add(20 * time.Second); got.count()-before < perRound; time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("round %d: only %d certificates in 20s", round, got.count()-before)
			}
		}
		if err := srv.cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		srv.wait()
		wg.Wait()
		t.Logf("round %d: killed after %d certificates were received", round, got.count()-before)
		if round > 1 && !strings.Contains(srv.output.String(), "replayed the issuance journal") {
			t.Errorf("round %d: the server did not replay the journal the crash left:\n%s", round, srv.output.String())
		}
	}

	// Restarted, the CA refuses the consumed tokens and issues again.
	srv := startCrashServer(t, dir)
	c, err := client.New(client.Config{Addr: srv.addr, Roots: srv.roots, ServerName: "localhost"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	csr, _ := client.NewCSR(key, spiffeid.RequireFromPath(td, "/vm/w0"))
	if _, err := c.Sign(ctx, csr, time.Hour, got.tokens[0]); err == nil {
		t.Error("a consumed join token bought a certificate after the restart")
	}
	tok, ok := <-tokens
	if !ok {
		t.Fatal("no join token left to issue with after the restart")
	}
	if err := crashWorker(srv, single(tok), got); err != nil {
		t.Fatalf("issuance after the restart: %v", err)
	}
	if err := srv.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	srv.wait()
	if srv.cmd.ProcessState.ExitCode() != 0 {
		t.Fatalf("server stopped with %v:\n%s", srv.cmd.ProcessState, srv.output.String())
	}

	// The issuance log holds exactly what the clients received, at least.
	st, err = boltstore.Open(filepath.Join(dir, DataFile), boltstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if err := st.Check(ctx); err != nil {
		t.Fatalf("data file inconsistent: %v", err)
	}
	recs, err := st.Issuances(ctx, store.IssuanceFilter{})
	if err != nil {
		t.Fatal(err)
	}
	logged := map[string]int{}
	for _, r := range recs {
		logged[r.Serial]++
	}
	for serial, n := range logged {
		if n > 1 {
			t.Errorf("serial %s logged %d times", serial, n)
		}
	}
	if len(got.dupes) > 0 {
		t.Errorf("clients received serials twice: %v", got.dupes)
	}
	missing := 0
	for serial := range got.serials {
		if logged[serial] == 0 {
			missing++
			t.Errorf("certificate %s was received but is not in the issuance log", serial)
		}
	}
	for _, tok := range got.tokens {
		if _, err := st.ConsumeJoinToken(ctx, jointoken.Hash(tok), time.Now(), "test"); !errors.Is(err, store.ErrJoinTokenUsed) {
			t.Errorf("join token that bought a certificate: %v, want still consumed", err)
		}
	}
	t.Logf("%d certificates received; %d records logged (the others issued as a process died); %d tokens consumed", len(got.serials), len(recs), len(got.tokens))
}

// single is a channel holding only tok.
func single(tok [2]string) <-chan [2]string {
	c := make(chan [2]string, 1)
	c <- tok
	close(c)
	return c
}
