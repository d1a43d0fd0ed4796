package server

import (
	"context"
	"time"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	pb "istio.io/api/security/v1alpha1"
)

// healthPoll is how often a Watch call rechecks readiness.
const healthPoll = time.Second

// healthService answers grpc.health.v1 (Check and Watch) on the gRPC
// listener with what /readyz answers on the monitoring port: SERVING while
// the CA can issue, NOT_SERVING while it cannot (no signing CA, the store
// failing, the Kubernetes informers not synced). It answers for the whole
// server (the empty service name) and for each of its services; another
// name is NotFound (Check) or SERVICE_UNKNOWN (Watch), as the protocol
// says. gRPC load balancers and clients with health checking enabled (its
// service config's healthCheckConfig) thus skip a replica that cannot
// issue. No credential is asked: the answer says no more than /readyz.
type healthService struct {
	healthpb.UnimplementedHealthServer
	s *Server
}

// healthNames are the service names the health service answers for.
var healthNames = map[string]bool{
	"": true,
	pb.IstioCertificateService_ServiceDesc.ServiceName: true,
	JWTServiceName:    true,
	BundleServiceName: true,
}

func (h *healthService) status(ctx context.Context, service string) healthpb.HealthCheckResponse_ServingStatus {
	switch {
	case !healthNames[service]:
		return healthpb.HealthCheckResponse_SERVICE_UNKNOWN
	case h.s.ready(ctx) != nil:
		return healthpb.HealthCheckResponse_NOT_SERVING
	}
	return healthpb.HealthCheckResponse_SERVING
}

// Check implements grpc.health.v1.Health.
func (h *healthService) Check(ctx context.Context, req *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	st := h.status(ctx, req.GetService())
	if st == healthpb.HealthCheckResponse_SERVICE_UNKNOWN {
		return nil, status.Errorf(codes.NotFound, "unknown service %q", req.GetService())
	}
	return &healthpb.HealthCheckResponse{Status: st}, nil
}

// Watch implements grpc.health.v1.Health: it sends the status at once and
// then each change, rechecking every healthPoll, until the caller leaves.
func (h *healthService) Watch(req *healthpb.HealthCheckRequest, stream healthpb.Health_WatchServer) error {
	ctx := stream.Context()
	last := healthpb.HealthCheckResponse_ServingStatus(-1)
	for {
		if st := h.status(ctx, req.GetService()); st != last {
			if err := stream.Send(&healthpb.HealthCheckResponse{Status: st}); err != nil {
				return err
			}
			last = st
		}
		select {
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		case <-h.s.cfg.Clock.After(healthPoll):
		}
	}
}
