package agent

import (
	"context"
	"crypto/x509"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshca/meshca/internal/testlog"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshca/meshca/attestor"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/ca/plane"
	"github.com/meshca/meshca/ca/store"
	"github.com/meshca/meshca/internal/clock/clocktest"
	"github.com/meshca/meshca/internal/testca"
)

// TestAgentFailsOver runs three CA replicas under one root (a shared
// Istio cacerts parent, each replica with its own store and its own
// intermediate) and an agent that reaches all three (three addresses, one
// name resolving to three, or one address in front of three as a
// Service), renewing over mTLS. The replica that issued the current SVID
// is stopped (gracefully: GOAWAY, then its port closed), and the next
// renewal must come from another replica; then that one is killed (its
// connections reset, its port closed), and the next renewal must come
// from the third. Each renewal is
// presented with an SVID another replica issued, so mTLS renewal works
// against any replica. Time on the agent's clock from the renewal falling
// due to the new SVID must stay within one minimum backoff: no replica
// that is down costs the agent a long wait.
func TestAgentFailsOver(t *testing.T) {
	tests := []struct {
		name string
		// point configures cfg to reach the replicas at addrs.
		point func(t *testing.T, cfg *Config, addrs []string)
	}{
		{"three addresses", func(_ *testing.T, cfg *Config, addrs []string) { cfg.CAAddrs = addrs }},
		{"one DNS name resolving to three addresses", func(t *testing.T, cfg *Config, addrs []string) {
			// gRPC's own DNS resolver, asking a DNS server on 127.0.0.1
			// that answers three A records (127.0.0.1 to .3, each a
			// relay to one replica on the same port), as a headless
			// Service's name does.
			port := relaysOnOnePort(t, addrs)
			dns := newDNSServer(t, "meshca.example", netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("127.0.0.2"), netip.MustParseAddr("127.0.0.3"))
			cfg.CAAddr, cfg.CAServerName = fmt.Sprintf("dns://%s/meshca.example:%d", dns.addr(), port), "localhost"
		}},
		{"one address in front of three replicas", func(t *testing.T, cfg *Config, addrs []string) {
			// A Kubernetes Service as kube-proxy serves it (and as
			// istio-agent reaches the CA): each connection to one address
			// goes to a replica that accepts it.
			cfg.CAAddr = newRelay(t, addrs...).addr()
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			id := spiffeid.RequireFromString("spiffe://example.org/ns/web/sa/frontend")
			replicas := startReplicas(t, dir, id, 3)
			addrs := make([]string, len(replicas))
			for i, r := range replicas {
				addrs[i] = r.relay.addr()
			}
			tokenFile := filepath.Join(dir, "token")
			if err := os.WriteFile(tokenFile, []byte("web-token"), 0o600); err != nil {
				t.Fatal(err)
			}
			clk := clocktest.New(time.Now())
			var logs testlog.Buffer
			// The Manager alone waits on clk: no federated bundles asked for.
			cfg := Config{ID: id, CARootsFile: filepath.Join(dir, "cacerts", ca.RootCertFile), JoinTokenFile: tokenFile,
				FederationRefresh: -1, Clock: clk, Logger: slog.New(slog.NewTextHandler(&logs, nil))}
			tt.point(t, &cfg, addrs)
			a, err := Start(context.Background(), cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer a.Stop()
			clocktest.Eventually(t, "the first SVID", func() bool { return a.mgr.Current() != nil })

			for _, down := range []struct {
				how  string
				stop func(*replica)
			}{
				{"stopped", func(r *replica) { _ = r.stop(); r.relay.kill() }}, // its port closed with it
				{"killed", func(r *replica) { r.relay.kill() }},
			} {
				// The Manager waits for the renewal time it took from the
				// clock: moving the clock before would move that time.
				clocktest.Eventually(t, "the renewal wait", func() bool { return clk.Waiters() > 0 })
				cur := a.mgr.Current()
				from := issuerOf(t, replicas, cur.Certificates[0])
				down.stop(from)
				from.down = true
				// Past the renewal time (at most 60 % of the lifetime left
				// when the SVID arrived), with the SVID still valid, so it
				// is presented.
				due := clk.Now().Add(cur.NotAfter().Sub(clk.Now()) * 61 / 100)
				clk.Set(due)
				for a.mgr.Current() == cur {
					// The Manager waits on the clock only after a failed
					// attempt: each step lets it retry once.
					clocktest.Eventually(t, "a renewal or a retry wait", func() bool { return a.mgr.Current() != cur || clk.Waiters() > 0 })
					if a.mgr.Current() == cur {
						clk.Advance(100 * time.Millisecond)
					}
				}
				// One failed attempt and the minimum backoff (1 s, +20 %)
				// at most; a replica that is down must not cost more.
				if took := clk.Now().Sub(due); took > 1200*time.Millisecond {
					t.Errorf("replica %s: the renewal came %s after it was due, want ≤ 1.2s; log:\n%s", down.how, took, logs.String())
				}
				next := a.mgr.Current()
				if by := issuerOf(t, replicas, next.Certificates[0]); by.down {
					t.Fatalf("replica %s: the renewal came from a replica that is down", down.how)
				}
			}
			// Both renewals were made with the SVID, which a replica
			// accepts only over mTLS (no token is sent then).
			clocktest.Eventually(t, "the last SVID logged", func() bool { return strings.Count(logs.String(), `msg="SVID updated"`) == 3 })
			if n := strings.Count(logs.String(), "mtls=true"); n != 2 {
				t.Errorf("%d renewals over mTLS, want 2; log:\n%s", n, logs.String())
			}
		})
	}
}

// replica is a CA plane behind a relay the test can cut.
type replica struct {
	plane *plane.Plane
	stop  func() error // plane.Stop, once
	relay *relay
	down  bool
}

// startReplicas starts n planes on one Istio cacerts parent (written to
// dir/cacerts), each with its own data directory, whose static token
// "web-token" proves id.
func startReplicas(t *testing.T, dir string, id spiffeid.ID, n int) []*replica {
	t.Helper()
	// A ca-cert with room for one more CA below it: each replica makes
	// its own intermediate.
	c := testca.NewIstioCACerts(t, testca.IstioOptions{CACert: func(tmpl *x509.Certificate) { tmpl.MaxPathLen, tmpl.MaxPathLenZero = 1, false }})
	cacerts := filepath.Join(dir, "cacerts")
	if err := os.Mkdir(cacerts, 0o700); err != nil {
		t.Fatal(err)
	}
	c.Write(t, cacerts)
	rs := make([]*replica, n)
	for i := range rs {
		parent, err := ca.LoadCACerts(cacerts, time.Now(), ca.CACertsOptions{})
		if err != nil {
			t.Fatal(err)
		}
		p, err := plane.Start(context.Background(), plane.Config{
			TrustDomain: id.TrustDomain(), DataDir: filepath.Join(dir, "ca", string(rune('a'+i))), Parent: parent,
			GRPCAddr: "127.0.0.1:0", Kubernetes: plane.Kubernetes{Deny: []string{}},
			Extra: []attestor.Attestor{attestor.NewStaticTokens(map[string]spiffeid.ID{"web-token": id})},
		})
		if err != nil {
			t.Fatal(err)
		}
		rs[i] = &replica{plane: p, stop: sync.OnceValue(p.Stop), relay: newRelay(t, p.Addr("grpc").String())}
		t.Cleanup(func() { _ = rs[i].stop() })
	}
	return rs
}

// issuerOf returns the replica whose log records leaf.
func issuerOf(t *testing.T, rs []*replica, leaf *x509.Certificate) *replica {
	t.Helper()
	for _, r := range rs {
		if r.down {
			continue // its store is closed; it issued nothing since
		}
		recs, err := r.plane.Authority().Issuances(context.Background(), store.IssuanceFilter{})
		if err != nil {
			t.Fatal(err)
		}
		for _, rec := range recs {
			if rec.Serial == leaf.SerialNumber.Text(16) {
				return r
			}
		}
	}
	t.Fatalf("no replica that is up issued serial %s", leaf.SerialNumber.Text(16))
	return nil
}

// relay forwards TCP connections to a replica, as the network between an
// agent and a CA does, until kill cuts it as a crashed machine would:
// every connection reset, the port closed. Given several targets, it
// forwards each connection to the next one that accepts it, as kube-proxy
// spreads a Service's connections over its ready endpoints.
type relay struct {
	ln      net.Listener
	targets []string
	next    int // the target to try first; only accept uses it
	mu      sync.Mutex
	conns   []net.Conn
	wg      sync.WaitGroup
}

func newRelay(t *testing.T, targets ...string) *relay {
	t.Helper()
	r, err := newRelayAt(t, "127.0.0.1:0", targets...)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// newRelayAt is newRelay listening on addr.
func newRelayAt(t *testing.T, addr string, targets ...string) (*relay, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	r := &relay{ln: ln, targets: targets}
	r.wg.Go(r.accept)
	t.Cleanup(r.kill)
	return r, nil
}

func (r *relay) addr() string { return r.ln.Addr().String() }

func (r *relay) accept() {
	for {
		c, err := r.ln.Accept()
		if err != nil {
			return
		}
		up := r.dial()
		if up == nil {
			_ = c.Close() // no replica: no connection
			continue
		}
		r.mu.Lock()
		r.conns = append(r.conns, c, up)
		r.mu.Unlock()
		pipe := func(dst, src net.Conn) {
			_, _ = io.Copy(dst, src)
			_ = dst.Close() // one side ended: end the other
		}
		r.wg.Go(func() { pipe(up, c) })
		r.wg.Go(func() { pipe(c, up) })
	}
}

// dial connects to the next target that accepts, or returns nil.
func (r *relay) dial() net.Conn {
	for range r.targets {
		target := r.targets[r.next%len(r.targets)]
		r.next++
		if up, err := net.Dial("tcp", target); err == nil {
			return up
		}
	}
	return nil
}

// kill closes the port and resets every connection (RST, not FIN).
func (r *relay) kill() {
	_ = r.ln.Close()
	r.mu.Lock()
	for _, c := range r.conns {
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetLinger(0)
		}
		_ = c.Close()
	}
	r.conns = nil
	r.mu.Unlock()
	r.wg.Wait()
}
