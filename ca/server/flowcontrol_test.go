package server_test

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	pb "istio.io/api/security/v1alpha1"
)

// frameCounter is a client connection that parses the HTTP/2 frames the
// server sends, after TLS, and counts them by type.
type frameCounter struct {
	net.Conn
	w *io.PipeWriter

	mu     sync.Mutex
	counts map[http2.FrameType]int
	pings  int // PING frames that are not acknowledgements
}

func (c *frameCounter) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if n > 0 {
		_, _ = c.w.Write(b[:n]) // the parser reads until the pipe closes
	}
	return n, err
}

func (c *frameCounter) Close() error {
	_ = c.w.Close()
	return c.Conn.Close()
}

func (c *frameCounter) parse(r *io.PipeReader) {
	fr := http2.NewFramer(nil, r)
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			_, _ = io.Copy(io.Discard, r) // never block the connection's reads
			return
		}
		c.mu.Lock()
		c.counts[f.Header().Type]++
		if p, ok := f.(*http2.PingFrame); ok && !p.IsAck() {
			c.pings++
		}
		c.mu.Unlock()
	}
}

// TestNoBandwidthProbes checks that the server does not run gRPC's
// bandwidth estimator: it sends a PING and a WINDOW_UPDATE after most
// requests otherwise, which the client must read and answer, and a CSR
// is a few KiB with nothing to probe for.
func TestNoBandwidthProbes(t *testing.T) {
	p := startPlane(t, filepath.Join(t.TempDir(), "meshca.db"))
	var fc *frameCounter
	dial := func(ctx context.Context, addr string) (net.Conn, error) {
		raw, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
		if err != nil {
			return nil, err
		}
		tc := tls.Client(raw, &tls.Config{RootCAs: p.roots(), ServerName: "localhost", NextProtos: []string{"h2"}})
		if err := tc.HandshakeContext(ctx); err != nil {
			_ = raw.Close()
			return nil, err
		}
		r, w := io.Pipe()
		fc = &frameCounter{Conn: tc, w: w, counts: map[http2.FrameType]int{}}
		go fc.parse(r)
		return fc, nil
	}
	conn, err := grpc.NewClient("passthrough:///"+p.srv.Addr("grpc").String(),
		grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithContextDialer(dial))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+fooToken)
	client := pb.NewIstioCertificateServiceClient(conn)
	const requests = 20
	for range requests {
		if _, err := client.CreateCertificate(ctx, &pb.IstioCertificateRequest{Csr: string(csrFor(t, newKey(t), fooID))}); err != nil {
			t.Fatal(err)
		}
	}
	fc.mu.Lock()
	defer fc.mu.Unlock()
	if got := fc.counts[http2.FrameHeaders]; got < 2*requests {
		t.Fatalf("%d HEADERS frames for %d answers: the frame count is broken", got, requests)
	}
	if fc.pings != 0 {
		t.Errorf("the server sent %d PINGs in %d requests (frames %v), want none", fc.pings, requests, fc.counts)
	}
	if got := fc.counts[http2.FrameWindowUpdate]; got > 1 {
		t.Errorf("the server sent %d WINDOW_UPDATEs in %d small requests (frames %v), want at most the one that opens the connection's window", got, requests, fc.counts)
	}
}
