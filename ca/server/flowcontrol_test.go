package server_test

import (
	"context"
	"crypto/tls"
	"net"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	pb "istio.io/api/security/v1alpha1"

	"github.com/meshca/meshca/internal/frametap"
)

// TestNoBandwidthProbes checks that the server does not run gRPC's
// bandwidth estimator: it sends a PING and a WINDOW_UPDATE after most
// requests otherwise, which the client must read and answer, and a CSR
// is a few KiB with nothing to probe for.
func TestNoBandwidthProbes(t *testing.T) {
	p := startPlane(t, filepath.Join(t.TempDir(), "meshca.db"))
	var fc *frametap.Conn
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
		fc = frametap.New(tc, false)
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
	// The tap parses what the client read in a goroutine of its own, which
	// may still be counting the last answer's trailers when the call
	// returns.
	counts, pings := fc.Counts()
	for deadline := time.Now().Add(5 * time.Second); counts[http2.FrameHeaders] < 2*requests && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
		counts, pings = fc.Counts()
	}
	if got := counts[http2.FrameHeaders]; got < 2*requests {
		t.Fatalf("%d HEADERS frames for %d answers: the frame count is broken", got, requests)
	}
	if pings != 0 {
		t.Errorf("the server sent %d PINGs in %d requests (frames %v), want none", pings, requests, counts)
	}
	if got := counts[http2.FrameWindowUpdate]; got > 1 {
		t.Errorf("the server sent %d WINDOW_UPDATEs in %d small requests (frames %v), want at most the one that opens the connection's window", got, requests, counts)
	}
}
