package client

import (
	"context"
	"errors"
	"fmt"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	workloadpb "github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/metadata"
)

// jwtService is the CA's JWT-SVID service (ca/server.JWTServiceName),
// whose messages are the Workload API's.
const jwtService = "meshca.ca.v1.JWTService"

// MintJWTSVID asks the CA for a JWT-SVID with the audiences given, for the
// identity the client's credential proves: token, if not empty, as
// "authorization: Bearer <token>", else the client certificate
// (Config.ClientCertificate). It returns the token; its lifetime is the
// CA's default for JWT-SVIDs, or the one ctx's outgoing metadata asks for
// under "meshca-jwt-ttl" (ca/server.JWTTTLMetadata).
func (c *Client) MintJWTSVID(ctx context.Context, audiences []string, token string) (string, error) {
	if token != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
	}
	var resp workloadpb.JWTSVIDResponse
	if err := c.invoke(ctx, jwtService, "MintJWTSVID", &workloadpb.JWTSVIDRequest{Audience: audiences}, &resp); err != nil {
		return "", err
	}
	if len(resp.GetSvids()) != 1 || resp.GetSvids()[0].GetSvid() == "" {
		return "", errors.New("client: CA returned no JWT-SVID")
	}
	return resp.GetSvids()[0].GetSvid(), nil
}

// JWTBundle fetches the JWT bundle of the trust domain td from the CA.
func (c *Client) JWTBundle(ctx context.Context, td spiffeid.TrustDomain) (*jwtbundle.Bundle, error) {
	var resp workloadpb.JWTBundlesResponse
	if err := c.invoke(ctx, jwtService, "FetchJWTBundle", &workloadpb.JWTBundlesRequest{}, &resp); err != nil {
		return nil, err
	}
	raw, ok := resp.GetBundles()[td.IDString()]
	if !ok {
		return nil, fmt.Errorf("client: CA returned no JWT bundle for %q", td.Name())
	}
	b, err := jwtbundle.Parse(td, raw)
	if err != nil {
		return nil, fmt.Errorf("client: JWT bundle: %w", err)
	}
	return b, nil
}

// invoke calls method of service (the JWT or the bundle service) on the
// current connection.
func (c *Client) invoke(ctx context.Context, service, method string, in, out any) error {
	if _, err := c.service(); err != nil {
		return err
	}
	c.mu.Lock()
	conn := c.conn
	c.mu.Unlock()
	return conn.Invoke(ctx, "/"+service+"/"+method, in, out)
}
