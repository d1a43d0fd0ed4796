// Package floor is the benchmark's floor server: Istio's CSR API
// (istio.v1.auth.IstioCertificateService/CreateCertificate) doing only
// what any CA must do for one CSR — parse the PEM CSR, check its signature,
// x509.CreateCertificate with the intermediate, return the chain — after the
// cheapest credential check there is: the client certificate verified at the
// TLS handshake (mTLS), or a Kubernetes ServiceAccount token verified
// offline against the API server's JWKS. No record, no policy, no logs.
// Every other server is measured against it.
package floor

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	pb "istio.io/api/security/v1alpha1"

	"github.com/meshca/meshca/tools/bench/internal/pki"
)

// DefaultTTL is the lifetime of a leaf whose request asks for none.
const DefaultTTL = 24 * time.Hour

// Authenticate turns the caller's credential into the SPIFFE ID to issue.
type Authenticate func(ctx context.Context) (*url.URL, error)

// Server is the floor's CSR API.
type Server struct {
	pb.UnimplementedIstioCertificateServiceServer
	auth  Authenticate
	cert  *x509.Certificate
	key   crypto.Signer
	chain []string // intermediate, root (PEM)
}

// New loads the intermediate and its key from the CA directory dir.
func New(dir string, auth Authenticate) (*Server, error) {
	certPEM, err := os.ReadFile(filepath.Join(dir, pki.CACertFile))
	if err != nil {
		return nil, err
	}
	keyPEM, err := os.ReadFile(filepath.Join(dir, pki.CAKeyFile))
	if err != nil {
		return nil, err
	}
	rootPEM, err := os.ReadFile(filepath.Join(dir, pki.RootCertFile))
	if err != nil {
		return nil, err
	}
	cb, _ := pem.Decode(certPEM)
	kb, _ := pem.Decode(keyPEM)
	if cb == nil || kb == nil {
		return nil, errors.New("floor: CA files are not PEM")
	}
	cert, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		return nil, err
	}
	k, err := x509.ParsePKCS8PrivateKey(kb.Bytes)
	if err != nil {
		return nil, err
	}
	key, ok := k.(crypto.Signer)
	if !ok {
		return nil, errors.New("floor: CA key cannot sign")
	}
	return &Server{auth: auth, cert: cert, key: key, chain: []string{string(certPEM), string(rootPEM)}}, nil
}

// CreateCertificate authenticates the caller and signs its CSR.
func (s *Server) CreateCertificate(ctx context.Context, req *pb.IstioCertificateRequest) (*pb.IstioCertificateResponse, error) {
	id, err := s.auth(ctx)
	if err != nil {
		return nil, status.Error(codes.Unauthenticated, err.Error())
	}
	ttl := DefaultTTL
	if req.GetValidityDuration() > 0 {
		ttl = time.Duration(req.GetValidityDuration()) * time.Second
	}
	leaf, err := s.sign([]byte(req.GetCsr()), id, ttl)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	return &pb.IstioCertificateResponse{CertChain: append([]string{leaf}, s.chain...)}, nil
}

// sign is the floor itself: parse, check the CSR's signature, issue.
func (s *Server) sign(csrPEM []byte, id *url.URL, ttl time.Duration) (string, error) {
	b, _ := pem.Decode(csrPEM)
	if b == nil || b.Type != "CERTIFICATE REQUEST" {
		return "", errors.New("floor: CSR is not PEM")
	}
	csr, err := x509.ParseCertificateRequest(b.Bytes)
	if err != nil {
		return "", fmt.Errorf("floor: %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return "", fmt.Errorf("floor: %w", err)
	}
	var rnd [16]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return "", err
	}
	rnd[0] &= 0x7f // positive, 127 random bits
	now := time.Now()
	der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber:          new(big.Int).SetBytes(rnd[:]),
		NotBefore:             now,
		NotAfter:              now.Add(ttl),
		URIs:                  []*url.URL{id},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}, s.cert, csr.PublicKey, s.key)
	if err != nil {
		return "", fmt.Errorf("floor: %w", err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})), nil
}

// ClientCert is the mTLS credential: the one URI SAN of the leaf the TLS
// handshake verified, with no further check.
func ClientCert(ctx context.Context) (*url.URL, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return nil, errors.New("no peer")
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(info.State.VerifiedChains) == 0 || len(info.State.VerifiedChains[0]) == 0 {
		return nil, errors.New("no verified client certificate")
	}
	uris := info.State.VerifiedChains[0][0].URIs
	if len(uris) != 1 {
		return nil, errors.New("client certificate must carry one URI SAN")
	}
	return uris[0], nil
}

// Token is the Kubernetes credential: the bearer token verified offline by
// v, turned into spiffe://<trustDomain>/ns/<ns>/sa/<sa>.
func Token(v *Verifier, trustDomain string) Authenticate {
	return func(ctx context.Context) (*url.URL, error) {
		md, _ := metadata.FromIncomingContext(ctx)
		auth := md.Get("authorization")
		if len(auth) != 1 {
			return nil, errors.New("one authorization header required")
		}
		tok, ok := strings.CutPrefix(auth[0], "Bearer ")
		if !ok {
			return nil, errors.New("not a bearer token")
		}
		ns, sa, err := v.Verify(tok)
		if err != nil {
			return nil, err
		}
		return &url.URL{Scheme: "spiffe", Host: trustDomain, Path: "/ns/" + ns + "/sa/" + sa}, nil
	}
}
