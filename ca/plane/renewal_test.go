package plane

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"strings"
	"sync"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/meshca/meshca/attestor"
	"github.com/meshca/meshca/ca/client"
	"github.com/meshca/meshca/internal/testca"
)

var td = spiffeid.RequireTrustDomainFromString("example.org")

// startTest starts a plane on 127.0.0.1 with only the gRPC listener, in
// dataDir. The returned stop stops it once; it also runs when the test ends.
func startTest(t *testing.T, dataDir string, k Kubernetes, extra ...attestor.Attestor) (*Plane, func()) {
	t.Helper()
	p, err := Start(context.Background(), Config{TrustDomain: td, DataDir: dataDir, GRPCAddr: "127.0.0.1:0", Kubernetes: k, Extra: extra})
	if err != nil {
		t.Fatal(err)
	}
	stop := sync.OnceFunc(func() { p.Stop() })
	t.Cleanup(stop)
	return p, stop
}

// svid is a workload's current SVID: its chain as a TLS client
// certificate.
type svid = tls.Certificate

// sign asks p for an SVID for id, with token as the bearer credential
// (empty for none) and current as the TLS client certificate (nil for none).
func sign(t *testing.T, p *Plane, id spiffeid.ID, token string, current *svid) (*svid, error) {
	t.Helper()
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(p.Authority().RootsPEM())
	cfg := client.Config{Addr: p.Addr("grpc").String(), Roots: roots, ServerName: "localhost"}
	if current != nil {
		cfg.ClientCertificate = func() (*tls.Certificate, error) { return current, nil }
	}
	c, err := client.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	key, csr := testca.NewCSR(t, id)
	chain, err := c.Sign(context.Background(), csr, 0, token)
	if err != nil {
		return nil, err
	}
	return tlsCert(t, chain, key), nil
}

// tlsCert turns a PEM chain (leaf first, root last) and its key into a TLS
// client certificate.
func tlsCert(t *testing.T, chain []string, key crypto.Signer) *svid {
	t.Helper()
	c := &tls.Certificate{PrivateKey: key}
	for _, s := range chain[:len(chain)-1] {
		b, _ := pem.Decode([]byte(s))
		if b == nil {
			t.Fatalf("not PEM: %q", s)
		}
		c.Certificate = append(c.Certificate, b.Bytes)
	}
	leaf, err := x509.ParseCertificate(c.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	c.Leaf = leaf
	return c
}

func wantCode(t *testing.T, what string, err error, code codes.Code, msg string) {
	t.Helper()
	if got := status.Code(err); got != code || !strings.Contains(status.Convert(err).Message(), msg) {
		t.Fatalf("%s: %v, want %s containing %q", what, err, code, msg)
	}
}

// TestRenewalHonoursDenyList (finding 2): with Kubernetes attestation off,
// the allow and deny lists still apply when an SVID of the Kubernetes shape
// renews. The SVID was issued before its namespace was denied; renewal is
// refused, and an SVID of another shape renews as before.
func TestRenewalHonoursDenyList(t *testing.T) {
	dir := t.TempDir()
	denied := spiffeid.RequireFromPath(td, "/ns/denied/sa/x")
	vm := spiffeid.RequireFromPath(td, "/vm/web-1")
	tokens := attestor.NewStaticTokens(map[string]spiffeid.ID{"denied-token": denied, "vm-token": vm})

	p, stop := startTest(t, dir, Kubernetes{Deny: []string{}}, tokens)
	deniedSVID, err := sign(t, p, denied, "denied-token", nil)
	if err != nil {
		t.Fatal(err)
	}
	vmSVID, err := sign(t, p, vm, "vm-token", nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sign(t, p, denied, "", deniedSVID); err != nil {
		t.Fatalf("renewal before the namespace is denied: %v", err)
	}
	stop()

	p, stop = startTest(t, dir, Kubernetes{Deny: []string{"kube-system", "denied"}}, tokens)
	_, err = sign(t, p, denied, "", deniedSVID)
	wantCode(t, "renewal in a denied namespace", err, codes.PermissionDenied, "ServiceAccount denied/x may not get certificates")
	if _, err := sign(t, p, vm, "", vmSVID); err != nil {
		t.Fatalf("renewal of an identity of another shape: %v", err)
	}

	stop()
	p, _ = startTest(t, dir, Kubernetes{Allow: []string{"team-*"}, Deny: []string{}}, tokens)
	_, err = sign(t, p, denied, "", deniedSVID)
	wantCode(t, "renewal outside the allow list", err, codes.PermissionDenied, "may not get certificates")
}
