package client

import (
	"context"
	"crypto/x509"
	"fmt"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	workloadpb "github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// bundleService is the CA's bundle service (ca/server.BundleServiceName).
const bundleService = "meshca.ca.v1.BundleService"

// maxFederatedTrustDomains bounds the trust domains taken from one answer.
const maxFederatedTrustDomains = 1024

// FederatedBundles fetches from the CA the bundles of the trust domains it
// federates with, all but own's: each one's X.509 authorities (the bundle
// service's FetchX509Bundles) and JWT authorities (the JWT service's
// FetchJWTBundle). A CA without federation answers none; one older than
// the bundle service fails with Unimplemented. The calls carry no
// credential: bundles are public, and the TLS connection to the CA,
// verified with its roots, vouches for them.
func (c *Client) FederatedBundles(ctx context.Context, own spiffeid.TrustDomain) (map[spiffeid.TrustDomain]*spiffebundle.Bundle, error) {
	var x509s workloadpb.X509BundlesResponse
	if err := c.invoke(ctx, bundleService, "FetchX509Bundles", &workloadpb.X509BundlesRequest{}, &x509s); err != nil {
		return nil, err
	}
	if n := len(x509s.GetBundles()); n > maxFederatedTrustDomains {
		return nil, fmt.Errorf("client: CA answered %d trust domains' bundles, over the limit of %d", n, maxFederatedTrustDomains)
	}
	out := map[spiffeid.TrustDomain]*spiffebundle.Bundle{}
	for name, der := range x509s.GetBundles() {
		td, err := spiffeid.TrustDomainFromString(name)
		if err != nil {
			return nil, fmt.Errorf("client: CA answered a bundle for %q: %w", name, err)
		}
		if td == own {
			continue // the CA's own roots come with every SVID, checked against the trusted ones
		}
		certs, err := x509.ParseCertificates(der)
		switch {
		case err != nil:
			return nil, fmt.Errorf("client: CA answered a bad X.509 bundle for %s: %w", td.Name(), err)
		case len(certs) == 0:
			return nil, fmt.Errorf("client: CA answered no X.509 authority for %s", td.Name())
		}
		out[td] = spiffebundle.FromX509Authorities(td, certs)
	}
	if len(out) == 0 {
		return out, nil
	}
	var jwts workloadpb.JWTBundlesResponse
	if err := c.invoke(ctx, jwtService, "FetchJWTBundle", &workloadpb.JWTBundlesRequest{}, &jwts); err != nil {
		return nil, err
	}
	for name, raw := range jwts.GetBundles() {
		td, err := spiffeid.TrustDomainFromString(name)
		if err != nil {
			return nil, fmt.Errorf("client: CA answered a JWT bundle for %q: %w", name, err)
		}
		b, ok := out[td]
		if !ok {
			continue // our own, or a trust domain without X.509 authorities
		}
		jb, err := jwtbundle.Parse(td, raw)
		if err != nil {
			return nil, fmt.Errorf("client: CA answered a bad JWT bundle for %s: %w", td.Name(), err)
		}
		b.SetJWTAuthorities(jb.JWTAuthorities())
	}
	return out, nil
}
