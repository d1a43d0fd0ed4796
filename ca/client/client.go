// Package client is the caller's side of meshca's CSR API: it builds CSRs
// for a SPIFFE ID and calls istio.v1.auth.IstioCertificateService over TLS,
// authenticating with a bearer token or with the caller's current SVID.
package client

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net/url"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	pb "istio.io/api/security/v1alpha1"
)

// NewCSR returns a PEM CSR for id signed by key: one URI SAN, nothing else.
func NewCSR(key crypto.Signer, id spiffeid.ID) ([]byte, error) {
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{id.URL()}}, key)
	if err != nil {
		return nil, fmt.Errorf("client: create CSR: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), nil
}

// Config configures a Client.
type Config struct {
	// Addr is the CA's gRPC address (host:port). Required.
	Addr string
	// Roots verify the CA's serving certificate. Required.
	Roots *x509.CertPool
	// ServerName overrides the name checked in the CA's certificate.
	// Default: the host part of Addr.
	ServerName string
	// ClientCertificate, when set, is presented for mTLS renewal.
	// It is called on every handshake, so a renewed SVID is picked up.
	ClientCertificate func() (*tls.Certificate, error)
}

// Client calls the CSR API over one reused connection.
type Client struct {
	conn *grpc.ClientConn
	svc  pb.IstioCertificateServiceClient
}

// New prepares a client; the connection is made on first use.
func New(cfg Config) (*Client, error) {
	if cfg.Addr == "" || cfg.Roots == nil {
		return nil, errors.New("client: address and roots are required")
	}
	tlsCfg := &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: cfg.Roots, ServerName: cfg.ServerName}
	if cfg.ClientCertificate != nil {
		tlsCfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return cfg.ClientCertificate()
		}
	}
	conn, err := grpc.NewClient(cfg.Addr, grpc.WithTransportCredentials(credentials.NewTLS(tlsCfg)))
	if err != nil {
		return nil, fmt.Errorf("client: %w", err)
	}
	return &Client{conn: conn, svc: pb.NewIstioCertificateServiceClient(conn)}, nil
}

// Sign sends csrPEM and returns the chain, leaf first and root last. token,
// if not empty, is sent as "authorization: Bearer <token>". ttl 0 asks for
// the CA's default lifetime.
func (c *Client) Sign(ctx context.Context, csrPEM []byte, ttl time.Duration, token string) ([]string, error) {
	if token != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
	}
	resp, err := c.svc.CreateCertificate(ctx, &pb.IstioCertificateRequest{
		Csr:              string(csrPEM),
		ValidityDuration: int64(ttl / time.Second),
	})
	if err != nil {
		return nil, err
	}
	if len(resp.GetCertChain()) == 0 {
		return nil, errors.New("client: CA returned an empty chain")
	}
	return resp.GetCertChain(), nil
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }
