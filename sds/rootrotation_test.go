package sds_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"log/slog"
	"net"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshca/meshca/internal/testlog"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/meshca/meshca/attestor"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/ca/store"
	"github.com/meshca/meshca/internal/clock/clocktest"
	"github.com/meshca/meshca/internal/storetest"
	"github.com/meshca/meshca/sds"
)

// caServer is the CA's request path without the network, as the server
// runs it: the attestor chain (renewal with the presented SVID over mTLS,
// then the workloads' bearer tokens) and the Authority, which a test can
// restart on the same store.
type caServer struct {
	st     store.Store
	clk    *clocktest.Fake
	tokens map[string]spiffeid.ID

	mu    sync.Mutex
	auth  *ca.Authority
	chain attestor.Chain
}

func newCAServer(t *testing.T, clk *clocktest.Fake, tokens map[string]spiffeid.ID) *caServer {
	s := &caServer{st: storetest.NewMem(), clk: clk, tokens: tokens}
	s.restart(t)
	return s
}

// restart replaces the Authority and the attestors by new ones on the same
// store, as a server restart does.
func (s *caServer) restart(t *testing.T) {
	t.Helper()
	a, err := ca.New(context.Background(), ca.Config{TrustDomain: td, Store: s.st, Clock: s.clk})
	if err != nil {
		t.Fatalf("ca.New: %v", err)
	}
	mtls, err := attestor.NewMTLS(attestor.MTLSConfig{Bundles: a, Revocations: a, Clock: s.clk})
	if err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.auth, s.chain = a, attestor.Chain{mtls, attestor.NewStaticTokens(s.tokens)}
}

func (s *caServer) authority() *ca.Authority {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.auth
}

// client is what one agent's CA client sends: the token, and with mtls
// its current SVID as the TLS client certificate (as the agent's client
// presents it while it is valid).
func (s *caServer) client(svids *sds.StaticSource, mtls bool) sds.CSRSigner {
	return signerFunc(func(ctx context.Context, csrPEM []byte, ttl time.Duration, token string) ([]string, error) {
		cred := attestor.Credential{BearerToken: token, Peer: "127.0.0.1:1"}
		if cert, _ := sds.ClientCertificate(svids, s.clk)(); mtls && len(cert.Certificate) > 0 {
			for _, der := range cert.Certificate {
				c, err := x509.ParseCertificate(der)
				if err != nil {
					return nil, err
				}
				cred.PeerCertificates = append(cred.PeerCertificates, c)
			}
		}
		s.mu.Lock()
		a, chain := s.auth, s.chain
		s.mu.Unlock()
		id, err := chain.Attest(ctx, cred)
		if err != nil {
			return nil, err
		}
		iss, err := a.Sign(ctx, ca.SignRequest{CSR: csrPEM, TTL: ttl, Identity: id, Peer: cred.Peer})
		if err != nil {
			return nil, err
		}
		return iss.ChainPEM, nil
	})
}

type signerFunc func(ctx context.Context, csrPEM []byte, ttl time.Duration, token string) ([]string, error)

func (f signerFunc) Sign(ctx context.Context, csrPEM []byte, ttl time.Duration, token string) ([]string, error) {
	return f(ctx, csrPEM, ttl, token)
}

// agent is a Manager on the shared fake clock whose waits the test sees,
// so that it moves time only while every agent is waiting.
type agent struct {
	name  string
	m     *sds.Manager
	waits chan time.Duration
	wake  time.Time // when its pending wait ends
	logs  *testlog.Buffer
}

// agentClock reports each wait of one agent.
type agentClock struct {
	*clocktest.Fake
	waits chan time.Duration
}

func (c agentClock) After(d time.Duration) <-chan time.Time {
	ch := c.Fake.After(d)
	c.waits <- d
	return ch
}

// startAgent runs an agent for id, with no jitter, trusting the CA's roots
// of now (as a --ca-roots file that is never updated). With mtls it gets
// its first SVID with token and renews with the SVID over mTLS, as a VM
// does with a join token; without, it sends token every time, as an agent
// with a projected ServiceAccount token does.
func startAgent(t *testing.T, name string, s *caServer, id spiffeid.ID, token string, mtls bool) *agent {
	t.Helper()
	ag := &agent{name: name, waits: make(chan time.Duration, 100), logs: &testlog.Buffer{}}
	svids := sds.NewStaticSource(nil)
	m, err := sds.NewManager(sds.Config{
		ID: id, CA: s.client(svids, mtls), RenewWithSVID: mtls, Publish: svids,
		Token:  func(context.Context) (string, error) { return token, nil },
		Roots:  s.authority().Bundle().X509Authorities(),
		Jitter: -1, Rand: func() float64 { return 0.5 },
		Clock: agentClock{Fake: s.clk, waits: ag.waits}, Logger: slog.New(slog.NewTextHandler(ag.logs, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	ag.m = m
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = m.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	ag.await(t, s.clk)
	if m.Current() == nil {
		t.Fatalf("%s: no first SVID; log:\n%s", name, ag.logs.String())
	}
	return ag
}

// await waits for the agent's next wait and records when it ends.
func (ag *agent) await(t *testing.T, clk *clocktest.Fake) {
	t.Helper()
	select {
	case d := <-ag.waits:
		ag.wake = clk.Now().Add(d)
	case <-time.After(safety):
		t.Fatalf("%s never waited; log:\n%s", ag.name, ag.logs.String())
	}
}

// advance moves the clock to until, stopping at each agent's wake-up to
// let it renew (and wait again) before going on.
func advance(t *testing.T, clk *clocktest.Fake, until time.Time, agents ...*agent) {
	t.Helper()
	for {
		sort.Slice(agents, func(i, j int) bool { return agents[i].wake.Before(agents[j].wake) })
		next := agents[0]
		if next.wake.After(until) {
			clk.Set(until)
			return
		}
		clk.Set(next.wake)
		for _, ag := range agents {
			if !ag.wake.After(clk.Now()) {
				ag.await(t, clk)
			}
		}
	}
}

// bundle is what an agent serves: its roots.
func (ag *agent) bundle() *x509bundle.Bundle {
	return x509bundle.FromX509Authorities(td, ag.m.Current().Roots)
}

// check verifies the agent's certificate against the bundle it holds.
func (ag *agent) check(t *testing.T, now time.Time) {
	t.Helper()
	cur := ag.m.Current()
	if _, _, err := x509svid.Verify(cur.Certificates, ag.bundle(), x509svid.WithTime(now)); err != nil {
		t.Fatalf("%s: its certificate does not verify against the bundle it holds: %v", ag.name, err)
	}
}

// handshake runs mutual TLS between client and server at now, each
// presenting its current SVID and verifying the other's against the
// bundle it holds, as Envoy does with SDS's default and ROOTCA.
func handshake(t *testing.T, client, server *agent, now time.Time) {
	t.Helper()
	verify := func(ag *agent) func([][]byte, [][]*x509.Certificate) error {
		return func(raw [][]byte, _ [][]*x509.Certificate) error {
			_, _, err := x509svid.ParseAndVerify(raw, ag.bundle(), x509svid.WithTime(now))
			return err
		}
	}
	cert := func(ag *agent) tls.Certificate {
		c, err := ag.m.TLSCertificate()
		if err != nil {
			t.Fatal(err)
		}
		return *c
	}
	clock := func() time.Time { return now }
	cConn, sConn := net.Pipe()
	srv := tls.Server(sConn, &tls.Config{Certificates: []tls.Certificate{cert(server)}, ClientAuth: tls.RequireAnyClientCert,
		VerifyPeerCertificate: verify(server), Time: clock, MinVersion: tls.VersionTLS12})
	cli := tls.Client(cConn, &tls.Config{Certificates: []tls.Certificate{cert(client)}, InsecureSkipVerify: true, //nolint:gosec // verified as SPIFFE does, below
		VerifyPeerCertificate: verify(client), Time: clock, MinVersion: tls.VersionTLS12})
	errc := make(chan error, 1)
	go func() { errc <- srv.Handshake(); _ = sConn.Close() }()
	cerr := cli.Handshake()
	_ = cConn.Close() // not cli.Close: its close_notify would wait on the pipe
	if serr := <-errc; cerr != nil || serr != nil {
		t.Fatalf("handshake %s → %s at %s: client %v, server %v", client.name, server.name, now, cerr, serr)
	}
}

// chainsTo reports whether the agent's certificate chains to root.
func (ag *agent) chainsTo(root *x509.Certificate) bool {
	c := ag.m.Current().Certificates
	return c[len(c)-1].CheckSignatureFrom(root) == nil
}

// TestRootRotationWithAgents rotates the self-signed root with two agents
// connected throughout, on a fake clock: at every step each agent's
// certificate verifies against the bundle it holds, and the two
// workloads, one renewed before the switch and one after, complete a
// mutual TLS handshake. No agent restarts; the CA restarts in the middle
// of each phase and resumes.
func TestRootRotationWithAgents(t *testing.T) {
	clk := clocktest.New(t0)
	idA, idB := spiffeid.RequireFromPath(td, "/ns/default/sa/a"), spiffeid.RequireFromPath(td, "/ns/default/sa/b")
	s := newCAServer(t, clk, map[string]spiffeid.ID{"token-a": idA, "token-b": idB})
	oldRoot := s.authority().Bundle().X509Authorities()[0]
	at := func(d time.Duration) time.Time { return t0.Add(d) }

	// A starts now and renews every 12 hours (half its 24 h lifetime), B
	// six hours later; both renew over mTLS.
	clk.Set(at(10 * time.Minute))
	a := startAgent(t, "a", s, idA, "token-a", true)
	clk.Set(at(6*time.Hour + 10*time.Minute))
	b := startAgent(t, "b", s, idB, "token-b", true)
	agents := []*agent{a, b}
	step := func(name string, d time.Duration, wantPhase string) {
		t.Helper()
		advance(t, clk, at(d), agents...)
		if err := s.authority().Rotate(context.Background()); err != nil {
			t.Fatalf("%s: Rotate: %v", name, err)
		}
		if got := phaseOf(t, s.authority()); got != wantPhase {
			t.Fatalf("%s: phase %q, want %q", name, got, wantPhase)
		}
		for _, ag := range agents {
			ag.check(t, clk.Now())
		}
		handshake(t, a, b, clk.Now())
		handshake(t, b, a, clk.Now())
	}
	step("before", 7*time.Hour, "")

	// Prepared at 7h: the switch is due one renewal period (24 h) later.
	if _, err := s.authority().RotateRoot(context.Background(), ca.RootRotationRequest{Action: ca.RootRotationStart}); err != nil {
		t.Fatal(err)
	}
	newRoot := s.authority().Bundle().X509Authorities()[1]
	step("prepared", 8*time.Hour, store.PhasePrepared)
	s.restart(t)
	step("prepared, both agents renewed", 19*time.Hour, store.PhasePrepared)
	for _, ag := range agents {
		if len(ag.m.Current().Roots) != 2 {
			t.Fatalf("%s holds %d roots before the switch, want both", ag.name, len(ag.m.Current().Roots))
		}
	}
	step("prepared, both renewed again", 30*time.Hour+30*time.Minute, store.PhasePrepared)
	step("just before the switch", 31*time.Hour-time.Second, store.PhasePrepared)

	step("switched", 31*time.Hour, store.PhaseSwitched)
	s.restart(t)
	step("switched, retirement known", 31*time.Hour+5*time.Minute, store.PhaseSwitched)
	// The last leaf under the old root is b's of 30h10m.
	if st, _ := s.st.LoadCAState(context.Background()); !st.RootRotation.RetireAfter.Equal(at(54*time.Hour + 10*time.Minute)) {
		t.Fatalf("RetireAfter = %s, want the expiry of b's last leaf under the old root", st.RootRotation.RetireAfter)
	}
	step("switched, a renewed", 36*time.Hour+30*time.Minute, store.PhaseSwitched)
	if !a.chainsTo(newRoot) || !b.chainsTo(oldRoot) {
		t.Fatal("want b renewed before the switch (old root) and a after (new root)")
	}
	s.restart(t)
	step("switched, both under the new root", 42*time.Hour+30*time.Minute, store.PhaseSwitched)
	if !b.chainsTo(newRoot) {
		t.Fatal("b did not move to the new root")
	}
	step("just before completion", 54*time.Hour, store.PhaseSwitched)
	step("completed", 54*time.Hour+10*time.Minute, store.PhaseCompleted)
	if roots := s.authority().Bundle().X509Authorities(); len(roots) != 1 || !roots[0].Equal(newRoot) {
		t.Fatal("completed: the CA still trusts the old root")
	}
	s.restart(t)
	step("completed, after a restart", 66*time.Hour+30*time.Minute, store.PhaseCompleted)
	for _, ag := range agents {
		if !ag.chainsTo(newRoot) {
			t.Errorf("%s does not chain to the new root after the rotation", ag.name)
		}
	}
}

func phaseOf(t *testing.T, a *ca.Authority) string {
	t.Helper()
	st, err := a.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if st.RootRotation == nil {
		return ""
	}
	return st.RootRotation.Phase
}

// TestEmergencyRotationWithAgents: after an emergency intermediate
// rotation, renewal with a certificate of the revoked intermediate is
// refused, also after a restart: the agent that renews over mTLS keeps
// serving its valid certificate and says why in its log (outside
// Kubernetes it needs a new join token); the agent that sends its
// ServiceAccount token gets its next certificate from the fresh
// intermediate.
func TestEmergencyRotationWithAgents(t *testing.T) {
	clk := clocktest.New(t0)
	idVM, idPod := spiffeid.RequireFromPath(td, "/vm/web-1"), spiffeid.RequireFromPath(td, "/ns/default/sa/a")
	s := newCAServer(t, clk, map[string]spiffeid.ID{"join-token": idVM, "sa-token": idPod})
	vm := startAgent(t, "vm", s, idVM, "join-token", true)
	pod := startAgent(t, "pod", s, idPod, "sa-token", false)
	before := vm.m.Current()

	revoked, active, err := s.authority().RotateIntermediateNow(context.Background(), "key compromise")
	if err != nil {
		t.Fatal(err)
	}
	if !before.Certificates[1].Equal(revoked) {
		t.Fatal("the revoked intermediate is not the one that signed the agent's certificate")
	}
	// Renewal with the old certificate, as the agent's client sends it.
	_, err = s.client(sds.NewStaticSource(before), true).Sign(context.Background(), nil, 0, "")
	if !errors.Is(err, attestor.ErrPermissionDenied) || !strings.Contains(err.Error(), "revoked") {
		t.Fatalf("renewal with a certificate of the revoked intermediate: %v", err)
	}
	s.restart(t) // the revocation survives a restart

	advance(t, clk, pod.wake, vm, pod)
	if cur := pod.m.Current(); cur.Version != 2 || !cur.Certificates[1].Equal(active) {
		t.Fatalf("the pod's next certificate: version %d, signed by %s, want the fresh intermediate", cur.Version, cur.Certificates[1].Subject)
	}
	pod.check(t, clk.Now())
	if cur := vm.m.Current(); cur.Version != before.Version {
		t.Fatal("renewed over mTLS with a certificate of the revoked intermediate")
	}
	if logs := vm.logs.String(); !strings.Contains(logs, "revoked") {
		t.Errorf("the VM agent's log does not say its certificate is revoked:\n%s", logs)
	}
	handshake(t, vm, pod, clk.Now()) // peers still accept it until it expires
}
