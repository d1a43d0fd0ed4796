package plane

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"net/http"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc/codes"

	"github.com/meshca/meshca/attestor"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/ca/store"
	"github.com/meshca/meshca/internal/audit"
	"github.com/meshca/meshca/internal/testca"
)

// TestIstioCACertsDirectModeEndToEnd runs a plane on a cacerts directory as
// Istio's tooling makes it (ca-cert.pem with pathlen:0): ca-cert.pem's key
// signs the leaves, with no meshca intermediate, and everything downstream
// works on that chain: the CA's own TLS certificate (the clients verify it
// against root-cert.pem), go-spiffe's x509svid.Verify of each issued chain,
// a TLS handshake between two workloads, renewal over mTLS, revocation,
// `meshca audit`'s check, /readyz, and the renewal of a certificate istiod
// issued under the same cacerts before the migration.
func TestIstioCACertsDirectModeEndToEnd(t *testing.T) {
	ctx := context.Background()
	c := testca.NewIstioCACerts(t, testca.IstioOptions{})
	cacerts := t.TempDir()
	c.Write(t, cacerts)
	parent, err := ca.LoadCACerts(cacerts, time.Now(), ca.CACertsOptions{})
	if err != nil {
		t.Fatal(err)
	}
	web := spiffeid.RequireFromPath(td, "/ns/shop/sa/web")
	db := spiffeid.RequireFromPath(td, "/ns/shop/sa/db")
	tokens := attestor.NewStaticTokens(map[string]spiffeid.ID{"web-token": web, "db-token": db})
	p, err := Start(ctx, Config{TrustDomain: td, DataDir: t.TempDir(), Parent: parent,
		GRPCAddr: "127.0.0.1:0", MonitorAddr: "127.0.0.1:0", Kubernetes: Kubernetes{Deny: []string{}}, Extra: []attestor.Attestor{tokens}})
	if err != nil {
		t.Fatal(err)
	}
	stop := sync.OnceFunc(func() { p.Stop() })
	t.Cleanup(stop)
	bundle := p.Authority().Bundle()
	if roots := bundle.X509Authorities(); len(roots) != 1 || !roots[0].Equal(c.Root) {
		t.Fatal("the bundle is not root-cert.pem")
	}

	// Both workloads through the gRPC API, whose TLS certificate the
	// client verifies against root-cert.pem (sign does).
	webSVID, err := sign(t, p, web, "web-token", nil)
	if err != nil {
		t.Fatal(err)
	}
	dbSVID, err := sign(t, p, db, "db-token", nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []*svid{webSVID, dbSVID} {
		chain := certsOf(t, s)
		if len(chain) != 2 || !chain[1].Equal(c.CACert) {
			t.Fatalf("presented chain has %d certificates, want leaf, ca-cert", len(chain))
		}
		if _, _, err := x509svid.Verify(chain, bundle); err != nil {
			t.Fatalf("x509svid.Verify: %v", err)
		}
	}
	handshake(t, webSVID, web, dbSVID, db, bundle)

	// Renewal over mTLS with the certificate ca-cert.pem signed.
	renewed, err := sign(t, p, web, "", webSVID)
	if err != nil {
		t.Fatalf("renewal over mTLS: %v", err)
	}
	if _, _, err := x509svid.Verify(certsOf(t, renewed), bundle); err != nil {
		t.Fatal(err)
	}

	// A certificate istiod issued with the same ca-cert.pem before the
	// migration renews at meshca over mTLS, and meshca audit verifies it.
	istiod := istiodLeaf(t, c, db)
	if r := audit.Cert("istiod", certsOf(t, istiod), time.Now(), audit.CertOptions{Bundle: bundle}); r.Verified == nil || !*r.Verified {
		t.Fatalf("meshca audit on istiod's certificate: %+v", r)
	}
	if _, err := sign(t, p, db, "", istiod); err != nil {
		t.Fatalf("renewal of istiod's certificate: %v", err)
	}

	// Revocation: the revoked certificate may not renew.
	if _, err := p.Authority().Revoke(ctx, store.Revocation{Serial: dbSVID.Leaf.SerialNumber.Text(16), Reason: "test"}); err != nil {
		t.Fatal(err)
	}
	_, err = sign(t, p, db, "", dbSVID)
	wantCode(t, "renewal of a revoked certificate", err, codes.PermissionDenied, "revoked")

	resp, err := http.Get("http://" + p.Addr("monitor").String() + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || string(body) != "ok\n" {
		t.Errorf("/readyz = %d %q", resp.StatusCode, body)
	}

	// A restart on the same data directory and cacerts is the same CA.
	stop()
	p2, err := Start(ctx, Config{TrustDomain: td, DataDir: p.Config().DataDir, Parent: parent, GRPCAddr: "127.0.0.1:0", Extra: []attestor.Attestor{tokens}})
	if err != nil {
		t.Fatal(err)
	}
	defer p2.Stop()
	if _, err := sign(t, p2, web, "", renewed); err != nil {
		t.Fatalf("renewal after a restart: %v", err)
	}
}

// certsOf parses an SVID's chain as presented (leaf, ca-cert).
func certsOf(t *testing.T, s *svid) []*x509.Certificate {
	t.Helper()
	var out []*x509.Certificate
	for _, der := range s.Certificate {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, c)
	}
	return out
}

// handshake runs mutual TLS between two workloads with go-spiffe's
// configurations, each side authorizing the other's SPIFFE ID.
func handshake(t *testing.T, server *svid, serverID spiffeid.ID, client *svid, clientID spiffeid.ID, bundle x509bundle.Source) {
	t.Helper()
	sConn, cConn := net.Pipe()
	defer sConn.Close()
	defer cConn.Close()
	srv := tls.Server(sConn, tlsconfig.MTLSServerConfig(toSVID(t, server, serverID), bundle, tlsconfig.AuthorizeID(clientID)))
	cli := tls.Client(cConn, tlsconfig.MTLSClientConfig(toSVID(t, client, clientID), bundle, tlsconfig.AuthorizeID(serverID)))
	errc := make(chan error, 1)
	go func() { errc <- srv.Handshake() }()
	if err := cli.Handshake(); err != nil {
		t.Fatalf("client handshake: %v", err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("server handshake: %v", err)
	}
	if got := cli.ConnectionState().PeerCertificates; len(got) != 2 || got[1].Subject.CommonName != "Intermediate CA" {
		t.Errorf("server presented %d certificates, want leaf and ca-cert", len(got))
	}
}

// toSVID turns a workload's TLS certificate into a go-spiffe SVID source.
func toSVID(t *testing.T, s *svid, id spiffeid.ID) *x509svid.SVID {
	t.Helper()
	return &x509svid.SVID{ID: id, Certificates: certsOf(t, s), PrivateKey: s.PrivateKey.(crypto.Signer)}
}

// istiodLeaf is a workload certificate for id as istiod signs it with a
// plug-in ca-cert.pem, presented with ca-cert as istio-agent does.
func istiodLeaf(t *testing.T, c *testca.IstioCACerts, id spiffeid.ID) *svid {
	t.Helper()
	key := testca.NewKey(t)
	now := time.Now()
	leaf := testca.Sign(t, &x509.Certificate{
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		URIs:                  []*url.URL{id.URL()},
	}, c.CACert, key.Public(), c.CAKey)
	return &svid{Certificate: [][]byte{leaf.Raw, c.CACert.Raw}, PrivateKey: key, Leaf: leaf}
}
