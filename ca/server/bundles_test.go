package server_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"path/filepath"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	workloadpb "github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/meshca/meshca/ca/server"
	"github.com/meshca/meshca/internal/testca"
)

// staticFederation serves fixed federated bundles.
type staticFederation map[spiffeid.TrustDomain]*spiffebundle.Bundle

func (f staticFederation) Bundles() map[spiffeid.TrustDomain]*spiffebundle.Bundle { return f }

// TestBundleServiceNeverAnswersAForeignRootAsOurs: whatever the federation
// holds, FetchX509Bundles and FetchJWTBundle answer the CA's own trust
// domain with the CA's own authorities, never a federated bundle keyed by
// it or made for it; the other federated trust domains are answered.
func TestBundleServiceNeverAnswersAForeignRootAsOurs(t *testing.T) {
	foreign := testca.New(t)
	partner := spiffeid.RequireTrustDomainFromString("partner.example")
	liar := spiffeid.RequireTrustDomainFromString("liar.example")
	withJWT := func(b *spiffebundle.Bundle) *spiffebundle.Bundle {
		if err := b.AddJWTAuthority("foreign-kid", foreign.Root.PublicKey); err != nil {
			t.Fatal(err)
		}
		return b
	}
	cases := []struct {
		name string
		fed  staticFederation
		want []spiffeid.TrustDomain // federated trust domains answered
	}{
		{"a partner", staticFederation{partner: withJWT(spiffebundle.FromX509Authorities(partner, []*x509.Certificate{foreign.Root}))}, []spiffeid.TrustDomain{partner}},
		{"a bundle keyed by our trust domain", staticFederation{
			td:      withJWT(spiffebundle.FromX509Authorities(td, []*x509.Certificate{foreign.Root})),
			partner: withJWT(spiffebundle.FromX509Authorities(partner, []*x509.Certificate{foreign.Root})),
		}, []spiffeid.TrustDomain{partner}},
		{"a bundle of our trust domain under another key", staticFederation{
			liar: withJWT(spiffebundle.FromX509Authorities(td, []*x509.Certificate{foreign.Root})),
		}, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := startPlaneWith(t, filepath.Join(t.TempDir(), "meshca.db"), func(c *server.Config) { c.Federation = tc.fed })
			conn, err := grpc.NewClient(p.srv.Addr("grpc").String(), grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: p.roots(), ServerName: "localhost"})))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()

			var x509s workloadpb.X509BundlesResponse
			if err := conn.Invoke(ctx, "/"+server.BundleServiceName+"/FetchX509Bundles", &workloadpb.X509BundlesRequest{}, &x509s); err != nil {
				t.Fatal(err)
			}
			var ownDER []byte
			for _, r := range p.auth.Bundle().X509Authorities() {
				ownDER = append(ownDER, r.Raw...)
			}
			if !bytes.Equal(x509s.GetBundles()[td.IDString()], ownDER) {
				t.Errorf("FetchX509Bundles: our trust domain's bundle is not the CA's own roots")
			}
			var jwts workloadpb.JWTBundlesResponse
			if err := conn.Invoke(ctx, "/"+server.JWTServiceName+"/FetchJWTBundle", &workloadpb.JWTBundlesRequest{}, &jwts); err != nil {
				t.Fatal(err)
			}
			ownJWT, err := p.auth.JWTBundle().Marshal()
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(jwts.GetBundles()[td.IDString()], ownJWT) {
				t.Errorf("FetchJWTBundle: our trust domain's bundle is not the CA's own keys")
			}
			for name, got := range map[string]int{"FetchX509Bundles": len(x509s.GetBundles()), "FetchJWTBundle": len(jwts.GetBundles())} {
				if got != 1+len(tc.want) {
					t.Errorf("%s answered %d trust domains, want ours and %v", name, got, tc.want)
				}
			}
			for _, w := range tc.want {
				if len(x509s.GetBundles()[w.IDString()]) == 0 || len(jwts.GetBundles()[w.IDString()]) == 0 {
					t.Errorf("%s not answered", w.Name())
				}
			}
		})
	}
}
