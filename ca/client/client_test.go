package client_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	pb "istio.io/api/security/v1alpha1"

	"github.com/meshca/meshca/ca/client"
	"github.com/meshca/meshca/internal/testca"
)

// fakeReplica is a CSR API server that answers every call with err, or
// with a one-element chain when err is nil, and counts the calls.
type fakeReplica struct {
	pb.UnimplementedIstioCertificateServiceServer
	err   error
	calls atomic.Int32
}

func (f *fakeReplica) CreateCertificate(context.Context, *pb.IstioCertificateRequest) (*pb.IstioCertificateResponse, error) {
	f.calls.Add(1)
	if f.err != nil {
		return nil, f.err
	}
	return &pb.IstioCertificateResponse{CertChain: []string{"chain"}}, nil
}

// serve runs f on 127.0.0.1 with a serving certificate for localhost
// under ca, and returns its address.
func (f *fakeReplica) serve(t *testing.T, ca *testca.CA) string {
	t.Helper()
	return serveGRPC(t, ca, func(g *grpc.Server) { pb.RegisterIstioCertificateServiceServer(g, f) })
}

// serveGRPC runs a gRPC server with the services register adds on
// 127.0.0.1, with a serving certificate for localhost under ca, and
// returns its address.
func serveGRPC(t *testing.T, ca *testca.CA, register func(*grpc.Server)) string {
	t.Helper()
	cert := servingCert(t, ca)
	g := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})))
	register(g)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = g.Serve(ln) }()
	t.Cleanup(g.Stop)
	return ln.Addr().String()
}

// servingCert is a serving certificate for localhost and 127.0.0.1 under ca.
func servingCert(t *testing.T, ca *testca.CA) tls.Certificate {
	t.Helper()
	key := testca.NewKey(t)
	leaf := testca.Sign(t, &x509.Certificate{
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}, ca.Inter, &key.PublicKey, ca.InterKey)
	return tls.Certificate{Certificate: [][]byte{leaf.Raw, ca.Inter.Raw}, PrivateKey: key}
}

// closedAddr is an address nothing listens on: a replica that is down.
func closedAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// TestSeveralReplicas calls through a client given several replicas: a
// call that fails with Unavailable on one is retried on another, a
// replica that is down is passed over, and a shed call (ResourceExhausted
// with a retry hint) is left to the caller's backoff.
func TestSeveralReplicas(t *testing.T) {
	shed, err := status.New(codes.ResourceExhausted, "over capacity").WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(3 * time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	unavailable := status.Error(codes.Unavailable, "CA temporarily unavailable")
	tests := []struct {
		name     string
		replicas []error // one fake replica each, answering with this error
		down     int     // addresses where nothing listens
		wantCode codes.Code
		// wantCalls is the calls each replica gets for calls Signs once
		// all are connected; -1: any number.
		wantCalls []int32
	}{
		{name: "one replica", replicas: []error{nil}, wantCode: codes.OK, wantCalls: []int32{4}},
		{name: "one of three unavailable", replicas: []error{unavailable, nil, nil}, wantCode: codes.OK, wantCalls: []int32{-1, -1, -1}},
		// Each call reaches the healthy replica within its three attempts.
		{name: "two of three unavailable", replicas: []error{unavailable, unavailable, nil}, wantCode: codes.OK, wantCalls: []int32{-1, -1, 4}},
		{name: "two of three down", replicas: []error{nil}, down: 2, wantCode: codes.OK, wantCalls: []int32{4}},
		// Three attempts per call, in turn over the replicas.
		{name: "all unavailable", replicas: []error{unavailable, unavailable}, wantCode: codes.Unavailable, wantCalls: []int32{-1, -1}},
		{name: "shedding", replicas: []error{shed.Err()}, wantCode: codes.ResourceExhausted, wantCalls: []int32{4}},
	}
	ca := testca.New(t)
	roots := x509.NewCertPool()
	roots.AddCert(ca.Root)
	const calls = 4
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			fakes := make([]*fakeReplica, len(tt.replicas))
			var addrs []string
			for i, err := range tt.replicas {
				fakes[i] = &fakeReplica{err: err}
				addrs = append(addrs, fakes[i].serve(t, ca))
			}
			for range tt.down {
				addrs = append(addrs, closedAddr(t))
			}
			c, err := client.New(client.Config{Addrs: addrs, Roots: roots})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			// Until every replica that is up has been connected (and has
			// answered), round_robin's turn includes only some of them.
			for !allCalled(fakes) {
				_, _ = c.Sign(ctx, []byte("csr"), 0, "token")
				if ctx.Err() != nil {
					t.Fatal("not every replica was reached")
				}
			}
			for _, f := range fakes {
				f.calls.Store(0)
			}
			for range calls {
				_, err := c.Sign(ctx, []byte("csr"), 0, "token")
				if got := status.Code(err); got != tt.wantCode {
					t.Fatalf("Sign: %v, want code %s", err, tt.wantCode)
				}
				if tt.wantCode == codes.ResourceExhausted {
					if d, ok := client.RetryDelay(err); !ok || d != 3*time.Second {
						t.Errorf("RetryDelay = %s, %v; want the replica's 3s", d, ok)
					}
				}
			}
			var total int32
			for i, f := range fakes {
				n := f.calls.Load()
				total += n
				if want := tt.wantCalls[i]; want >= 0 && n != want {
					t.Errorf("replica %d got %d calls, want %d", i, n, want)
				}
			}
			if tt.wantCode == codes.Unavailable && total != 3*calls {
				t.Errorf("%d attempts for %d calls, want 3 each", total, calls)
			}
		})
	}
}

func allCalled(fs []*fakeReplica) bool {
	for _, f := range fs {
		if f.calls.Load() == 0 {
			return false
		}
	}
	return true
}

func TestServerName(t *testing.T) {
	tests := []struct {
		addr, want, wantErr string
	}{
		{"meshca.meshca-system.svc:15012", "meshca.meshca-system.svc", ""},
		{"10.0.0.7:15012", "10.0.0.7", ""},
		{"127.0.0.1:15012", "localhost", ""},
		{"[::1]:15012", "localhost", ""},
		{"0.0.0.0:15012", "localhost", ""},
		{"dns:///meshca.example:15012", "meshca.example", ""},
		{"dns://8.8.8.8/meshca.example:15012", "meshca.example", ""},
		{"meshca.example", "", "missing port"},
		{"dns:///meshca.example", "", "missing port"},
	}
	for _, tt := range tests {
		t.Run(tt.addr, func(t *testing.T) {
			got, err := client.ServerName(tt.addr)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ServerName = %q, %v; want an error with %q", got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ServerName = %q, %v; want %q", got, err, tt.want)
			}
		})
	}
}

func TestNewRefusesReplicaTargets(t *testing.T) {
	roots := x509.NewCertPool()
	for _, addrs := range [][]string{{"a:1", "dns:///b:2"}, {"a:1", "b"}} {
		if _, err := client.New(client.Config{Addrs: addrs, Roots: roots}); err == nil || !strings.Contains(err.Error(), "want host:port") {
			t.Errorf("New(%q) = %v, want a host:port error", addrs, err)
		}
	}
}
