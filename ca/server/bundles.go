package server

import (
	"context"
	"crypto/x509"
	"maps"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	workloadpb "github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
)

// BundleServiceName is meshca's own gRPC service for trust bundles, beside
// Istio's CSR service (whose answer carries only the CA's own roots). Its
// messages are the SPIFFE Workload API's: FetchX509Bundles takes an
// X509BundlesRequest and answers an X509BundlesResponse with the X.509
// authorities (ASN.1 DER certificates, concatenated) of the CA's own trust
// domain and of each trust domain it federates with, keyed by the trust
// domain's ID ("spiffe://b.example"), as the Workload API's
// FetchX509Bundles does. Bundles are public: the call asks for no
// credential. The JWT authorities of the same trust domains are
// FetchJWTBundle's (JWTServiceName).
const BundleServiceName = "meshca.ca.v1.BundleService"

// FederatedBundles gives the bundles of the trust domains the CA federates
// with (ca/federation.Federation is one).
type FederatedBundles interface {
	Bundles() map[spiffeid.TrustDomain]*spiffebundle.Bundle
}

// bundleService implements BundleServiceName.
type bundleService struct{ s *Server }

// bundleServiceDesc is what protoc would generate for the service.
var bundleServiceDesc = grpc.ServiceDesc{
	ServiceName: BundleServiceName,
	HandlerType: (*any)(nil),
	Methods: []grpc.MethodDesc{
		{MethodName: "FetchX509Bundles", Handler: unary(func(b *bundleService, ctx context.Context, in *workloadpb.X509BundlesRequest) (any, error) {
			return b.FetchX509Bundles(ctx, in)
		})},
	},
	Metadata: "meshca/ca/server/bundles.go",
}

// FetchX509Bundles answers the X.509 authorities of the CA's trust domain
// and of the federated ones.
func (b *bundleService) FetchX509Bundles(_ context.Context, _ *workloadpb.X509BundlesRequest) (*workloadpb.X509BundlesResponse, error) {
	auth := b.s.cfg.Authority
	out := map[string][]byte{auth.TrustDomain().IDString(): concatDER(auth.Bundle().X509Authorities())}
	for td, fb := range b.s.federated() {
		out[td.IDString()] = concatDER(fb.X509Authorities())
	}
	b.s.metrics.Request("grpc", "FetchX509Bundles", codes.OK.String())
	return &workloadpb.X509BundlesResponse{Bundles: out}, nil
}

// federated returns the federated bundles, none without Config.Federation:
// never one keyed by the CA's own trust domain, nor one whose bundle is of
// another trust domain than its key, so that no federated bundle is ever
// answered as the CA's own.
func (s *Server) federated() map[spiffeid.TrustDomain]*spiffebundle.Bundle {
	if s.cfg.Federation == nil {
		return nil
	}
	own := s.cfg.Authority.TrustDomain()
	out := maps.Clone(s.cfg.Federation.Bundles())
	maps.DeleteFunc(out, func(td spiffeid.TrustDomain, fb *spiffebundle.Bundle) bool {
		return td == own || fb == nil || fb.TrustDomain() != td
	})
	return out
}

func concatDER(certs []*x509.Certificate) []byte {
	var out []byte
	for _, c := range certs {
		out = append(out, c.Raw...)
	}
	return out
}
