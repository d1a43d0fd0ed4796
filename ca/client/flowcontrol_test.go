package client_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"google.golang.org/grpc"
	pb "istio.io/api/security/v1alpha1"

	"github.com/meshca/meshca/ca/client"
	"github.com/meshca/meshca/internal/clock/clocktest"
	"github.com/meshca/meshca/internal/frametap"
	"github.com/meshca/meshca/internal/testca"
)

// tapListener ends TLS itself and taps each connection's frames, so that
// the gRPC server behind it sees plain HTTP/2.
type tapListener struct {
	net.Listener
	cert  tls.Certificate
	mu    sync.Mutex
	conns []*frametap.Conn
}

func (l *tapListener) Accept() (net.Conn, error) {
	raw, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	tc := tls.Server(raw, &tls.Config{Certificates: []tls.Certificate{l.cert}, NextProtos: []string{"h2"}, MinVersion: tls.VersionTLS12})
	if err := tc.Handshake(); err != nil {
		_ = raw.Close()
		return nil, err
	}
	c := frametap.New(tc, true)
	l.mu.Lock()
	l.conns = append(l.conns, c)
	l.mu.Unlock()
	return c, nil
}

// counts sums the frames clients sent: calls (HEADERS) and PINGs that
// are not acknowledgements.
func (l *tapListener) counts() (calls, pings int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, c := range l.conns {
		m, p := c.Counts()
		calls, pings = calls+m[http2.FrameHeaders], pings+p
	}
	return calls, pings
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
	ln := &tapListener{Listener: inner, cert: servingCert(t, ca)}
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
	var got, pings int
	clocktest.Eventually(t, "every call's HEADERS counted (the parser may trail the server by a frame)", func() bool {
		got, pings = ln.counts()
		return got >= calls
	})
	if got != calls {
		t.Fatalf("%d HEADERS frames for %d calls: the frame count is broken", got, calls)
	}
	if pings != 0 {
		t.Errorf("the client sent %d PINGs in %d calls, want none", pings, calls)
	}
}
