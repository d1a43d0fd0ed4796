// Package peer is what the two peer servers of the benchmark, the floor
// and Istio's CA server, share: reading the CA directory written by
// package pki, a TLS listener on 127.0.0.1 and a gRPC server that runs
// until SIGTERM. Both use the same gRPC and TLS settings, so any difference
// between them is their handler's.
package peer

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/meshca/meshca/tools/bench/internal/pki"
)

// Config is how a peer server is run.
type Config struct {
	// Dir is the CA directory (package pki's files).
	Dir string
	// Listen is the address to serve on, e.g. 127.0.0.1:15012.
	Listen string
	// ClientAuth is what the handshake asks of clients.
	ClientAuth tls.ClientAuthType
}

// Roots reads the root certificate of dir as a pool.
func Roots(dir string) (*x509.CertPool, error) {
	b, err := os.ReadFile(filepath.Join(dir, pki.RootCertFile))
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, errors.New("peer: no root certificate")
	}
	return pool, nil
}

// Serve listens on cfg.Listen with TLS, registers the service with
// register, and serves until SIGTERM or SIGINT.
func Serve(cfg Config, register func(*grpc.Server)) error {
	cert, err := tls.LoadX509KeyPair(filepath.Join(cfg.Dir, pki.ServerCertFile), filepath.Join(cfg.Dir, pki.ServerKeyFile))
	if err != nil {
		return fmt.Errorf("peer: serving certificate: %w", err)
	}
	roots, err := Roots(cfg.Dir)
	if err != nil {
		return err
	}
	tlsCfg := &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{cert},
		ClientCAs:    roots,
		ClientAuth:   cfg.ClientAuth,
	}
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(tlsCfg)))
	register(srv)
	lis, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	go func() {
		<-ctx.Done()
		srv.Stop()
	}()
	if err := srv.Serve(lis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return err
	}
	return nil
}
