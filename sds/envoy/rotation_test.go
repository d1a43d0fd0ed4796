package envoy

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"net"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"

	"github.com/meshca/meshca/internal/clock/clocktest"
	"github.com/meshca/meshca/internal/testca"
	"github.com/meshca/meshca/sds"
)

// csrSigner is a CA for the Manager: it signs CSRs with the test CA, with
// validity on the fake clock.
type csrSigner struct {
	ca  *testca.CA
	clk *clocktest.Fake
}

func (s csrSigner) Sign(_ context.Context, csrPEM []byte, _ time.Duration, _ string) ([]string, error) {
	b, _ := pem.Decode(csrPEM)
	if b == nil {
		return nil, errors.New("not PEM")
	}
	csr, err := x509.ParseCertificateRequest(b.Bytes)
	if err != nil {
		return nil, err
	}
	id, err := spiffeid.FromURI(csr.URIs[0])
	if err != nil {
		return nil, err
	}
	leaf, err := s.ca.SignLeaf(id, csr.PublicKey, s.clk.Now())
	if err != nil {
		return nil, err
	}
	enc := func(c *x509.Certificate) string {
		return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw}))
	}
	return []string{enc(leaf), enc(s.ca.Inter), enc(s.ca.Root)}, nil
}

// TestRotationPushedOncePerStream drives the real Manager with a fake
// clock: at the renewal time every stream subscribed to "default" gets
// exactly one new version, and streams that asked only for the unchanged
// roots get nothing.
func TestRotationPushedOncePerStream(t *testing.T) {
	clk := clocktest.New(time.Now())
	ca := testca.New(t)
	mgr, err := sds.NewManager(sds.Config{ID: testca.WorkloadID, CA: csrSigner{ca, clk},
		Token:  func(context.Context) (string, error) { return "t", nil },
		Jitter: -1, Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := New(Config{Source: mgr})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "sds.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	srv.Register(g)
	go g.Serve(l)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{}, 2)
	go func() { mgr.Run(ctx); done <- struct{}{} }()
	go func() { srv.Run(ctx); done <- struct{}{} }()
	t.Cleanup(func() { cancel(); <-done; <-done; g.Stop() })

	waitFor := func(cond func() bool, what string) {
		deadline := time.Now().Add(10 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
			runtime.Gosched()
		}
	}
	waitFor(func() bool { return mgr.Current() != nil }, "the first SVID")
	first := mgr.Current()

	h := &harness{t: t, path: path}
	var certStreams, rootStreams []*envoyStream
	for range 5 {
		s := openStream(t, h.client())
		s.request(DefaultName)
		checkCert(t, decode(t, s.ack2(s.next()))[DefaultName], first)
		certStreams = append(certStreams, s)
	}
	for range 2 {
		s := openStream(t, h.client())
		s.request(RootCAName)
		s.ack2(s.next())
		rootStreams = append(rootStreams, s)
	}

	// The Manager is waiting for its renewal time, half the lifetime away.
	waitFor(func() bool { return clk.Waiters() > 0 }, "the Manager to wait")
	clk.Advance(30 * time.Minute)
	waitFor(func() bool { return mgr.Current().Version == first.Version+1 }, "the renewal")
	second := mgr.Current()
	for _, s := range certStreams {
		checkCert(t, decode(t, s.ack2(s.next()))[DefaultName], second)
	}
	for _, s := range certStreams {
		s.none()
	}
	for _, s := range rootStreams {
		s.none()
	}
}

// ack2 ACKs resp and returns it.
func (s *envoyStream) ack2(resp *discovery.DiscoveryResponse) *discovery.DiscoveryResponse {
	s.ack(resp)
	return resp
}
