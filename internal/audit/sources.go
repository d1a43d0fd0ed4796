package audit

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// ChainFromFile reads the PEM certificates in a file, leaf first.
func ChainFromFile(path string) ([]*x509.Certificate, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return ParseChainPEM(b)
}

// ParseChainPEM parses every CERTIFICATE block, skipping other blocks; no
// certificate at all is an error.
func ParseChainPEM(b []byte) ([]*x509.Certificate, error) {
	var chain []*x509.Certificate
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, err
		}
		chain = append(chain, c)
	}
	if len(chain) == 0 {
		return nil, errors.New("no PEM certificates")
	}
	return chain, nil
}

// ChainFromSDS asks an agent's SDS socket for the "default" certificate, as
// Envoy would.
func ChainFromSDS(ctx context.Context, socket string) ([]*x509.Certificate, error) {
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	defer conn.Close()
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
			return ParseChainPEM(tc.GetCertificateChain().GetInlineBytes())
		}
	}
	return nil, errors.New("no \"default\" certificate served")
}

// ChainFromWorkloadAPI fetches the X509-SVID from a SPIFFE Workload API
// socket with go-spiffe's client.
func ChainFromWorkloadAPI(ctx context.Context, socket string) ([]*x509.Certificate, error) {
	svid, err := workloadapi.FetchX509SVID(ctx, workloadapi.WithAddr("unix://"+socket))
	if err != nil {
		return nil, err
	}
	return svid.Certificates, nil
}
