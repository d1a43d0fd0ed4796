package workload

import (
	"context"
	"errors"
	"maps"
	"slices"
	"strings"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
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

// FetchJWTBundles streams the JWT bundles: the trust domain's, and those
// of the federated trust domains that have JWT authorities; the current
// ones, then a new response whenever one changes (a key published or
// retired, a federated bundle updated).
func (s *Server) FetchJWTBundles(_ *workloadpb.JWTBundlesRequest, stream grpc.ServerStreamingServer[workloadpb.JWTBundlesResponse]) error {
	ctx := stream.Context()
	if err := checkHeader(ctx); err != nil {
		return err
	}
	if s.jwt == nil {
		return status.Error(codes.Unimplemented, jwtUnimplemented)
	}
	svidChanged, unsubscribe := s.src.Subscribe()
	defer unsubscribe()
	var last []*jwtbundle.Bundle
	for {
		b, changed, err := s.jwt.Bundle(ctx)
		switch {
		case errors.Is(err, context.Canceled) || ctx.Err() != nil:
			return nil
		case err != nil:
			s.log.Warn("workload: no JWT bundle from the CA", "err", err)
			return status.Error(codes.Unavailable, "the JWT bundle is not available right now")
		}
		bundles := s.jwtBundles(b)
		if !sameJWTBundles(last, bundles) {
			resp := &workloadpb.JWTBundlesResponse{Bundles: make(map[string][]byte, len(bundles))}
			for _, jb := range bundles {
				doc, err := jb.Marshal()
				if err != nil {
					return status.Error(codes.Unavailable, "the JWT bundle cannot be served right now")
				}
				resp.Bundles[jb.TrustDomain().IDString()] = doc
			}
			if err := stream.Send(resp); err != nil {
				return err
			}
			last = bundles
		}
		select {
		case <-changed:
		case <-svidChanged:
		case <-ctx.Done():
			return nil
		case <-s.done:
			return errClosed
		}
	}
}

// jwtBundles are own, the trust domain's JWT bundle, then those of the
// federated trust domains that have JWT authorities, in trust domain
// order.
func (s *Server) jwtBundles(own *jwtbundle.Bundle) []*jwtbundle.Bundle {
	out := []*jwtbundle.Bundle{own}
	svid := s.src.Current()
	if svid == nil {
		return out
	}
	for _, td := range slices.SortedFunc(maps.Keys(svid.Federated), func(a, b spiffeid.TrustDomain) int { return strings.Compare(a.Name(), b.Name()) }) {
		if fb := svid.Federated[td]; len(fb.JWTAuthorities()) > 0 {
			out = append(out, fb.JWTBundle())
		}
	}
	return out
}

// sameJWTBundles reports whether a and b hold the same bundles in order.
func sameJWTBundles(a, b []*jwtbundle.Bundle) bool {
	return slices.EqualFunc(a, b, func(x, y *jwtbundle.Bundle) bool { return x.TrustDomain() == y.TrustDomain() && x.Equal(y) })
}

// ValidateJWTSVID checks a JWT-SVID against the JWT bundles held (the
// trust domain's and the federated ones') and the audience given: a token that is malformed, expired, for another
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
	// A federated trust domain's token verifies by that trust domain's
	// keys, as SPIRE's agent does.
	validate := func(b *jwtbundle.Bundle) (*jwtsvid.Token, map[string]any, error) {
		return jwtsvid.Validate(req.GetSvid(), jwtbundle.NewSet(s.jwtBundles(b)...), []string{req.GetAudience()}, s.jwt.Now())
	}
	tok, claims, err := validate(b)
	if errors.Is(err, jwtsvid.ErrUntrusted) && s.jwt.RefreshAfterMiss(ctx, b) {
		// Signed by a key younger than the bundle, perhaps: a CA
		// replica's new one.
		if b, _, err = s.jwt.Bundle(ctx); err == nil {
			tok, claims, err = validate(b)
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
