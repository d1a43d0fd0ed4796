package audit

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/meshca/meshca/internal/pki"
)

// ChainFromFile reads the PEM certificates in a file, leaf first.
//
// Its errors, like those of ChainFromSDS and ChainFromWorkloadAPI, carry no
// "audit: " prefix: they are causes, which Source.Fetch reports inside its
// own errors.
func ChainFromFile(path string) ([]*x509.Certificate, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return pki.ParseCertificates(b)
}

// ChainFromSDS asks an agent's SDS socket for the "default" certificate, as
// Envoy would.
func ChainFromSDS(ctx context.Context, socket string) ([]*x509.Certificate, error) {
	target, err := unixTarget(socket)
	if err != nil {
		return nil, err
	}
	conn, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	defer func() { _ = conn.Close() }()
	resp, err := secretv3.NewSecretDiscoveryServiceClient(conn).FetchSecrets(ctx, &discovery.DiscoveryRequest{
		TypeUrl: "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret", ResourceNames: []string{"default"}})
	if err != nil {
		return nil, err
	}
	for _, res := range resp.GetResources() {
		var sec tlsv3.Secret
		if err := res.UnmarshalTo(&sec); err != nil {
			return nil, err
		}
		if tc := sec.GetTlsCertificate(); tc != nil {
			return pki.ParseCertificates(tc.GetCertificateChain().GetInlineBytes())
		}
	}
	return nil, errors.New("no \"default\" certificate served")
}

// ChainFromWorkloadAPI fetches the X509-SVID from a SPIFFE Workload API
// socket with go-spiffe's client.
func ChainFromWorkloadAPI(ctx context.Context, socket string) ([]*x509.Certificate, error) {
	target, err := unixTarget(socket)
	if err != nil {
		return nil, err
	}
	svid, err := workloadapi.FetchX509SVID(ctx, workloadapi.WithAddr(target))
	if err != nil {
		return nil, err
	}
	return svid.Certificates, nil
}

// unixTarget turns a socket path, relative or absolute, into a unix:// URI.
// The path is made absolute first: in "unix://" + a relative path such as
// ".meshca/sockets/sds.sock", gRPC and go-spiffe would read ".meshca" as
// the URI's authority and refuse it.
func unixTarget(socket string) (string, error) {
	abs, err := filepath.Abs(socket)
	if err != nil {
		return "", err
	}
	return "unix://" + abs, nil
}

// Source names where `meshca audit cert` reads a certificate: exactly one
// of File, SDS (an agent's SDS socket) and WorkloadAPI (a Workload API
// socket).
type Source struct {
	File, SDS, WorkloadAPI string
}

// Fetch reads the chain and names where it came from.
func (s Source) Fetch(ctx context.Context) (name string, chain []*x509.Certificate, err error) {
	n := 0
	for _, set := range []bool{s.File != "", s.SDS != "", s.WorkloadAPI != ""} {
		if set {
			n++
		}
	}
	if n != 1 {
		return "", nil, errors.New("audit: give exactly one of FILE, --sds or --workload-api")
	}
	switch {
	case s.File != "":
		name = s.File
		chain, err = ChainFromFile(s.File)
	case s.SDS != "":
		name = "sds:" + s.SDS
		chain, err = ChainFromSDS(ctx, s.SDS)
	default:
		name = "workload-api:" + s.WorkloadAPI
		chain, err = ChainFromWorkloadAPI(ctx, s.WorkloadAPI)
	}
	if err != nil {
		return name, nil, fmt.Errorf("audit: %s: %w", name, err)
	}
	return name, chain, nil
}

// LoadBundle reads a PEM trust bundle for trust domain td; "" takes the
// trust domain of leaf's SPIFFE ID.
func LoadBundle(path, td string, leaf *x509.Certificate) (*x509bundle.Bundle, error) {
	roots, err := ChainFromFile(path)
	if err != nil {
		return nil, fmt.Errorf("audit: --bundle: %w", err)
	}
	tdv := spiffeid.TrustDomain{}
	if td != "" {
		if tdv, err = spiffeid.TrustDomainFromString(td); err != nil {
			return nil, fmt.Errorf("audit: --trust-domain: %w", err)
		}
	} else if len(leaf.URIs) > 0 {
		if id, err := spiffeid.FromURI(leaf.URIs[0]); err == nil {
			tdv = id.TrustDomain()
		}
	}
	return x509bundle.FromX509Authorities(tdv, roots), nil
}
