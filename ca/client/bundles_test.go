package client_test

import (
	"context"
	"crypto/x509"
	"fmt"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	workloadpb "github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"

	"github.com/meshca/meshca/ca/client"
	"github.com/meshca/meshca/internal/testca"
)

// fakeBundles answers the bundle service's FetchX509Bundles and the JWT
// service's FetchJWTBundle with fixed maps, as a CA would.
type fakeBundles struct {
	x509s, jwts map[string][]byte
}

// register adds f's two methods to g under the CA's service names.
func (f *fakeBundles) register(g *grpc.Server) {
	answer(g, "meshca.ca.v1.BundleService", "FetchX509Bundles", func() any { return &workloadpb.X509BundlesRequest{} },
		&workloadpb.X509BundlesResponse{Bundles: f.x509s})
	answer(g, "meshca.ca.v1.JWTService", "FetchJWTBundle", func() any { return &workloadpb.JWTBundlesRequest{} },
		&workloadpb.JWTBundlesResponse{Bundles: f.jwts})
}

// answer registers service with one unary method on g that answers resp
// to every request (decoded into newReq()).
func answer(g *grpc.Server, service, method string, newReq func() any, resp any) {
	g.RegisterService(&grpc.ServiceDesc{ServiceName: service, HandlerType: (*any)(nil), Methods: []grpc.MethodDesc{{MethodName: method,
		Handler: func(_ any, _ context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
			if err := dec(newReq()); err != nil {
				return nil, err
			}
			return resp, nil
		}}}}, struct{}{})
}

// TestFederatedBundles: what the client takes from the CA's answers (each
// foreign trust domain's X.509 and JWT authorities, never its own trust
// domain's), and the answers it refuses, each with the reason.
func TestFederatedBundles(t *testing.T) {
	ca := testca.New(t)
	roots := x509.NewCertPool()
	roots.AddCert(ca.Root)
	own := spiffeid.RequireTrustDomainFromString("a.test")
	partner := spiffeid.RequireTrustDomainFromString("b.test")
	partnerCA := testca.New(t)
	jwks := func(td spiffeid.TrustDomain) []byte {
		b := jwtbundle.New(td)
		if err := b.AddJWTAuthority("kid-"+td.Name(), partnerCA.InterKey.Public()); err != nil {
			t.Fatal(err)
		}
		doc, err := b.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		return doc
	}
	many := map[string][]byte{}
	for i := range 1025 {
		many[fmt.Sprintf("spiffe://td%d.test", i)] = partnerCA.Root.Raw
	}
	tests := []struct {
		name        string
		x509s, jwts map[string][]byte
		wantJWT     bool // partner's bundle carries its JWT key
		wantNone    bool
		wantErr     string
	}{
		{name: "a partner with JWT authorities",
			x509s: map[string][]byte{own.IDString(): ca.Root.Raw, partner.IDString(): partnerCA.Root.Raw},
			jwts:  map[string][]byte{own.IDString(): jwks(own), partner.IDString(): jwks(partner)}, wantJWT: true},
		{name: "a partner without JWT authorities",
			x509s: map[string][]byte{partner.IDString(): partnerCA.Root.Raw}, jwts: map[string][]byte{own.IDString(): jwks(own)}},
		{name: "our own trust domain only", x509s: map[string][]byte{own.IDString(): ca.Root.Raw}, wantNone: true},
		{name: "a JWT bundle without X.509 authorities is left out",
			x509s: map[string][]byte{partner.IDString(): partnerCA.Root.Raw}, jwts: map[string][]byte{"spiffe://c.test": jwks(spiffeid.RequireTrustDomainFromString("c.test"))}},
		{name: "a bad trust domain", x509s: map[string][]byte{"spiffe://B_Bad!": partnerCA.Root.Raw}, wantErr: `answered a bundle for "spiffe://B_Bad!"`},
		{name: "bad DER", x509s: map[string][]byte{partner.IDString(): []byte("not DER")}, wantErr: "bad X.509 bundle for b.test"},
		{name: "no certificate", x509s: map[string][]byte{partner.IDString(): nil}, wantErr: "no X.509 authority for b.test"},
		{name: "a bad JWT bundle", x509s: map[string][]byte{partner.IDString(): partnerCA.Root.Raw},
			jwts: map[string][]byte{partner.IDString(): []byte(`{"keys": [`)}, wantErr: "bad JWT bundle for b.test"},
		{name: "too many trust domains", x509s: many, wantErr: "over the limit of 1024"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			addr := serveGRPC(t, ca, (&fakeBundles{x509s: tt.x509s, jwts: tt.jwts}).register)
			c, err := client.New(client.Config{Addr: addr, Roots: roots})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			got, err := c.FederatedBundles(t.Context(), own)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("FederatedBundles error = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tt.wantNone {
				if len(got) != 0 {
					t.Fatalf("got %v, want no federated bundle", got)
				}
				return
			}
			b := got[partner]
			if len(got) != 1 || b == nil || b.TrustDomain() != partner || len(b.X509Authorities()) != 1 || !b.X509Authorities()[0].Equal(partnerCA.Root) {
				t.Fatalf("got %v, want b.test's root alone", got)
			}
			wantKeys := 0
			if tt.wantJWT {
				wantKeys = 1
			}
			if _, ok := b.FindJWTAuthority("kid-b.test"); ok != tt.wantJWT || len(b.JWTAuthorities()) != wantKeys {
				t.Fatalf("b.test's JWT authorities %v, want its key: %v", b.JWTAuthorities(), tt.wantJWT)
			}
		})
	}
}
