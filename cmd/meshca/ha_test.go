package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshca/meshca/internal/testlog"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/meshca/meshca/ca/adminclient"
	"github.com/meshca/meshca/ca/client"
	"github.com/meshca/meshca/ca/server"
	"github.com/meshca/meshca/internal/clock/clocktest"
	"github.com/meshca/meshca/internal/jwtsvid"
	"github.com/meshca/meshca/internal/pgenv"
	"github.com/meshca/meshca/internal/pki"
	"github.com/meshca/meshca/internal/testca"
)

// runMainEnv, set to 1, makes the test binary run meshca's main with its
// arguments instead of the tests: the server processes of the HA tests.
const runMainEnv = "MESHCA_TEST_RUN_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(runMainEnv) == "1" {
		os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

// serverProc is a `meshca server` process.
type serverProc struct {
	cmd        *exec.Cmd
	logs       testlog.Buffer
	grpc, http string
	done       chan struct{}
}

var listeningRE = regexp.MustCompile(`msg=listening .*api=(\S+) addr=(\S+)`)

// startServerProc runs `meshca server args...` as its own process (the
// test binary running main) and waits until its gRPC and HTTPS listeners
// are up. It is killed when t ends.
func startServerProc(t *testing.T, args ...string) *serverProc {
	t.Helper()
	p := &serverProc{done: make(chan struct{})}
	p.cmd = exec.Command(os.Args[0], append([]string{"server", "--log-format", "text"}, args...)...) // #nosec G204 -- the test binary itself
	p.cmd.Env = append(os.Environ(), runMainEnv+"=1")
	p.cmd.Stdout, p.cmd.Stderr = &p.logs, &p.logs
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			t.Logf("server %d output:\n%s", p.cmd.Process.Pid, p.logs.String())
		}
	})
	clocktest.Eventually(t, "the server process listens", func() bool {
		select {
		case <-p.done:
			t.Fatalf("the server exited:\n%s", p.logs.String())
		default:
		}
		for _, m := range listeningRE.FindAllStringSubmatch(p.logs.String(), -1) {
			switch m[1] {
			case "grpc":
				p.grpc = m[2]
			case "https":
				p.http = m[2]
			}
		}
		return p.grpc != "" && p.http != ""
	})
	return p
}

// haPair is two `meshca server` processes on one PostgreSQL database under
// one Istio cacerts root (pathlen 1: each makes its own intermediate), with
// one admin token.
type haPair struct {
	a, b                *serverProc
	roots               *x509.CertPool
	rootFile, tokenFile string
}

func startHAPair(t *testing.T, extra ...string) haPair {
	t.Helper()
	pg := pgenv.Start(t)
	dir := t.TempDir()
	dsnFile := filepath.Join(dir, "dsn")
	if err := os.WriteFile(dsnFile, []byte(pg.NewDatabase(t)), 0o600); err != nil {
		t.Fatal(err)
	}
	cacerts := filepath.Join(dir, "cacerts")
	c := testca.NewIstioCACerts(t, testca.IstioOptions{CACert: func(tmpl *x509.Certificate) { tmpl.MaxPathLen, tmpl.MaxPathLenZero = 1, false }})
	if err := os.Mkdir(cacerts, 0o700); err != nil {
		t.Fatal(err)
	}
	c.Write(t, cacerts)
	h := haPair{roots: x509.NewCertPool(), rootFile: filepath.Join(cacerts, "root-cert.pem"), tokenFile: filepath.Join(dir, "admin-token")}
	h.roots.AddCert(c.Root)
	if err := os.WriteFile(h.tokenFile, []byte("ha-test-admin-token-0123456789abcdef"), 0o600); err != nil {
		t.Fatal(err)
	}
	common := append([]string{"--trust-domain", "example.org", "--store-dsn-file", dsnFile, "--cacerts-dir", cacerts,
		"--admin-token-file", h.tokenFile, "--grpc-listen", "127.0.0.1:0", "--https-listen", "127.0.0.1:0", "--monitoring-listen", ""}, extra...)
	h.a = startServerProc(t, append([]string{"--data-dir", filepath.Join(dir, "a")}, common...)...)
	h.b = startServerProc(t, append([]string{"--data-dir", filepath.Join(dir, "b")}, common...)...)
	return h
}

// admin is an admin API client of p.
func (h haPair) admin(t *testing.T, p *serverProc) *adminclient.Client {
	t.Helper()
	ac, err := adminclient.New(adminclient.Config{Addr: p.http, CAFile: h.rootFile, TokenFile: h.tokenFile})
	if err != nil {
		t.Fatal(err)
	}
	return ac
}

// TestHAServerProcesses runs two `meshca server` processes on one
// PostgreSQL database under one Istio cacerts root: a join token created on
// A is consumed on B and refused as a replay on A; a revocation made on A
// is enforced by B; `meshca audit issued` against A lists what B issued;
// 1,000 concurrent uses of 100 join tokens split across both succeed
// exactly once per token.
func TestHAServerProcesses(t *testing.T) {
	// 900 replays come from this one address: the per-address budget of
	// failed attempts would rightly refuse most of them.
	h := startHAPair(t, "--unauthenticated-rate", "-1", "--jwt-key-publish-delay", "2s")
	a, b, roots, rootFile, tokenFile := h.a, h.b, h.roots, h.rootFile, h.tokenFile
	ctx := context.Background()
	admin := func(p *serverProc) *adminclient.Client { return h.admin(t, p) }
	csrClient := func(p *serverProc) *client.Client {
		cl, err := client.New(client.Config{Addr: p.grpc, Roots: roots, ServerName: "localhost"})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cl.Close() })
		return cl
	}
	ca, cb := csrClient(a), csrClient(b)
	id := spiffeid.RequireFromString("spiffe://example.org/vm/db-1")
	key, csr := testca.NewCSR(t, id)

	// A join token created on A, used on B, replayed on A.
	jt, err := admin(a).CreateJoinToken(ctx, server.JoinTokenRequest{SPIFFEID: id.String(), TTL: "1h"})
	if err != nil {
		t.Fatal(err)
	}
	chain, err := cb.Sign(ctx, csr, time.Hour, jt.Token)
	if err != nil {
		t.Fatalf("the token on B: %v", err)
	}
	if _, err := ca.Sign(ctx, csr, time.Hour, jt.Token); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("the token replayed on A: %v, want Unauthenticated", err)
	}
	leaf, err := pki.ParseCertificate(chain[0])
	if err != nil {
		t.Fatal(err)
	}

	// `meshca audit issued` against A counts B's certificate; A's log has
	// its record.
	var out, errOut bytes.Buffer
	if code := run([]string{"audit", "issued", "--server", a.http, "--ca-file", rootFile, "--admin-token-file", tokenFile, "-o", "json"}, &out, &errOut); code != 0 ||
		!strings.Contains(out.String(), `"spiffe_id": "`+id.String()+`",
      "issued": 1,`) {
		t.Fatalf("meshca audit issued against A: %d\n%s%s\nwant the identity B issued, once", code, out.String(), errOut.String())
	}
	recs, err := admin(a).Issuances(ctx, id.String(), time.Hour)
	if err != nil || len(recs.Issuances) != 1 || recs.Issuances[0].Serial != leaf.SerialNumber.Text(16) {
		t.Fatalf("A's log: %+v, %v; want B's serial %s", recs, err, leaf.SerialNumber.Text(16))
	}

	// Revoked on A, refused on B: renewal over mTLS with the certificate.
	cert := &tls.Certificate{PrivateKey: key}
	for _, p := range chain[:len(chain)-1] { // the last element is the bundle
		c, err := pki.ParseCertificate(p)
		if err != nil {
			t.Fatal(err)
		}
		cert.Certificate = append(cert.Certificate, c.Raw)
	}
	renewB, err := client.New(client.Config{Addr: b.grpc, Roots: roots, ServerName: "localhost",
		ClientCertificate: func() (*tls.Certificate, error) { return cert, nil }})
	if err != nil {
		t.Fatal(err)
	}
	defer renewB.Close()
	if _, err := renewB.Sign(ctx, csr, time.Hour, ""); err != nil {
		t.Fatalf("renewal on B before the revocation: %v", err)
	}
	haJWTSVIDs(t, renewB, cert, a, roots)
	if _, err := admin(a).Revoke(ctx, server.RevokeRequest{Serial: leaf.SerialNumber.Text(16), Reason: "ha test"}); err != nil {
		t.Fatal(err)
	}
	if _, err := renewB.Sign(ctx, csr, time.Hour, ""); status.Code(err) == codes.OK {
		t.Fatal("B renewed a certificate revoked on A")
	}

	// 1,000 concurrent uses of 100 tokens across both replicas.
	const tokens, uses = 100, 10
	toks := make([]string, tokens)
	for i := range toks {
		r, err := admin(a).CreateJoinToken(ctx, server.JoinTokenRequest{SPIFFEID: fmt.Sprintf("spiffe://example.org/vm/n-%d", i), TTL: "1h"})
		if err != nil {
			t.Fatal(err)
		}
		toks[i] = r.Token
	}
	var (
		wins    [tokens]atomic.Int32
		other   atomic.Int32
		wg      sync.WaitGroup
		limiter = make(chan struct{}, 64)
	)
	for i := range tokens * uses {
		wg.Go(func() {
			limiter <- struct{}{}
			defer func() { <-limiter }()
			n := i % tokens
			cl := ca
			if i%2 == 1 {
				cl = cb
			}
			csr, err := client.NewCSR(key, spiffeid.RequireFromString(fmt.Sprintf("spiffe://example.org/vm/n-%d", n)))
			if err != nil {
				other.Add(1)
				return
			}
			_, err = cl.Sign(ctx, csr, time.Hour, toks[n])
			switch code := status.Code(err); {
			case err == nil:
				wins[n].Add(1)
			case code != codes.Unauthenticated && !errors.Is(err, context.Canceled):
				other.Add(1)
				t.Logf("use %d: %v", i, err)
			}
		})
	}
	wg.Wait()
	for n := range wins {
		if w := wins[n].Load(); w != 1 {
			t.Errorf("token %d used %d times, want exactly once", n, w)
		}
	}
	if n := other.Load(); n != 0 {
		t.Errorf("%d uses failed otherwise than as replays", n)
	}
}

// haJWTSVIDs: each replica signs JWT-SVIDs with its own key; A, started
// first, signs at once, B once its key has been published (2 s here), and
// a token of either validates with the bundle from the other (A reads B's
// key at its next look at the shared state, within 30 s).
func haJWTSVIDs(t *testing.T, onB *client.Client, cert *tls.Certificate, a *serverProc, roots *x509.CertPool) {
	ctx := context.Background()
	onA, err := client.New(client.Config{Addr: a.grpc, Roots: roots, ServerName: "localhost",
		ClientCertificate: func() (*tls.Certificate, error) { return cert, nil }})
	if err != nil {
		t.Fatal(err)
	}
	defer onA.Close()
	td := spiffeid.RequireTrustDomainFromString("example.org")
	aud := []string{"db"}
	fromA, err := onA.MintJWTSVID(ctx, aud, "")
	if err != nil {
		t.Fatalf("JWT-SVID from A: %v", err)
	}
	validates := func(tok string, by *client.Client) error {
		b, err := by.JWTBundle(ctx, td)
		if err != nil {
			return err
		}
		_, _, err = jwtsvid.Validate(tok, b, aud, time.Now())
		return err
	}
	if err := validates(fromA, onB); err != nil {
		t.Fatalf("A's JWT-SVID with B's bundle: %v", err)
	}
	var fromB string
	clocktest.Eventually(t, "B signs JWT-SVIDs once its key is published", func() bool {
		fromB, err = onB.MintJWTSVID(ctx, aud, "")
		if err != nil && status.Code(err) != codes.Unavailable {
			t.Fatalf("JWT-SVID from B: %v", err)
		}
		return err == nil
	})
	for deadline := time.Now().Add(time.Minute); validates(fromB, onA) != nil; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("B's JWT-SVID with A's bundle after a minute: %v", validates(fromB, onA))
		}
	}
}

// TestHAKillReplicaUnderLoad: 16 workloads renew over mTLS as fast as they
// can through clients that know both `meshca server` processes; one
// process is killed with SIGKILL in the middle. The workloads go on through
// the other, and afterwards every certificate a workload received is in
// the shared issuance log, and no serial is there twice.
func TestHAKillReplicaUnderLoad(t *testing.T) {
	h := startHAPair(t)
	a, b, roots := h.a, h.b, h.roots
	ctx := context.Background()
	adminB := h.admin(t, b)

	const workers = 16
	var (
		mu       sync.Mutex
		received = map[string]int{} // serial → times received
		stop     atomic.Bool
		wg       sync.WaitGroup
		done     [workers]atomic.Int64
	)
	for w := range workers {
		id := spiffeid.RequireFromString(fmt.Sprintf("spiffe://example.org/vm/w-%d", w))
		jt, err := adminB.CreateJoinToken(ctx, server.JoinTokenRequest{SPIFFEID: id.String(), TTL: "1h"})
		if err != nil {
			t.Fatal(err)
		}
		key, csr := testca.NewCSR(t, id)
		var current atomic.Pointer[tls.Certificate]
		cl, err := client.New(client.Config{Addrs: []string{a.grpc, b.grpc}, Roots: roots, ServerName: "localhost",
			ClientCertificate: func() (*tls.Certificate, error) { return current.Load(), nil }})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cl.Close() })
		keep := func(chain []string) {
			cert := &tls.Certificate{PrivateKey: key}
			for _, p := range chain[:len(chain)-1] {
				c, err := pki.ParseCertificate(p)
				if err != nil {
					t.Error(err)
					return
				}
				cert.Certificate = append(cert.Certificate, c.Raw)
			}
			leaf, _ := x509.ParseCertificate(cert.Certificate[0])
			mu.Lock()
			received[leaf.SerialNumber.Text(16)]++
			mu.Unlock()
			current.Store(cert)
			done[w].Add(1)
		}
		chain, err := cl.Sign(ctx, csr, time.Hour, jt.Token)
		if err != nil {
			t.Fatal(err)
		}
		keep(chain)
		wg.Go(func() {
			for !stop.Load() {
				cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				chain, err := cl.Sign(cctx, csr, time.Hour, "")
				cancel()
				if err != nil {
					continue // the kill: the client moves on to the other replica
				}
				keep(chain)
			}
		})
	}
	total := func() (n int64) {
		for i := range done {
			n += done[i].Load()
		}
		return n
	}
	clocktest.Eventually(t, "load before the kill", func() bool { return total() > 200 })
	if err := a.cmd.Process.Kill(); err != nil { // SIGKILL
		t.Fatal(err)
	}
	<-a.done
	atKill := total()
	clocktest.Eventually(t, "every workload renews after the kill", func() bool {
		for i := range done {
			if done[i].Load() < 3 {
				return false
			}
		}
		return total() > atKill+200
	})
	stop.Store(true)
	wg.Wait()

	logged := map[string]int{}
	for w := range workers {
		recs, err := adminB.Issuances(ctx, fmt.Sprintf("spiffe://example.org/vm/w-%d", w), time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range recs.Issuances {
			logged[r.Serial]++
		}
	}
	for serial, n := range received {
		if n != 1 {
			t.Errorf("serial %s received %d times", serial, n)
		}
		if logged[serial] == 0 {
			t.Errorf("serial %s was received but is not in the log", serial)
		}
	}
	for serial, n := range logged {
		if n != 1 {
			t.Errorf("serial %s is in the log %d times", serial, n)
		}
	}
	t.Logf("%d certificates received (%d after the kill), %d in the log", total(), total()-atKill, len(logged))
}
