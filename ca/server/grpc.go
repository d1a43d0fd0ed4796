package server

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	pb "istio.io/api/security/v1alpha1"

	"github.com/meshca/meshca/attestor"
	"github.com/meshca/meshca/ca"
)

// istioService implements istio.v1.auth.IstioCertificateService.
type istioService struct {
	pb.UnimplementedIstioCertificateServiceServer
	s *Server
}

// CreateCertificate signs the CSR for the identity the caller's credential
// proves, or, when the request's metadata holds an ImpersonatedIdentity
// (Istio ambient's ztunnel), for that identity if the Impersonator allows
// the caller to hold it. validity_duration is in seconds; 0 (unset in
// proto3) means the CA's default, as in Istio. The response chain is
// ca.Issued.ChainPEM: the leaf, each intermediate in its own element, then
// the trusted roots together in the last, the order ztunnel and
// istio-agent read.
func (i *istioService) CreateCertificate(ctx context.Context, req *pb.IstioCertificateRequest) (*pb.IstioCertificateResponse, error) {
	return guarded(ctx, i.s, "CreateCertificate", func() (*pb.IstioCertificateResponse, error) { return i.create(ctx, req) })
}

// guarded runs call, the work of the gRPC method named, under the limits
// every signing request has (the per-peer limiter of failed
// authentications and the in-flight gate), maps its error to a gRPC
// status and counts the request by code.
func guarded[R any](ctx context.Context, s *Server, method string, call func() (R, error)) (R, error) {
	var from string
	if p, ok := peer.FromContext(ctx); ok {
		from = p.Addr.String()
	}
	var resp R
	err := s.failures.allow(from)
	if err == nil {
		var release func()
		if release, err = s.gate.acquire(ctx); err == nil {
			resp, err = call()
			release()
		}
	}
	code := codes.OK
	if err != nil {
		var msg string
		code, msg = classify(s.cfg.Logger, err)
		if code == codes.Unauthenticated {
			s.failures.failed(from)
		}
		err = grpcStatus(ctx, code, msg, err)
	}
	s.metrics.Request("grpc", method, code.String())
	return resp, err
}

func (i *istioService) create(ctx context.Context, req *pb.IstioCertificateRequest) (*pb.IstioCertificateResponse, error) {
	cred, err := grpcCredential(ctx)
	if err != nil {
		return nil, err
	}
	ttl, err := ttlFromSeconds(req.GetValidityDuration())
	if err != nil {
		return nil, err
	}
	id, err := i.s.cfg.Attestor.Attest(ctx, cred)
	if err != nil {
		return nil, err
	}
	if requested, ok := impersonation(req.GetMetadata()); ok {
		if id, err = i.s.impersonate(ctx, id, requested); err != nil {
			return nil, err
		}
	}
	issued, err := i.s.cfg.Authority.Sign(ctx, ca.SignRequest{CSR: []byte(req.GetCsr()), TTL: ttl, Identity: id, Peer: cred.Peer})
	if err != nil {
		return nil, err
	}
	return &pb.IstioCertificateResponse{CertChain: issued.ChainPEM}, nil
}

// grpcStatus is the status error for code and msg. A shed request's
// carries its retry hint twice: as a google.rpc.RetryInfo detail, which
// meshca's agent reads, and as the grpc-retry-pushback-ms trailer that
// gRPC's own retry policy honours.
func grpcStatus(ctx context.Context, code codes.Code, msg string, err error) error {
	st := status.New(code, msg)
	var over *OverloadedError
	if errors.As(err, &over) {
		_ = grpc.SetTrailer(ctx, metadata.Pairs("grpc-retry-pushback-ms", strconv.FormatInt(over.RetryAfter.Milliseconds(), 10))) // best effort: the detail says it too
		if d, derr := st.WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(over.RetryAfter)}); derr == nil {
			st = d
		}
	}
	return st.Err()
}

func ttlFromSeconds(sec int64) (time.Duration, error) {
	if sec < 0 {
		return 0, fmt.Errorf("%w: validity_duration %d is negative", ca.ErrInvalidTTL, sec)
	}
	if sec > math.MaxInt64/int64(time.Second) {
		return 0, fmt.Errorf("%w: validity_duration %d is out of range", ca.ErrInvalidTTL, sec)
	}
	return time.Duration(sec) * time.Second, nil
}

// grpcCredential collects the bearer token and TLS client certificates.
func grpcCredential(ctx context.Context) (attestor.Credential, error) {
	var c attestor.Credential
	if p, ok := peer.FromContext(ctx); ok {
		c.Peer = p.Addr.String()
		if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok {
			c.PeerCertificates = ti.State.PeerCertificates
		}
	}
	md, _ := metadata.FromIncomingContext(ctx)
	tok, err := bearerToken(md.Get("authorization"))
	if err != nil {
		return c, err
	}
	c.BearerToken = tok
	return c, nil
}

// bearerToken extracts the token from "authorization: Bearer <token>". No
// header is fine (the client may use mTLS); a malformed one is refused.
func bearerToken(values []string) (string, error) {
	switch len(values) {
	case 0:
		return "", nil
	case 1:
	default:
		return "", fmt.Errorf("%w: more than one authorization header", attestor.ErrUnauthenticated)
	}
	scheme, tok, ok := strings.Cut(strings.TrimSpace(values[0]), " ")
	tok = strings.TrimSpace(tok)
	if !ok || !strings.EqualFold(scheme, "Bearer") || tok == "" {
		return "", fmt.Errorf("%w: authorization header must be \"Bearer <token>\"", attestor.ErrUnauthenticated)
	}
	return tok, nil
}
