package csrapi

import (
	"context"
	"crypto/tls"
	"net"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	pb "istio.io/api/security/v1alpha1"

	"github.com/meshca/meshca/tools/bench/internal/peer"
	"github.com/meshca/meshca/tools/bench/internal/pki"
)

// holding answers each call once told to, and says when one arrives.
type holding struct {
	pb.UnimplementedIstioCertificateServiceServer
	arrived, proceed chan struct{}
}

func (h *holding) CreateCertificate(ctx context.Context, _ *pb.IstioCertificateRequest) (*pb.IstioCertificateResponse, error) {
	select {
	case h.arrived <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	select {
	case <-h.proceed:
		return &pb.IstioCertificateResponse{CertChain: []string{"chain"}}, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// TestWithSent: a call that waits in the client for a stream on its
// connection (the server allows one call open at a time) is sent when the
// call before it ends, not when it starts; a call that finds a stream
// free is sent at once.
func TestWithSent(t *testing.T) {
	dir := t.TempDir()
	ca, err := pki.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	if err := ca.WriteFiles(dir); err != nil {
		t.Fatal(err)
	}
	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, pki.ServerCertFile), filepath.Join(dir, pki.ServerKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	roots, err := peer.Roots(dir)
	if err != nil {
		t.Fatal(err)
	}
	h := &holding{arrived: make(chan struct{}), proceed: make(chan struct{})}
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{cert}})),
		grpc.MaxConcurrentStreams(1))
	pb.RegisterIstioCertificateServiceServer(srv, h)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := Dial(ctx, lis.Addr().String(), roots, pki.ServerName, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// call signs once and sends when its request left.
	call := func(out chan<- time.Time) {
		sent := time.Now()
		_, err := c.Sign(WithSent(ctx, &sent), []byte("csr"), "")
		if err != nil {
			sent = time.Time{}
		}
		out <- sent
	}
	// step waits for a call to reach the server, or gives up with ctx.
	step := func() {
		t.Helper()
		select {
		case <-h.arrived:
		case <-ctx.Done():
			t.Fatal("no call reached the server")
		}
	}
	// One call first, as on a connection in use; gRPC has the server's
	// settings before the connection is ready, but this does not rely on it.
	warm := make(chan time.Time, 1)
	go call(warm)
	step()
	h.proceed <- struct{}{}
	<-warm
	first, second := make(chan time.Time, 1), make(chan time.Time, 1)
	start := time.Now()
	go call(first)
	step()
	go call(second)
	select {
	case <-h.arrived:
		t.Fatal("a second call reached the server past its limit of one")
	case <-time.After(300 * time.Millisecond):
	}
	released := time.Now()
	h.proceed <- struct{}{}
	step()
	h.proceed <- struct{}{}
	if at := <-first; at.IsZero() || at.After(released) {
		t.Errorf("the first call was sent at %v, want before %v, with every stream free (or it failed)", at.Sub(start), released.Sub(start))
	}
	if at := <-second; at.IsZero() || at.Before(released) {
		t.Errorf("the second call was sent at %v, want after the first was let go at %v (or it failed)", at.Sub(start), released.Sub(start))
	}
}
