// Package csrapi is the client side of Istio's CSR API
// (istio.v1.auth.IstioCertificateService) as the benchmark's clients use
// it against every server: a TLS connection made and kept before any
// measurement, one CreateCertificate call with an optional bearer token,
// and the returned chain turned into a certificate to present.
package csrapi

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/stats"
	pb "istio.io/api/security/v1alpha1"
)

// LeafTTL is the lifetime every benchmark request asks for.
const LeafTTL = 24 * time.Hour

// Conn is one persistent connection to a server.
type Conn struct {
	cc  *grpc.ClientConn
	svc pb.IstioCertificateServiceClient
}

// Dial connects to addr, verifying the server against roots under
// serverName and presenting cert if it is not nil, and waits until the
// connection is up (handshake done) or ctx ends.
func Dial(ctx context.Context, addr string, roots *x509.CertPool, serverName string, cert *tls.Certificate) (*Conn, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: roots, ServerName: serverName}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)), grpc.WithStatsHandler(sentHandler{}))
	if err != nil {
		return nil, fmt.Errorf("csrapi: %w", err)
	}
	cc.Connect()
	for s := cc.GetState(); s != connectivity.Ready; s = cc.GetState() {
		if !cc.WaitForStateChange(ctx, s) {
			_ = cc.Close()
			return nil, fmt.Errorf("csrapi: connect %s: %w (last state %s)", addr, ctx.Err(), s)
		}
	}
	return &Conn{cc: cc, svc: pb.NewIstioCertificateServiceClient(cc)}, nil
}

// sentKey is the context key of the *time.Time WithSent fills.
type sentKey struct{}

// WithSent returns a context for one call that records in *at when the
// call's request left: when its stream opened on the connection and its
// headers were queued to go. That is the call's start, unless the
// connection already had as many calls open as the server allows
// (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS): then the call first waits in
// the client for one of them to end, unseen by the server. A stream the
// server refused or cut short before handling it is retried by gRPC
// transparently, and the later time, that of the stream served, wins.
func WithSent(ctx context.Context, at *time.Time) context.Context {
	return context.WithValue(ctx, sentKey{}, at)
}

// sentHandler is the stats handler that fills WithSent's time. gRPC calls
// it for OutHeader in the calling goroutine, once the stream has its
// place on the connection.
type sentHandler struct{}

func (sentHandler) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context { return ctx }

func (sentHandler) HandleRPC(ctx context.Context, s stats.RPCStats) {
	if _, ok := s.(*stats.OutHeader); !ok {
		return
	}
	if at, ok := ctx.Value(sentKey{}).(*time.Time); ok {
		*at = time.Now()
	}
}

func (sentHandler) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context { return ctx }

func (sentHandler) HandleConn(context.Context, stats.ConnStats) {}

// Close closes the connection.
func (c *Conn) Close() error { return c.cc.Close() }

// Sign sends one CSR asking for LeafTTL, with token as a bearer token if it
// is not empty, and returns the chain (leaf first, root last). opts go to
// the call (e.g. grpc.Trailer).
func (c *Conn) Sign(ctx context.Context, csrPEM []byte, token string, opts ...grpc.CallOption) ([]string, error) {
	if token != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
	}
	resp, err := c.svc.CreateCertificate(ctx, &pb.IstioCertificateRequest{
		Csr:              string(csrPEM),
		ValidityDuration: int64(LeafTTL / time.Second),
	}, opts...)
	if err != nil {
		return nil, err
	}
	if len(resp.GetCertChain()) == 0 {
		return nil, errors.New("csrapi: empty chain")
	}
	return resp.GetCertChain(), nil
}

// Certificate turns a chain (leaf first, root last) and the leaf's key into
// a client certificate: the leaf and its intermediates, not the root.
func Certificate(chain []string, key crypto.Signer) (tls.Certificate, error) {
	var out tls.Certificate
	for i, s := range chain {
		if i == len(chain)-1 && i > 0 {
			break // the root
		}
		b, _ := pem.Decode([]byte(s))
		if b == nil {
			return out, errors.New("csrapi: chain entry is not PEM")
		}
		out.Certificate = append(out.Certificate, b.Bytes)
	}
	leaf, err := x509.ParseCertificate(out.Certificate[0])
	if err != nil {
		return out, fmt.Errorf("csrapi: %w", err)
	}
	out.Leaf, out.PrivateKey = leaf, key
	return out, nil
}
