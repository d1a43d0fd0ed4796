package agent

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/meshca/meshca/attestor"
	"github.com/meshca/meshca/ca/plane"
	"github.com/meshca/meshca/internal/clock/clocktest"
	"github.com/meshca/meshca/sds"
)

// startCA runs a real CA plane in dir/ca whose static tokens prove id.
func startCA(t *testing.T, dir, listen string, id spiffeid.ID) *plane.Plane {
	t.Helper()
	p, err := plane.Start(context.Background(), plane.Config{
		TrustDomain: spiffeid.RequireTrustDomainFromString("example.org"), DataDir: filepath.Join(dir, "ca"),
		GRPCAddr: listen, Extra: []attestor.Attestor{attestor.NewStaticTokens(map[string]spiffeid.ID{"web-token": id})},
	})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// caFixture is a CA plane for the agent tests, in a short temporary
// directory (Unix socket paths are limited to 108 bytes), and a token file
// for id.
type caFixture struct {
	dir, tokenFile string
	id             spiffeid.ID
	p              *plane.Plane
}

func newCAFixture(t *testing.T) caFixture {
	t.Helper()
	dir, err := os.MkdirTemp("", "agent")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	f := caFixture{dir: dir, tokenFile: filepath.Join(dir, "token"), id: spiffeid.RequireFromString("spiffe://example.org/ns/web/sa/frontend")}
	f.p = startCA(t, dir, "127.0.0.1:0", f.id)
	t.Cleanup(func() { f.p.Stop() })
	if err := os.WriteFile(f.tokenFile, []byte("web-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

// agentConfig is the Config of an agent for f.id using f's CA, its roots
// and token; tests add the sockets and options they exercise.
func (f caFixture) agentConfig() Config {
	return Config{ID: f.id, CAAddr: f.p.Addr("grpc").String(), CARootsFile: filepath.Join(f.dir, "ca", "bundle.pem"), TokenFile: f.tokenFile}
}

// TestAgentEndToEnd runs the CA plane and an agent beside it, as make run
// does, and reads the SVID back through the Workload API (go-spiffe's own
// client), SDS (go-control-plane's client) and /readyz.
func TestAgentEndToEnd(t *testing.T) {
	f := newCAFixture(t)
	dir, id := f.dir, f.id

	ao := f.agentConfig()
	ao.SDSSocket, ao.WorkloadSocket = filepath.Join(dir, "s", "sds.sock"), filepath.Join(dir, "s", "wl.sock")
	ao.MonitorAddr, ao.SDSTCPAddr = "127.0.0.1:0", "127.0.0.1:0"
	a, err := Start(context.Background(), ao)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Stop()

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	src, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(workloadapi.WithAddr("unix://"+ao.WorkloadSocket)))
	if err != nil {
		t.Fatalf("Workload API: %v", err)
	}
	defer src.Close()
	svid, err := src.GetX509SVID()
	if err != nil || svid.ID != id {
		t.Fatalf("Workload API SVID %v, %v; want %s", svid, err, id)
	}

	conn, err := grpc.NewClient("unix://"+ao.SDSSocket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	resp, err := secretv3.NewSecretDiscoveryServiceClient(conn).FetchSecrets(ctx, &discovery.DiscoveryRequest{
		TypeUrl: "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret", ResourceNames: []string{"default"}})
	if err != nil || len(resp.Resources) != 1 {
		t.Fatalf("SDS FetchSecrets: %v, %v", resp, err)
	}

	// SDS over TCP with mTLS: the workload's own SVID is allowed; a
	// client without one is refused at the handshake.
	fetchTCP := func(tlsCfg *tls.Config) error {
		cc, err := grpc.NewClient(a.SDSTCPAddr().String(), grpc.WithTransportCredentials(credentials.NewTLS(tlsCfg)))
		if err != nil {
			return err
		}
		defer cc.Close()
		_, err = secretv3.NewSecretDiscoveryServiceClient(cc).FetchSecrets(ctx, &discovery.DiscoveryRequest{
			TypeUrl: "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret", ResourceNames: []string{"default"}})
		return err
	}
	own := sds.SPIFFESource{Source: sds.NewStaticSource(a.mgr.Current())}
	if err := fetchTCP(tlsconfig.MTLSClientConfig(own, own, tlsconfig.AuthorizeID(id))); err != nil {
		t.Fatalf("SDS over mTLS with the workload's SVID: %v", err)
	}
	pool := x509.NewCertPool()
	for _, r := range a.mgr.Current().Roots {
		pool.AddCert(r)
	}
	if err := fetchTCP(&tls.Config{RootCAs: pool, ServerName: "x", InsecureSkipVerify: true}); err == nil {
		t.Fatal("SDS over TCP served a client without a certificate")
	}

	r, err := http.Get("http://" + a.MonitorAddr().String() + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(r.Body)
	r.Body.Close()
	if r.StatusCode != 200 || !strings.Contains(string(body), "SVID valid until") {
		t.Fatalf("/readyz %d %q", r.StatusCode, body)
	}
	r, err = http.Get("http://" + a.MonitorAddr().String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(r.Body)
	r.Body.Close()
	for _, want := range []string{`meshca_agent_renewals_total{result="ok"} 1`, "meshca_agent_svid_expiry_timestamp_seconds"} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	for _, sock := range []string{ao.SDSSocket, ao.WorkloadSocket} {
		fi, err := os.Stat(sock)
		if err != nil || fi.Mode().Perm()&0o007 != 0 {
			t.Errorf("%s: mode %v, %v; want no access for others", sock, fi.Mode(), err)
		}
	}
}

func TestAgentRefusesBadConfig(t *testing.T) {
	dir := t.TempDir()
	roots := filepath.Join(dir, "roots.pem")
	os.WriteFile(roots, []byte("not pem"), 0o644)
	tok := filepath.Join(dir, "tok")
	os.WriteFile(tok, []byte("x"), 0o600)
	id := spiffeid.RequireFromString("spiffe://example.org/x")
	tests := []struct {
		name string
		cfg  Config
		msg  string
	}{
		{"no identity", Config{CAAddr: "127.0.0.1:1", CARootsFile: roots, TokenFile: tok}, "SPIFFE ID is required"},
		{"no CA address", Config{ID: id, CARootsFile: roots, TokenFile: tok}, "CA address is required"},
		{"no roots", Config{ID: id, CAAddr: "127.0.0.1:1", TokenFile: tok}, "CA roots file is required"},
		{"roots not PEM", Config{ID: id, CAAddr: "127.0.0.1:1", CARootsFile: roots, TokenFile: tok}, "no PEM certificates"},
		{"roots missing", Config{ID: id, CAAddr: "127.0.0.1:1", CARootsFile: filepath.Join(dir, "absent"), TokenFile: tok}, "absent"},
		{"no credential", Config{ID: id, CAAddr: "127.0.0.1:1", CARootsFile: roots}, "token file"},
		{"two credentials", Config{ID: id, CAAddr: "127.0.0.1:1", CARootsFile: roots, TokenFile: tok, JoinTokenFile: tok}, "choose one"},
		{"CA address without port", Config{ID: id, CAAddr: "ca", CARootsFile: roots, TokenFile: tok}, "CA address"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Start(context.Background(), tc.cfg)
			if err == nil || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("err = %v, want %q", err, tc.msg)
			}
		})
	}
}

// TestAgentSurvivesCAOutage stops the real CA under a running agent: the
// agent keeps serving its valid SVID, retries with backoff (no hot loop),
// and renews once the CA is back on the same address and data.
func TestAgentSurvivesCAOutage(t *testing.T) {
	dir, err := os.MkdirTemp("", "outage")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	id := spiffeid.RequireFromString("spiffe://example.org/ns/web/sa/frontend")
	p := startCA(t, dir, "127.0.0.1:0", id)
	caAddr := p.Addr("grpc").String()
	tokenFile := filepath.Join(dir, "token")
	os.WriteFile(tokenFile, []byte("web-token"), 0o600)
	clk := clocktest.New(time.Now())
	ao := Config{ID: id, CAAddr: caAddr, CARootsFile: filepath.Join(dir, "ca", "bundle.pem"),
		TokenFile: tokenFile, WorkloadSocket: filepath.Join(dir, "wl.sock"), Clock: clk,
		FederationRefresh: -1} // no federation wait on clk
	a, err := Start(context.Background(), ao)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Stop()
	waitUntil := func(cond func() bool, what string) {
		deadline := time.Now().Add(20 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
			runtime.Gosched()
		}
	}
	// Failed renewals as /metrics reports them.
	failures := func() float64 {
		mfs, err := a.reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if mf.GetName() != "meshca_agent_renewals_total" {
				continue
			}
			for _, m := range mf.GetMetric() {
				for _, l := range m.GetLabel() {
					if l.GetName() == "result" && l.GetValue() == "error" {
						return m.GetCounter().GetValue()
					}
				}
			}
		}
		return 0
	}
	waitUntil(func() bool { return a.mgr.Current() != nil }, "the first SVID")
	first := a.mgr.Current()

	p.Stop() // the CA goes away
	// The JWT bundle's refresh always waits on clk; the renewal (then
	// each backoff) is the second waiter.
	waitUntil(func() bool { return clk.Waiters() > 1 }, "the renewal wait")
	clk.Advance(15 * time.Hour) // past the renewal time (half of 24h, ±10 % of 24h)
	waitUntil(func() bool { return failures() >= 1 }, "a failed renewal")
	// Each backoff step allows one attempt: advancing a little at a time
	// never produces a burst.
	for i := range 5 {
		before := failures()
		waitUntil(func() bool { return clk.Waiters() > 1 }, "the backoff wait")
		clk.Advance(time.Duration(1<<i) * 1300 * time.Millisecond) // ≥ backoff i with +20 % jitter
		waitUntil(func() bool { return failures() == before+1 }, "the next attempt")
		if a.mgr.Current() != first {
			t.Fatal("the valid SVID was dropped during the outage")
		}
	}
	if err := a.mgr.Ready(clk.Now()); err != nil {
		t.Fatalf("not ready during the outage although the SVID is valid: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	svid, err := workloadapi.FetchX509SVID(ctx, workloadapi.WithAddr("unix://"+ao.WorkloadSocket))
	if err != nil || svid.Certificates[0].SerialNumber.Cmp(first.Certificates[0].SerialNumber) != 0 {
		t.Fatalf("Workload API during the outage: %v, %v", svid, err)
	}

	p2 := startCA(t, dir, caAddr, id) // back, same address, same root
	defer p2.Stop()
	// The agent retries at its backoff (gRPC may also still be backing off
	// its reconnects in real time), and renews.
	last := time.Time{}
	waitUntil(func() bool {
		if clk.Waiters() > 0 && time.Since(last) > 500*time.Millisecond {
			clk.Advance(5 * time.Minute) // over the longest backoff so far
			last = time.Now()
		}
		return a.mgr.Current().Version > first.Version
	}, "recovery")
}
