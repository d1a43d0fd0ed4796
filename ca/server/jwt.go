package server

import (
	"context"
	"fmt"
	"time"

	workloadpb "github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"

	"github.com/meshca/meshca/ca"
)

// JWTServiceName is meshca's own gRPC service for JWT-SVIDs, beside
// Istio's CSR service (which is X.509 only). Its messages are the SPIFFE
// Workload API's: MintJWTSVID takes a JWTSVIDRequest (audiences, and
// optionally the SPIFFE ID, which must be the caller's) and answers a
// JWTSVIDResponse with one token of the CA's default JWT-SVID lifetime, or
// of the lifetime in the request metadata JWTTTLMetadata (the Workload
// API's message has no field for it); FetchJWTBundle takes a JWTBundlesRequest and answers a
// JWTBundlesResponse with the trust domain's JWT bundle (a JWKS) keyed by
// the trust domain's ID, and beside it that of each federated trust
// domain whose bundle has JWT authorities (Config.Federation). Callers prove their identity as for a CSR (a
// bearer token, or their X.509-SVID over mTLS); the bundle is public and
// asks for no credential.
const JWTServiceName = "meshca.ca.v1.JWTService"

// JWTTTLMetadata is the gRPC metadata key of MintJWTSVID's requested
// lifetime, a Go duration ("10m"); absent: the CA's default.
const JWTTTLMetadata = "meshca-jwt-ttl"

// jwtService implements JWTServiceName.
type jwtService struct{ s *Server }

// jwtServiceDesc is what protoc would generate for the service.
var jwtServiceDesc = grpc.ServiceDesc{
	ServiceName: JWTServiceName,
	HandlerType: (*any)(nil),
	Methods: []grpc.MethodDesc{
		{MethodName: "MintJWTSVID", Handler: unary(func(j *jwtService, ctx context.Context, in *workloadpb.JWTSVIDRequest) (any, error) {
			return j.MintJWTSVID(ctx, in)
		})},
		{MethodName: "FetchJWTBundle", Handler: unary(func(j *jwtService, ctx context.Context, in *workloadpb.JWTBundlesRequest) (any, error) {
			return j.FetchJWTBundle(ctx, in)
		})},
	},
	Metadata: "meshca/ca/server/jwt.go",
}

// unary adapts a method of a service (jwtService, bundleService) to a
// grpc.MethodDesc handler.
func unary[S, Req any](call func(S, context.Context, *Req) (any, error)) func(any, context.Context, func(any) error, grpc.UnaryServerInterceptor) (any, error) {
	return func(srv any, ctx context.Context, dec func(any) error, icpt grpc.UnaryServerInterceptor) (any, error) {
		in := new(Req)
		if err := dec(in); err != nil {
			return nil, err
		}
		j := srv.(S)
		if icpt == nil {
			return call(j, ctx, in)
		}
		return icpt(ctx, in, &grpc.UnaryServerInfo{Server: srv}, func(ctx context.Context, req any) (any, error) {
			return call(j, ctx, req.(*Req))
		})
	}
}

// MintJWTSVID signs a JWT-SVID for the identity the caller's credential
// proves, under the same limits as a CSR.
func (j *jwtService) MintJWTSVID(ctx context.Context, req *workloadpb.JWTSVIDRequest) (*workloadpb.JWTSVIDResponse, error) {
	return guarded(ctx, j.s, "MintJWTSVID", func() (*workloadpb.JWTSVIDResponse, error) { return j.mint(ctx, req) })
}

func (j *jwtService) mint(ctx context.Context, req *workloadpb.JWTSVIDRequest) (*workloadpb.JWTSVIDResponse, error) {
	cred, err := grpcCredential(ctx)
	if err != nil {
		return nil, err
	}
	id, err := j.s.cfg.Attestor.Attest(ctx, cred)
	if err != nil {
		return nil, err
	}
	if want := req.GetSpiffeId(); want != "" {
		if asked, err := spiffeid.FromString(want); err != nil || asked != id.ID {
			return nil, fmt.Errorf("%w: the credential proves %s, not %q", ca.ErrIdentityMismatch, id.ID, want)
		}
	}
	var ttl time.Duration
	if v := metadata.ValueFromIncomingContext(ctx, JWTTTLMetadata); len(v) > 0 {
		if ttl, err = time.ParseDuration(v[0]); err != nil || len(v) > 1 || ttl <= 0 {
			return nil, fmt.Errorf("%w: %s must be one positive Go duration such as 10m", ca.ErrInvalidTTL, JWTTTLMetadata)
		}
	}
	svid, err := j.s.cfg.Authority.MintJWTSVID(ctx, id, req.GetAudience(), ttl)
	if err != nil {
		return nil, err
	}
	return &workloadpb.JWTSVIDResponse{Svids: []*workloadpb.JWTSVID{{SpiffeId: svid.ID.String(), Svid: svid.Token}}}, nil
}

// FetchJWTBundle answers the trust domain's JWT bundle, and those of the
// federated trust domains that have JWT authorities.
func (j *jwtService) FetchJWTBundle(ctx context.Context, _ *workloadpb.JWTBundlesRequest) (*workloadpb.JWTBundlesResponse, error) {
	bundles := map[string][]byte{}
	b, err := j.s.cfg.Authority.JWTBundle().Marshal()
	if err == nil {
		bundles[j.s.cfg.Authority.TrustDomain().IDString()] = b
		for td, fb := range j.s.federated() {
			if len(fb.JWTAuthorities()) == 0 {
				continue
			}
			if bundles[td.IDString()], err = fb.JWTBundle().Marshal(); err != nil {
				break
			}
		}
	}
	if err != nil {
		code, msg := classify(j.s.cfg.Logger, err)
		j.s.metrics.Request("grpc", "FetchJWTBundle", code.String())
		return nil, grpcStatus(ctx, code, msg, err)
	}
	j.s.metrics.Request("grpc", "FetchJWTBundle", codes.OK.String())
	return &workloadpb.JWTBundlesResponse{Bundles: bundles}, nil
}
