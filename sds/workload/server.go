// Package workload serves a workload's SVID over the SPIFFE Workload API,
// compatible with go-spiffe's workloadapi client and SPIRE's agent.
//
// FetchX509SVID streams the current X.509-SVID as soon as there is one and
// again on every change, with the bundles of the federated trust domains
// the SVID carries (federated_bundles); FetchX509Bundles streams the trust
// domain's roots and the federated ones, and again whenever they change. With a JWT source (Config.JWT), the JWT
// profile is served too: FetchJWTSVID returns a JWT-SVID for the audiences
// asked (cached per audience set, renewed at half its life),
// FetchJWTBundles streams the JWT bundle and again on every key rotation,
// and ValidateJWTSVID checks a token against it (a bad token is
// InvalidArgument, as the specification says). Without one, the JWT
// methods answer Unimplemented.
// Every call must carry the metadata "workload.spiffe.io: true", as the
// Workload API specification requires (it keeps a browser or a confused
// proxy from reaching the socket with a forged request).
//
// Use:
//
//	srv, err := workload.New(workload.Config{Source: manager, Logger: log})
//	g := grpc.NewServer()
//	srv.Register(g)
//	go g.Serve(listener)
//	...
//	srv.Close() // ends the open streams, so that:
//	g.GracefulStop()
package workload

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	workloadpb "github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/meshca/meshca/sds"
)

// securityHeader is the metadata key every Workload API call carries.
const securityHeader = "workload.spiffe.io"

// Config configures a Server. Source is required; zero fields get the
// documented defaults.
type Config struct {
	// Source gives the SVID to serve and says when it changes.
	Source sds.Source
	// JWT mints JWT-SVIDs and holds the JWT bundle (sds.JWTCache); nil:
	// the JWT methods answer Unimplemented.
	JWT JWTSource
	// Logger receives the server's logs; default: discarded.
	Logger *slog.Logger
}

// JWTSource is what the JWT profile needs: sds.JWTCache is one.
type JWTSource interface {
	// ID is the workload's SPIFFE ID.
	ID() spiffeid.ID
	// Now is the time tokens are validated at.
	Now() time.Time
	// FetchJWTSVID returns a JWT-SVID for the audiences.
	FetchJWTSVID(ctx context.Context, audiences []string) (string, error)
	// Bundle returns the trust domain's JWT bundle and a channel closed
	// when it next changes.
	Bundle(ctx context.Context) (*jwtbundle.Bundle, <-chan struct{}, error)
	// RefreshAfterMiss fetches the bundle again after a token signed by
	// a key not in tried, rate-limited, and reports whether the bundle
	// held now differs from tried.
	RefreshAfterMiss(ctx context.Context, tried *jwtbundle.Bundle) bool
}

// Server implements the SPIFFE Workload API for one workload's SVID.
type Server struct {
	workloadpb.UnimplementedSpiffeWorkloadAPIServer

	src  sds.Source
	jwt  JWTSource
	log  *slog.Logger
	done chan struct{}
	once sync.Once
}

// New returns a server for cfg.Source.
func New(cfg Config) (*Server, error) {
	if cfg.Source == nil {
		return nil, errors.New("workload: Config.Source is required")
	}
	s := &Server{src: cfg.Source, jwt: cfg.JWT, log: cfg.Logger, done: make(chan struct{})}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	return s, nil
}

// Register registers the SpiffeWorkloadAPI service on g.
func (s *Server) Register(g *grpc.Server) {
	workloadpb.RegisterSpiffeWorkloadAPIServer(g, s)
}

// Close ends the open streams (with Unavailable, so clients retry
// elsewhere) and refuses new ones. A grpc GracefulStop waits for streams
// to end, so call Close first.
func (s *Server) Close() { s.once.Do(func() { close(s.done) }) }

var errClosed = status.Error(codes.Unavailable, "the Workload API is shutting down")

// checkHeader refuses a call without the security header, with SPIRE's
// status and message.
func checkHeader(ctx context.Context) error {
	md, _ := metadata.FromIncomingContext(ctx)
	if v := md.Get(securityHeader); len(v) != 1 || v[0] != "true" {
		return status.Error(codes.InvalidArgument, "security header missing from request")
	}
	return nil
}

// FetchX509SVID streams the X.509-SVID: the current one when there is one,
// then a new response on every change.
func (s *Server) FetchX509SVID(_ *workloadpb.X509SVIDRequest, stream grpc.ServerStreamingServer[workloadpb.X509SVIDResponse]) error {
	if err := checkHeader(stream.Context()); err != nil {
		return err
	}
	return watch(stream.Context(), s, "FetchX509SVID", func(svid *sds.SVID, last *workloadpb.X509SVIDResponse) (*workloadpb.X509SVIDResponse, error) {
		return x509SVIDResponse(svid)
	}, stream.Send)
}

// FetchX509Bundles streams the trust domain's roots: the current ones,
// then a new response whenever they change.
func (s *Server) FetchX509Bundles(_ *workloadpb.X509BundlesRequest, stream grpc.ServerStreamingServer[workloadpb.X509BundlesResponse]) error {
	if err := checkHeader(stream.Context()); err != nil {
		return err
	}
	return watch(stream.Context(), s, "FetchX509Bundles", func(svid *sds.SVID, last *workloadpb.X509BundlesResponse) (*workloadpb.X509BundlesResponse, error) {
		resp := x509BundlesResponse(svid)
		if last != nil && sameBundles(last, resp) {
			return nil, nil // a leaf rotation: the bundle did not change
		}
		return resp, nil
	}, stream.Send)
}

// watch sends what build makes of the current SVID, and again after each
// change, until the client goes away or the server closes. build returns
// nil to skip an SVID that changes nothing for this stream.
func watch[R any](ctx context.Context, s *Server, method string, build func(svid *sds.SVID, last *R) (*R, error), send func(*R) error) error {
	changed, unsubscribe := s.src.Subscribe()
	defer unsubscribe()
	s.log.Debug("workload: stream opened", "method", method)
	defer s.log.Debug("workload: stream closed", "method", method)
	var (
		seen *sds.SVID
		last *R
	)
	for {
		if svid := s.src.Current(); svid != nil && svid != seen {
			seen = svid
			resp, err := build(svid, last)
			if err != nil {
				s.log.Error("workload: cannot encode the SVID", "method", method, "spiffe_id", svid.ID.String(), "svid_version", svid.Version, "err", err)
				return status.Error(codes.Unavailable, "the SVID cannot be served right now")
			}
			if resp != nil {
				if err := send(resp); err != nil {
					return err
				}
				last = resp
				s.log.Debug("workload: sent", "method", method, "spiffe_id", svid.ID.String(), "svid_version", svid.Version)
			}
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

func x509SVIDResponse(svid *sds.SVID) (*workloadpb.X509SVIDResponse, error) {
	if len(svid.Certificates) == 0 {
		return nil, errors.New("workload: SVID has no certificate")
	}
	key, err := x509.MarshalPKCS8PrivateKey(svid.Key)
	if err != nil {
		return nil, fmt.Errorf("workload: encoding the key: %w", err)
	}
	resp := &workloadpb.X509SVIDResponse{Svids: []*workloadpb.X509SVID{{
		SpiffeId:    svid.ID.String(),
		X509Svid:    concatDER(svid.Certificates),
		X509SvidKey: key,
		Bundle:      concatDER(svid.Roots),
	}}}
	if len(svid.Federated) > 0 {
		resp.FederatedBundles = federatedX509(svid)
	}
	return resp, nil
}

// x509BundlesResponse keys each bundle by the trust domain's ID
// ("spiffe://example.org"), as SPIRE does (go-spiffe accepts it or the
// bare name): the workload's trust domain's and the federated ones'.
func x509BundlesResponse(svid *sds.SVID) *workloadpb.X509BundlesResponse {
	bundles := federatedX509(svid)
	bundles[svid.ID.TrustDomain().IDString()] = concatDER(svid.Roots)
	return &workloadpb.X509BundlesResponse{Bundles: bundles}
}

// federatedX509 are the federated trust domains' X.509 authorities, by
// trust domain ID.
func federatedX509(svid *sds.SVID) map[string][]byte {
	out := make(map[string][]byte, len(svid.Federated)+1)
	for td, b := range svid.Federated {
		out[td.IDString()] = concatDER(b.X509Authorities())
	}
	return out
}

func sameBundles(a, b *workloadpb.X509BundlesResponse) bool {
	if len(a.Bundles) != len(b.Bundles) {
		return false
	}
	for td, der := range a.Bundles {
		if other, ok := b.Bundles[td]; !ok || !bytes.Equal(der, other) {
			return false
		}
	}
	return true
}

func concatDER(certs []*x509.Certificate) []byte {
	var out []byte
	for _, c := range certs {
		out = append(out, c.Raw...)
	}
	return out
}
