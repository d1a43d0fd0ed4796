package load_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	pb "istio.io/api/security/v1alpha1"

	"github.com/meshca/meshca/tools/bench/internal/csrapi"
	"github.com/meshca/meshca/tools/bench/internal/csrapi/csrapitest"
	"github.com/meshca/meshca/tools/bench/internal/load"
)

// shedOnce sheds each CSR's first request with a retry hint of zero and
// answers the next.
type shedOnce struct {
	pb.UnimplementedIstioCertificateServiceServer
	mu   sync.Mutex
	seen map[string]bool
}

func (s *shedOnce) CreateCertificate(_ context.Context, req *pb.IstioCertificateRequest) (*pb.IstioCertificateResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.seen[req.GetCsr()] {
		s.seen[req.GetCsr()] = true
		st, err := status.New(codes.ResourceExhausted, "shed").WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(0)})
		if err != nil {
			return nil, err
		}
		return nil, st.Err()
	}
	return &pb.IstioCertificateResponse{CertChain: []string{"chain"}}, nil
}

// TestRotationRetriesShed: every workload is shed once and renewed when
// it comes back, after the shortest wait; its whole renewal counts that
// wait, the admitted attempt's latencies do not.
func TestRotationRetriesShed(t *testing.T) {
	c := csrapitest.Dial(t, &shedOnce{seen: map[string]bool{}})
	const perConn, backoff = 20, 100 * time.Millisecond
	res := load.Rotation(context.Background(), []*csrapi.Conn{c}, perConn,
		func(i, k int) []byte { return fmt.Appendf(nil, "csr %d/%d", i, k) },
		load.Storm{Deadline: 20 * time.Second, BackoffMin: backoff})
	if res.Renewed != perConn || len(res.Failed) != 0 || res.Shed != perConn || len(res.Hints) != perConn {
		t.Fatalf("renewed %d, failed %v, shed %d with %d hints; want %d renewed, each shed once with a hint",
			res.Renewed, res.Failed, res.Shed, len(res.Hints), perConn)
	}
	if len(res.FirstTry) != 0 || len(res.AfterShed) != perConn || len(res.Sent) != perConn || len(res.Whole) != perConn {
		t.Fatalf("latencies: %d first tries, %d after a shed, %d from the sending, %d whole; want 0, %d, %d, %d",
			len(res.FirstTry), len(res.AfterShed), len(res.Sent), len(res.Whole), perConn, perConn, perConn)
	}
	for i, w := range res.Whole {
		if w < backoff {
			t.Errorf("workload %d renewed in %s, within the %s it had to wait after its shed", i, w, backoff)
		}
		if lat := res.AfterShed[i]; lat >= backoff || res.Sent[i] > lat {
			t.Errorf("admitted attempt %d: %s from its start, %s from its sending; want under the %s wait, sent after its start", i, lat, res.Sent[i], backoff)
		}
	}
}
