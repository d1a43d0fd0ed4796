package csrapi_test

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc"
	pb "istio.io/api/security/v1alpha1"

	"github.com/meshca/meshca/tools/bench/internal/csrapi"
	"github.com/meshca/meshca/tools/bench/internal/csrapi/csrapitest"
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
	h := &holding{arrived: make(chan struct{}), proceed: make(chan struct{})}
	c := csrapitest.Dial(t, h, grpc.MaxConcurrentStreams(1))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// call signs once and sends when its request left.
	call := func(out chan<- time.Time) {
		sent := time.Now()
		_, err := c.Sign(csrapi.WithSent(ctx, &sent), []byte("csr"), "")
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
