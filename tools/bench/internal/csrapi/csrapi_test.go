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
	h.arrived <- struct{}{}
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
	// call signs once and reports how long it waited to be sent.
	call := func(out chan<- time.Duration) {
		start := time.Now()
		sent := start
		if _, err := c.Sign(WithSent(ctx, &sent), []byte("csr"), ""); err != nil {
			t.Error(err)
		}
		out <- sent.Sub(start)
	}
	// One call first, so the client has the server's settings, as a
	// connection in use does.
	warm := make(chan time.Duration, 1)
	go call(warm)
	<-h.arrived
	h.proceed <- struct{}{}
	<-warm
	first, second := make(chan time.Duration, 1), make(chan time.Duration, 1)
	go call(first)
	<-h.arrived
	go call(second)
	const hold = 300 * time.Millisecond
	select {
	case <-h.arrived:
		t.Fatal("a second call reached the server past its limit of one")
	case <-time.After(hold):
	}
	h.proceed <- struct{}{}
	<-h.arrived
	h.proceed <- struct{}{}
	if w := <-first; w > hold/3 {
		t.Errorf("the first call waited %s to be sent, with every stream free", w)
	}
	if w := <-second; w < hold {
		t.Errorf("the second call waited %s to be sent, want at least the %s the first held its stream", w, hold)
	}
}
