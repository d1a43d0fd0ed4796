// Package client is the caller's side of meshca's CSR API: it builds CSRs
// for a SPIFFE ID and calls istio.v1.auth.IstioCertificateService over TLS,
// authenticating with a bearer token or with the caller's current SVID.
//
// # Several replicas
//
// A client may reach several replicas of one CA: several addresses
// (Config.Addrs), or one name that resolves to several addresses (gRPC's
// DNS resolver resolves Config.Addr). All replicas share the trust bundle,
// and each presents a serving certificate under it, so one TLS
// configuration verifies them all. The client uses gRPC's own machinery:
//   - round_robin balancing: calls go to the replicas it is connected to in
//     turn, and a replica whose connection fails (refused, reset, GOAWAY)
//     is left out until it reconnects;
//   - a retry policy: a call that fails with Unavailable is tried again,
//     up to retryAttempts in all, after a short jittered wait, on the next
//     replica in round_robin's turn; calls a replica never started
//     (GOAWAY while it shuts down) gRPC retries transparently;
//   - an idle timeout: connections close after idleTimeout without calls,
//     so a client that calls twice a day holds no connection to every
//     replica in between, and its next call connects afresh.
//
// ResourceExhausted (a replica shedding load) is not retried here: it
// carries a retry hint (RetryDelay) for the caller's own backoff, and
// retrying at once would add load to a CA that asked for less.
package client

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"
	"google.golang.org/grpc/status"
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
	// Addr is the CA's gRPC address: host:port (a name is resolved by
	// gRPC's DNS resolver, and every address it resolves to is a replica),
	// or a gRPC target such as dns:///meshca.example:15012.
	Addr string
	// Addrs are the host:port addresses of several replicas of the CA,
	// besides Addr if that is set too. At least one address is required.
	Addrs []string
	// Roots verify the CA's serving certificate. Required unless LoadRoots
	// is set.
	Roots *x509.CertPool
	// LoadRoots, when set, returns the PEM bundle to verify the CA with,
	// read before every call (a mounted ConfigMap); when it changes, the
	// connection is replaced, so a rotated CA root is picked up.
	LoadRoots func() ([]byte, error)
	// ServerName overrides the name checked in the CA's certificate, the
	// same for every replica. Default: with one address, the host part of
	// it; with several, each replica is checked against its own address
	// (ServerName of it).
	ServerName string
	// ClientCertificate, when set, is the certificate to present for mTLS
	// renewal (an empty tls.Certificate presents none). It is asked before
	// every call; when it changes (a renewed SVID), the connection is
	// replaced, since TLS presents a client certificate only at handshake.
	ClientCertificate func() (*tls.Certificate, error)
}

// Client calls the CSR API, reusing one connection while the client
// certificate stays the same. With ClientCertificate set it is meant for one
// caller at a time (the agent's Manager): a redial closes the connection a
// concurrent call may still be using.
type Client struct {
	cfg Config

	mu         sync.Mutex
	conn       *grpc.ClientConn
	svc        pb.IstioCertificateServiceClient
	dialedWith []byte // leaf DER presented on conn, nil for none
	rootsPEM   []byte // the LoadRoots bundle conn verifies with
}

// New prepares a client; the connection is made on first use.
func New(cfg Config) (*Client, error) {
	if cfg.Addr != "" {
		cfg.Addrs = append([]string{cfg.Addr}, cfg.Addrs...)
	}
	if len(cfg.Addrs) == 0 || (cfg.Roots == nil && cfg.LoadRoots == nil) {
		return nil, errors.New("client: address and roots are required")
	}
	if len(cfg.Addrs) > 1 {
		for _, a := range cfg.Addrs {
			if _, err := ServerName(a); err != nil || strings.Contains(a, "://") {
				return nil, fmt.Errorf("client: CA replica address %q: want host:port", a)
			}
		}
	}
	c := &Client{cfg: cfg}
	if cfg.LoadRoots != nil {
		b, err := cfg.LoadRoots()
		if err != nil {
			return nil, fmt.Errorf("client: roots: %w", err)
		}
		if c.cfg.Roots, err = poolFromPEM(b); err != nil {
			return nil, err
		}
		c.rootsPEM = b
	}
	if err := c.dial(nil); err != nil {
		return nil, err
	}
	return c, nil
}

func poolFromPEM(b []byte) (*x509.CertPool, error) {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, errors.New("client: the CA bundle holds no PEM certificates")
	}
	return pool, nil
}

// window is the flow-control window of each call and of the connection.
// A fixed one turns off gRPC's bandwidth estimator, which otherwise sends
// the CA a PING after most answers, for the CA to read and acknowledge:
// answers are a few KiB, and 1 MiB holds the largest bundle in one window.
const window = 1 << 20

// dial replaces the connection with one presenting cert. Callers hold mu
// (or are New).
func (c *Client) dial(cert *tls.Certificate) error {
	tlsCfg := &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: c.cfg.Roots, ServerName: c.cfg.ServerName}
	var leaf []byte
	if cert != nil && len(cert.Certificate) > 0 {
		leaf = cert.Certificate[0]
		tlsCfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil }
	}
	target, opts := c.target()
	opts = append(opts, grpc.WithTransportCredentials(credentials.NewTLS(tlsCfg)),
		grpc.WithDefaultServiceConfig(serviceConfig), grpc.WithIdleTimeout(idleTimeout),
		grpc.WithInitialWindowSize(window), grpc.WithInitialConnWindowSize(window))
	conn, err := grpc.NewClient(target, opts...)
	if err != nil {
		return fmt.Errorf("client: %w", err)
	}
	if c.conn != nil {
		_ = c.conn.Close() // replaced: its calls are done
	}
	c.conn, c.svc, c.dialedWith = conn, pb.NewIstioCertificateServiceClient(conn), leaf
	return nil
}

// Settings of the connection to the CA (see "Several replicas").
const (
	// retryAttempts is how many times one call is tried in all: enough to
	// step past a replica that failed under it (or two), few enough that a
	// CA that is down everywhere is left to the caller's backoff.
	retryAttempts = 3
	// idleTimeout closes the connections after a minute without calls.
	idleTimeout = time.Minute
	// replicasScheme names the resolver that hands gRPC the Addrs.
	replicasScheme = "meshca-replicas"
)

// serviceConfig selects round_robin and retries the calls of the CSR API,
// the JWT service and the bundle service that fail with Unavailable: gRPC waits a random time up to 0.1 s before the
// second attempt, up to 0.2 s before the third (or what a
// grpc-retry-pushback-ms trailer says).
var serviceConfig = fmt.Sprintf(`{
  "loadBalancingConfig": [{"round_robin": {}}],
  "methodConfig": [{
    "name": [{"service": %q}, {"service": %q}, {"service": %q}],
    "retryPolicy": {
      "maxAttempts": %d,
      "initialBackoff": "0.1s",
      "maxBackoff": "1s",
      "backoffMultiplier": 2,
      "retryableStatusCodes": ["UNAVAILABLE"]
    }
  }]
}`, pb.IstioCertificateService_ServiceDesc.ServiceName, jwtService, bundleService, retryAttempts)

// target is what grpc.NewClient dials: the one address as it is, or a
// resolver holding every replica, each checked against its own name
// unless ServerName is set.
func (c *Client) target() (string, []grpc.DialOption) {
	if len(c.cfg.Addrs) == 1 {
		return c.cfg.Addrs[0], nil
	}
	eps := make([]resolver.Endpoint, len(c.cfg.Addrs))
	for i, a := range c.cfg.Addrs {
		addr := resolver.Address{Addr: a}
		if c.cfg.ServerName == "" {
			addr.ServerName, _ = ServerName(a) // checked in New
		}
		eps[i] = resolver.Endpoint{Addresses: []resolver.Address{addr}}
	}
	// One resolver per connection: a manual resolver serves one at a time.
	r := manual.NewBuilderWithScheme(replicasScheme)
	r.InitialState(resolver.State{Endpoints: eps})
	return replicasScheme + ":///ca", []grpc.DialOption{grpc.WithResolvers(r)}
}

// ServerName is the name a CA at addr is expected to present in its
// certificate: the host of addr (host:port, or a gRPC target
// scheme:///host:port), or "localhost" for a loopback or unspecified IP,
// which the CA's default serving certificate names.
func ServerName(addr string) (string, error) {
	if i := strings.Index(addr, "://"); i >= 0 {
		// A target: scheme://[authority]/endpoint.
		rest := addr[i+3:]
		addr = rest[strings.Index(rest, "/")+1:]
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Errorf("client: CA address: %w", err)
	}
	if ip := net.ParseIP(host); ip != nil && (ip.IsLoopback() || ip.IsUnspecified()) {
		return "localhost", nil
	}
	return host, nil
}

// service returns the stub to call, redialling if the client certificate
// changed since the connection was made.
func (c *Client) service() (pb.IstioCertificateServiceClient, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	redial := false
	if c.cfg.LoadRoots != nil {
		// A bundle that cannot be read now keeps the one in use.
		if b, err := c.cfg.LoadRoots(); err == nil && !bytes.Equal(b, c.rootsPEM) {
			if pool, err := poolFromPEM(b); err == nil {
				c.cfg.Roots, c.rootsPEM, redial = pool, b, true
			}
		}
	}
	if redial && c.cfg.ClientCertificate == nil {
		if err := c.dial(nil); err != nil {
			return nil, err
		}
	}
	if c.cfg.ClientCertificate != nil {
		cert, err := c.cfg.ClientCertificate()
		if err != nil {
			return nil, fmt.Errorf("client: client certificate: %w", err)
		}
		var leaf []byte
		if cert != nil && len(cert.Certificate) > 0 {
			leaf = cert.Certificate[0]
		}
		if redial || !bytes.Equal(leaf, c.dialedWith) {
			if err := c.dial(cert); err != nil {
				return nil, err
			}
		}
	}
	return c.svc, nil
}

// Sign sends csrPEM and returns the chain, leaf first and root last. token,
// if not empty, is sent as "authorization: Bearer <token>". ttl 0 asks for
// the CA's default lifetime.
func (c *Client) Sign(ctx context.Context, csrPEM []byte, ttl time.Duration, token string) ([]string, error) {
	if token != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
	}
	svc, err := c.service()
	if err != nil {
		return nil, err
	}
	resp, err := svc.CreateCertificate(ctx, &pb.IstioCertificateRequest{
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
func (c *Client) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.conn.Close()
}

// RetryDelay returns the wait a CA asked for in err, a call it shed with
// ResourceExhausted or Unavailable and a google.rpc.RetryInfo detail, and
// whether there was one. Callers should wait at least that long, spread by
// jitter so that the callers turned away together do not return together.
func RetryDelay(err error) (time.Duration, bool) {
	st, ok := status.FromError(err)
	if !ok || (st.Code() != codes.ResourceExhausted && st.Code() != codes.Unavailable) {
		return 0, false
	}
	for _, d := range st.Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok && ri.GetRetryDelay().IsValid() {
			if delay := ri.GetRetryDelay().AsDuration(); delay > 0 {
				return min(delay, maxRetryDelay), true
			}
		}
	}
	return 0, false
}

// maxRetryDelay caps what RetryDelay believes of a CA: an agent whose
// certificate is running out must not be told to stay away for days.
const maxRetryDelay = 5 * time.Minute
