// Package csrapitest serves an istio.v1.auth.IstioCertificateService on
// 127.0.0.1 behind TLS, with a certificate from package pki, and dials it
// with package csrapi: the real client side of the benchmark against a
// service a test controls.
package csrapitest

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

	"github.com/meshca/meshca/tools/bench/internal/csrapi"
	"github.com/meshca/meshca/tools/bench/internal/peer"
	"github.com/meshca/meshca/tools/bench/internal/pki"
)

// Dial serves svc with the gRPC server options opts until the test ends
// and returns a connection to it, up and ready.
func Dial(t testing.TB, svc pb.IstioCertificateServiceServer, opts ...grpc.ServerOption) *csrapi.Conn {
	t.Helper()
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
	creds := credentials.NewTLS(&tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{cert}})
	srv := grpc.NewServer(append([]grpc.ServerOption{grpc.Creds(creds)}, opts...)...)
	pb.RegisterIstioCertificateServiceServer(srv, svc)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := csrapi.Dial(ctx, lis.Addr().String(), roots, pki.ServerName, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}
