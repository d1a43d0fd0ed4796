package client_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"google.golang.org/grpc"
	pb "istio.io/api/security/v1alpha1"

	"github.com/meshca/meshca/ca/client"
	"github.com/meshca/meshca/internal/testca"
)

// pingListener ends TLS itself and counts the PING frames (not the acks)
// that clients send, so that the gRPC server behind it sees plain HTTP/2.
type pingListener struct {
	net.Listener
	cert  tls.Certificate
	pings atomic.Int32
	calls atomic.Int32 // HEADERS frames: one per call
}

func (l *pingListener) Accept() (net.Conn, error) {
	raw, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	tc := tls.Server(raw, &tls.Config{Certificates: []tls.Certificate{l.cert}, NextProtos: []string{"h2"}, MinVersion: tls.VersionTLS12})
	if err := tc.Handshake(); err != nil {
		_ = raw.Close()
		return nil, err
	}
	r, w := io.Pipe()
	go l.parse(r)
	return &teeConn{Conn: tc, w: w}, nil
}

func (l *pingListener) parse(r *io.PipeReader) {
	defer func() { _, _ = io.Copy(io.Discard, r) }() // never block the connection's reads
	if _, err := io.ReadFull(r, make([]byte, len(http2.ClientPreface))); err != nil {
		return
	}
	fr := http2.NewFramer(nil, r)
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			return
		}
		switch f := f.(type) {
		case *http2.PingFrame:
			if !f.IsAck() {
				l.pings.Add(1)
			}
		case *http2.HeadersFrame:
			l.calls.Add(1)
		}
	}
}

// teeConn copies what it reads to w.
type teeConn struct {
	net.Conn
	w *io.PipeWriter
}

func (c *teeConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if n > 0 {
		_, _ = c.w.Write(b[:n])
	}
	return n, err
}

func (c *teeConn) Close() error {
	_ = c.w.Close()
	return c.Conn.Close()
}

// TestNoBandwidthProbes checks that the client does not run gRPC's
// bandwidth estimator, which sends the CA a PING after most answers, for
// the CA to read and acknowledge: answers are a few KiB.
func TestNoBandwidthProbes(t *testing.T) {
	ca := testca.New(t)
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := &pingListener{Listener: inner, cert: servingCert(t, ca)}
	g := grpc.NewServer() // TLS is ended by ln
	pb.RegisterIstioCertificateServiceServer(g, &fakeReplica{})
	go func() { _ = g.Serve(ln) }()
	t.Cleanup(g.Stop)

	roots := x509.NewCertPool()
	roots.AddCert(ca.Root)
	c, err := client.New(client.Config{Addr: inner.Addr().String(), Roots: roots})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const calls = 20
	for range calls {
		if _, err := c.Sign(ctx, []byte("csr"), 0, "token"); err != nil {
			t.Fatal(err)
		}
	}
	for wait := time.Now().Add(5 * time.Second); ln.calls.Load() < calls && time.Now().Before(wait); {
		time.Sleep(time.Millisecond) // the parser may trail the server by a frame
	}
	if got := ln.calls.Load(); got != calls {
		t.Fatalf("%d HEADERS frames for %d calls: the frame count is broken", got, calls)
	}
	if got := ln.pings.Load(); got != 0 {
		t.Errorf("the client sent %d PINGs in %d calls, want none", got, calls)
	}
}
