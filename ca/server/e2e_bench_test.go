package server_test

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"net/url"
	"path/filepath"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	pb "istio.io/api/security/v1alpha1"

	"github.com/meshca/meshca/ca/client"
	"github.com/meshca/meshca/ca/server"
)

// BenchmarkEndToEnd compares, in one process, a full gRPC CreateCertificate
// over TLS on 127.0.0.1 against meshca's server and against a floor server
// that does only what any CA must (parse the CSR, check its signature,
// x509.CreateCertificate, PEM) behind the same TLS and gRPC settings. The
// clients are the same (ca/client, e2eClients connections, e2eCallers
// callers), so their CPU is in both and the difference is what meshca's
// request path adds: attestation, checks, validator, the durable record,
// metrics. tools/bench measures the same with each server in its own
// process.
//
//	go test -run '^$' -bench EndToEnd -benchtime 2s -count 3 ./ca/server/
func BenchmarkEndToEnd(b *testing.B) {
	csr := benchCSR(b, fooID)
	ctx := context.Background()
	b.Run("floor/mtls", func(b *testing.B) {
		addr, roots, cert := startFloor(b)
		clients := make([]*client.Client, e2eClients)
		for i := range clients {
			c, err := client.New(client.Config{Addr: addr, Roots: roots, ServerName: "localhost",
				ClientCertificate: func() (*tls.Certificate, error) { return cert, nil }})
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { c.Close() })
			clients[i] = c
		}
		runE2E(b, clients, func(c *client.Client) error { _, err := c.Sign(ctx, csr, 0, ""); return err })
	})
	b.Run("meshca/mtls", func(b *testing.B) {
		p := startPlane(b, filepath.Join(b.TempDir(), "meshca.db"))
		key := newKey(b)
		chain, err := grpcClient(b, p, nil).Sign(ctx, csrFor(b, key, fooID), 0, fooToken)
		if err != nil {
			b.Fatal(err)
		}
		cert := svid(parseChainB(b, chain), key)
		clients := make([]*client.Client, e2eClients)
		for i := range clients {
			clients[i] = grpcClient(b, p, cert)
		}
		runE2E(b, clients, func(c *client.Client) error { _, err := c.Sign(ctx, csr, 0, ""); return err })
	})
	b.Run("meshca/token", func(b *testing.B) {
		p := startPlane(b, filepath.Join(b.TempDir(), "meshca.db"))
		clients := make([]*client.Client, e2eClients)
		for i := range clients {
			clients[i] = grpcClient(b, p, nil)
		}
		runE2E(b, clients, func(c *client.Client) error { _, err := c.Sign(ctx, csr, 0, fooToken); return err })
	})
}

// e2eClients connections carry e2eCallers concurrent callers, as a few
// busy agents would.
const (
	e2eClients = 8
	e2eCallers = 32
)

func runE2E(b *testing.B, clients []*client.Client, call func(*client.Client) error) {
	var next atomic.Int64
	runParallel(b, max(e2eCallers/runtime.GOMAXPROCS(0), 1), func() error {
		return call(clients[next.Add(1)%int64(len(clients))])
	})
}

func parseChainB(b *testing.B, chain []string) []*x509.Certificate {
	b.Helper()
	var out []*x509.Certificate
	for _, s := range chain {
		blk, _ := pem.Decode([]byte(s))
		if blk == nil {
			b.Fatal("chain entry is not PEM")
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			b.Fatal(err)
		}
		out = append(out, c)
	}
	return out
}

// floorService is the floor CA: CSR check and CreateCertificate, nothing
// else; the caller's credential is its TLS client certificate, verified at
// the handshake and not looked at again.
type floorService struct {
	pb.UnimplementedIstioCertificateServiceServer
	parent *x509.Certificate
	key    crypto.Signer
	chain  []string // intermediate and root PEM, after the leaf
}

func (f *floorService) CreateCertificate(_ context.Context, req *pb.IstioCertificateRequest) (*pb.IstioCertificateResponse, error) {
	block, _ := pem.Decode([]byte(req.GetCsr()))
	if block == nil {
		return nil, errors.New("not PEM")
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return nil, err
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, err
	}
	serial, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial, NotBefore: now, NotAfter: now.Add(24 * time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		URIs:        csr.URIs, BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, f.parent, csr.PublicKey, f.key)
	if err != nil {
		return nil, err
	}
	leaf := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	return &pb.IstioCertificateResponse{CertChain: append([]string{leaf}, f.chain...)}, nil
}

// startFloor serves the floor CA on 127.0.0.1 with the gRPC settings
// meshca's server uses, and returns its address, the roots to verify it and
// a client certificate it accepts.
func startFloor(b *testing.B) (string, *x509.CertPool, *tls.Certificate) {
	parent, key := bareCA(b)
	pool := x509.NewCertPool()
	pool.AddCert(parent)
	issue := func(tmpl *x509.Certificate) *tls.Certificate {
		k := newKey(b)
		tmpl.SerialNumber, tmpl.NotBefore, tmpl.NotAfter = big.NewInt(time.Now().UnixNano()), time.Now().Add(-time.Minute), time.Now().Add(time.Hour)
		der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, k.Public(), key)
		if err != nil {
			b.Fatal(err)
		}
		return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: k}
	}
	serving := issue(&x509.Certificate{DNSNames: []string{"localhost"}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, KeyUsage: x509.KeyUsageDigitalSignature})
	clientCert := issue(&x509.Certificate{URIs: []*url.URL{fooID.URL()}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, KeyUsage: x509.KeyUsageDigitalSignature})
	tlsCfg := &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{*serving}, ClientAuth: tls.VerifyClientCertIfGiven, ClientCAs: pool}
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(tlsCfg)), grpc.MaxConcurrentStreams(server.DefaultMaxStreamsPerConnection))
	pb.RegisterIstioCertificateServiceServer(srv, &floorService{parent: parent, key: key,
		chain: []string{string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: parent.Raw}))}})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	go func() { _ = srv.Serve(ln) }()
	b.Cleanup(srv.Stop)
	return ln.Addr().String(), pool, clientCert
}
