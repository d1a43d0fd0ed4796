package workload

import (
	"context"
	"errors"

	workloadpb "github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/meshca/meshca/internal/jwtsvid"
)

const jwtUnimplemented = "JWT-SVIDs are not served by this Workload API"

// FetchJWTSVID returns a JWT-SVID of the workload for the audiences asked
// (at least one); a spiffe_id, if given, must be the workload's.
func (s *Server) FetchJWTSVID(ctx context.Context, req *workloadpb.JWTSVIDRequest) (*workloadpb.JWTSVIDResponse, error) {
	if err := checkHeader(ctx); err != nil {
		return nil, err
	}
	if s.jwt == nil {
		return nil, status.Error(codes.Unimplemented, jwtUnimplemented)
	}
	if len(req.GetAudience()) == 0 {
		return nil, status.Error(codes.InvalidArgument, "audience must be specified")
	}
	id := s.jwt.ID()
	if want := req.GetSpiffeId(); want != "" {
		if asked, err := spiffeid.FromString(want); err != nil || asked != id {
			return nil, status.Errorf(codes.PermissionDenied, "no identity issued for %q", want)
		}
	}
	tok, err := s.jwt.FetchJWTSVID(ctx, req.GetAudience())
	if err != nil {
		if st, ok := status.FromError(err); ok && st.Code() == codes.InvalidArgument {
			return nil, status.Error(codes.InvalidArgument, st.Message()) // the CA's reason: the audiences
		}
		s.log.Warn("workload: no JWT-SVID from the CA", "audience", req.GetAudience(), "err", err)
		return nil, status.Error(codes.Unavailable, "no JWT-SVID available right now")
	}
	return &workloadpb.JWTSVIDResponse{Svids: []*workloadpb.JWTSVID{{SpiffeId: id.String(), Svid: tok}}}, nil
}

// FetchJWTBundles streams the trust domain's JWT bundle: the current one,
// then a new response whenever it changes (a key published or retired).
func (s *Server) FetchJWTBundles(_ *workloadpb.JWTBundlesRequest, stream grpc.ServerStreamingServer[workloadpb.JWTBundlesResponse]) error {
	ctx := stream.Context()
	if err := checkHeader(ctx); err != nil {
		return err
	}
	if s.jwt == nil {
		return status.Error(codes.Unimplemented, jwtUnimplemented)
	}
	for {
		b, changed, err := s.jwt.Bundle(ctx)
		switch {
		case errors.Is(err, context.Canceled) || ctx.Err() != nil:
			return nil
		case err != nil:
			s.log.Warn("workload: no JWT bundle from the CA", "err", err)
			return status.Error(codes.Unavailable, "the JWT bundle is not available right now")
		}
		doc, err := b.Marshal()
		if err != nil {
			return status.Error(codes.Unavailable, "the JWT bundle cannot be served right now")
		}
		if err := stream.Send(&workloadpb.JWTBundlesResponse{Bundles: map[string][]byte{b.TrustDomain().IDString(): doc}}); err != nil {
			return err
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return nil
		case <-s.done:
			return errClosed
		}
	}
}

// ValidateJWTSVID checks a JWT-SVID against the JWT bundle held and the
// audience given: a token that is malformed, expired, for another
// audience or signed by a key not in the bundle is InvalidArgument.
func (s *Server) ValidateJWTSVID(ctx context.Context, req *workloadpb.ValidateJWTSVIDRequest) (*workloadpb.ValidateJWTSVIDResponse, error) {
	if err := checkHeader(ctx); err != nil {
		return nil, err
	}
	if s.jwt == nil {
		return nil, status.Error(codes.Unimplemented, jwtUnimplemented)
	}
	switch {
	case req.GetAudience() == "":
		return nil, status.Error(codes.InvalidArgument, "audience must be specified")
	case req.GetSvid() == "":
		return nil, status.Error(codes.InvalidArgument, "svid must be specified")
	}
	b, _, err := s.jwt.Bundle(ctx)
	if err != nil {
		s.log.Warn("workload: no JWT bundle to validate with", "err", err)
		return nil, status.Error(codes.Unavailable, "the JWT bundle is not available right now")
	}
	tok, claims, err := jwtsvid.Validate(req.GetSvid(), b, []string{req.GetAudience()}, s.jwt.Now())
	if errors.Is(err, jwtsvid.ErrUntrusted) && s.jwt.RefreshAfterMiss(ctx) {
		// Signed by a key younger than the bundle, perhaps: a CA
		// replica's new one.
		if b, _, err = s.jwt.Bundle(ctx); err == nil {
			tok, claims, err = jwtsvid.Validate(req.GetSvid(), b, []string{req.GetAudience()}, s.jwt.Now())
		}
	}
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	pb, err := structpb.NewStruct(claims)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, "the token's claims are not JSON")
	}
	return &workloadpb.ValidateJWTSVIDResponse{SpiffeId: tok.ID.String(), Claims: pb}, nil
}
