package server

import (
	"context"
	"net/http"

	pb "istio.io/api/security/v1alpha1"
)

// HTTPSHandler is the HTTPS listener's handler, for fuzzing the JSON API
// through httptest without TLS or a socket.
func (s *Server) HTTPSHandler() http.Handler { return s.https.Handler }

// CreateCertificate calls the gRPC CSR API's handler directly, for fuzzing
// it with request messages and metadata no gRPC client would send.
func (s *Server) CreateCertificate(ctx context.Context, req *pb.IstioCertificateRequest) (*pb.IstioCertificateResponse, error) {
	return (&istioService{s: s}).CreateCertificate(ctx, req)
}
