package agent

import (
	"context"
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/meshca/meshca/attestor"
	"github.com/meshca/meshca/ca"
	cabundle "github.com/meshca/meshca/ca/bundle"
	"github.com/meshca/meshca/ca/client"
	"github.com/meshca/meshca/ca/plane"
	"github.com/meshca/meshca/internal/clock/clocktest"
	"github.com/meshca/meshca/internal/pki"
	"github.com/meshca/meshca/internal/testca"
	"github.com/meshca/meshca/sds/envoy"
)

// TestFederationEndToEnd: two CA planes on 127.0.0.1, a.test federating
// with b.test through b.test's SPIFFE bundle endpoint (https_spiffe,
// bootstrapped from b.test's bundle). a.test's agent serves b.test's
// bundle in the Workload API's federated bundles (go-spiffe's client) and
// over SDS with the SPIFFE validator ("ALL" and "spiffe://b.test", as a
// go-control-plane client sees them, Envoy's validation passing); a
// workload certificate b.test issues verifies by what the agent serves for
// b.test, and not by what it serves for a.test; a root rotation in b.test
// reaches the agent's open streams.
//
// The planes and the agent run on the wall clock with second-scale
// refreshes (a one-second refresh hint, a 100 ms agent refresh): the test
// waits for each event, it never sleeps. The fetcher's timing is tested on
// a fake clock in ca/federation.
func TestFederationEndToEnd(t *testing.T) {
	dir, err := os.MkdirTemp("", "fed")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	tdB := spiffeid.RequireTrustDomainFromString("b.test")

	// b.test: a CA with its bundle endpoint.
	pb, err := plane.Start(ctx, plane.Config{TrustDomain: tdB, DataDir: filepath.Join(dir, "b"),
		Bundles: cabundle.Config{EndpointAddr: "127.0.0.1:0", RefreshHint: time.Second}})
	if err != nil {
		t.Fatal(err)
	}
	defer pb.Stop()
	bootstrap, err := spiffebundle.FromX509Authorities(tdB, pb.Authority().Bundle().X509Authorities()).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	bootstrapFile := filepath.Join(dir, "b.json")
	fedFile := filepath.Join(dir, "federation.yaml")
	writeTestFile(t, bootstrapFile, bootstrap)
	writeTestFile(t, fedFile, fmt.Appendf(nil, `trust_domains:
- trust_domain: b.test
  bundle_endpoint_url: https://%s/
  bundle_endpoint_profile: https_spiffe
  endpoint_spiffe_id: spiffe://b.test/meshca/bundle-endpoint
  bundle_file: %s
`, pb.Addr("bundle-endpoint"), bootstrapFile))

	// a.test: a CA federating with b.test, and its agent.
	id := spiffeid.RequireFromString("spiffe://a.test/ns/web/sa/frontend")
	pa, err := plane.Start(ctx, plane.Config{TrustDomain: spiffeid.RequireTrustDomainFromString("a.test"), DataDir: filepath.Join(dir, "a"),
		GRPCAddr: "127.0.0.1:0", Extra: []attestor.Attestor{attestor.NewStaticTokens(map[string]spiffeid.ID{"web-token": id})},
		Federation: plane.Federation{ConfigFile: fedFile, MinRefresh: 100 * time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	defer pa.Stop()
	tokenFile := filepath.Join(dir, "token")
	writeTestFile(t, tokenFile, []byte("web-token"))
	cfg := Config{ID: id, CAAddr: pa.Addr("grpc").String(), CARootsFile: pa.Config().BundlePath(), TokenFile: tokenFile,
		SDSSocket: filepath.Join(dir, "sds.sock"), WorkloadSocket: filepath.Join(dir, "wl.sock"), SDSSPIFFEValidator: true,
		FederationRefresh: 100 * time.Millisecond}
	a, err := Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Stop()

	// The Workload API: b.test's bundle among the SVID's federated ones
	// (go-spiffe reads them from X509SVIDResponse.federated_bundles), and
	// in FetchX509Bundles. (Each read is a new call: go-spiffe's
	// X509Source reads its bundles unlocked while its watcher updates
	// them.)
	wc, err := workloadapi.New(ctx, workloadapi.WithAddr("unix://"+cfg.WorkloadSocket))
	if err != nil {
		t.Fatal(err)
	}
	defer wc.Close()
	bRoots := func() []*x509.Certificate { return pb.Authority().Bundle().X509Authorities() }
	var src *x509bundle.Set // the bundles of the last X509SVIDResponse
	servedFor := func(td spiffeid.TrustDomain) []*x509.Certificate {
		x, err := wc.FetchX509Context(ctx)
		if err != nil {
			t.Fatalf("FetchX509SVID: %v", err)
		}
		if svid := x.DefaultSVID(); svid.ID != id {
			t.Fatalf("Workload API SVID %s, want %s", svid.ID, id)
		}
		src = x.Bundles
		if b, ok := src.Get(td); ok {
			return b.X509Authorities()
		}
		return nil
	}
	clocktest.Eventually(t, "b.test's bundle in the Workload API", func() bool { return sameCerts(servedFor(tdB), bRoots()) })
	if bundles, err := wc.FetchX509Bundles(ctx); err != nil {
		t.Fatal(err)
	} else if b, ok := bundles.Get(tdB); bundles.Len() != 2 || !ok || !sameCerts(b.X509Authorities(), bRoots()) {
		t.Fatalf("FetchX509Bundles: %d bundles, want a.test's and b.test's", bundles.Len())
	}
	// b.test's JWT authorities come with its fetched bundle (not with the
	// bootstrap file, X.509 only, which a.test serves until the first
	// fetch): FetchJWTBundles serves them beside a.test's.
	bJWT := pb.Authority().JWTBundle()
	if len(bJWT.JWTAuthorities()) == 0 {
		t.Fatal("b.test publishes no JWT authority")
	}
	clocktest.Eventually(t, "b.test's JWT authorities in the Workload API", func() bool {
		jwts, err := wc.FetchJWTBundles(ctx)
		if err != nil {
			t.Fatal(err)
		}
		b, ok := jwts.Get(tdB)
		return jwts.Len() == 2 && ok && b.Equal(bJWT)
	})

	// A workload of b.test verifies by b.test's bundle as served, and not
	// by a.test's.
	bSVID := issue(t, pb, spiffeid.RequireFromString("spiffe://b.test/ns/api/sa/server"))
	if _, _, err := x509svid.Verify(bSVID, src); err != nil {
		t.Fatalf("b.test's workload does not verify by the bundles the agent serves: %v", err)
	}
	if _, _, err := x509svid.Verify(bSVID, x509bundle.FromX509Authorities(tdB, servedFor(id.TrustDomain()))); err == nil {
		t.Fatal("b.test's workload verified by a.test's roots")
	}

	// SDS: ALL holds both trust domains, spiffe://b.test only b.test's,
	// ROOTCA only a.test's.
	names := []string{envoy.AllName, "spiffe://b.test", envoy.RootCAName}
	want := map[string][]string{envoy.AllName: {"a.test", "b.test"}, "spiffe://b.test": {"b.test"}, envoy.RootCAName: {"a.test"}}
	s := openSDS(ctx, t, cfg.SDSSocket, names)
	got := s.until(t, func(got map[string]*validator) bool { return len(got) == len(names) })
	for name, tds := range want {
		if !slices.Equal(got[name].tds(), tds) {
			t.Errorf("%s holds trust domains %v, want %v", name, got[name].tds(), tds)
		}
	}
	for _, name := range []string{envoy.AllName, "spiffe://b.test"} {
		if _, _, err := x509svid.Verify(bSVID, got[name].bundles); err != nil {
			t.Errorf("%s does not verify b.test's workload: %v", name, err)
		}
	}
	if _, _, err := x509svid.Verify(bSVID, got[envoy.RootCAName].bundles); err == nil {
		t.Error("ROOTCA verifies b.test's workload")
	}

	// b.test starts a root rotation: its new root reaches the open
	// streams.
	if _, err := pb.Authority().RotateRoot(ctx, ca.RootRotationRequest{Action: ca.RootRotationStart}); err != nil {
		t.Fatal(err)
	}
	if len(bRoots()) != 2 {
		t.Fatalf("b.test's bundle holds %d roots during the rotation, want 2", len(bRoots()))
	}
	got = s.until(t, func(got map[string]*validator) bool {
		b, err := got["spiffe://b.test"].bundles.GetX509BundleForTrustDomain(tdB)
		return err == nil && sameCerts(b.X509Authorities(), bRoots())
	})
	if b, err := got[envoy.AllName].bundles.GetX509BundleForTrustDomain(tdB); err != nil || !sameCerts(b.X509Authorities(), bRoots()) {
		t.Errorf("ALL's b.test bundle after the rotation: %v", err)
	}
	clocktest.Eventually(t, "b.test's new root in the Workload API", func() bool { return sameCerts(servedFor(tdB), bRoots()) })

	// meshca ca status shows the federated trust domain.
	st, err := pa.Authority().Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Federation) != 1 || st.Federation[0].TrustDomain != "b.test" || st.Federation[0].Source != "endpoint" ||
		len(st.Federation[0].X509Authorities) != 2 || st.Federation[0].Sequence == 0 {
		t.Errorf("status of the federation: %+v", st.Federation)
	}
}

// TestFederatedBundlesWithoutFederation: a CA that federates with no one
// answers no federated bundles, and no error.
func TestFederatedBundlesWithoutFederation(t *testing.T) {
	f := newCAFixture(t)
	c, err := client.New(client.Config{Addr: f.p.Addr("grpc").String(), LoadRoots: func() ([]byte, error) {
		return os.ReadFile(f.p.Config().BundlePath())
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	got, err := c.FederatedBundles(t.Context(), f.id.TrustDomain())
	if err != nil || len(got) != 0 {
		t.Fatalf("FederatedBundles = %v, %v; want none", got, err)
	}
}

func writeTestFile(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// issue has p sign an X509-SVID for id, and returns leaf and intermediates.
func issue(t *testing.T, p *plane.Plane, id spiffeid.ID) []*x509.Certificate {
	t.Helper()
	_, csr := testca.NewCSR(t, id)
	iss, err := p.Authority().Sign(t.Context(), ca.SignRequest{CSR: csr, Identity: attestor.Identity{ID: id, Kind: "test"}})
	if err != nil {
		t.Fatal(err)
	}
	var chain []*x509.Certificate
	for _, c := range iss.ChainPEM[:len(iss.ChainPEM)-1] { // the last element is the bundle
		cert, err := pki.ParseCertificate(c)
		if err != nil {
			t.Fatal(err)
		}
		chain = append(chain, cert)
	}
	return chain
}

func sameCerts(a, b []*x509.Certificate) bool {
	return len(a) > 0 && len(a) == len(b) && !slices.ContainsFunc(a, func(c *x509.Certificate) bool { return !slices.ContainsFunc(b, c.Equal) })
}

// sdsStream is an SDS stream as Envoy holds it: it asks for names and ACKs
// every response.
type sdsStream struct {
	st    grpc.BidiStreamingClient[discovery.DiscoveryRequest, discovery.DiscoveryResponse]
	names []string
	got   map[string]*validator
}

// validator is a SPIFFE validator config as served.
type validator struct {
	bundles *x509bundle.Set
	names   []string
}

func (v *validator) tds() []string {
	if v == nil {
		return nil
	}
	return v.names
}

func openSDS(ctx context.Context, t *testing.T, sock string, names []string) *sdsStream {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	st, err := secretv3.NewSecretDiscoveryServiceClient(conn).StreamSecrets(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(&discovery.DiscoveryRequest{TypeUrl: resource.SecretType, ResourceNames: names}); err != nil {
		t.Fatal(err)
	}
	return &sdsStream{st: st, names: names, got: map[string]*validator{}}
}

// until reads and ACKs responses until what was served satisfies cond,
// checking every secret with Envoy's validation.
func (s *sdsStream) until(t *testing.T, cond func(map[string]*validator) bool) map[string]*validator {
	t.Helper()
	for !cond(s.got) {
		resp, err := s.st.Recv()
		if err != nil {
			t.Fatalf("SDS stream: %v", err)
		}
		for _, r := range resp.GetResources() {
			var sec tlsv3.Secret
			if err := r.UnmarshalTo(&sec); err != nil {
				t.Fatal(err)
			}
			s.got[sec.GetName()] = spiffeValidator(t, &sec)
		}
		if err := s.st.Send(&discovery.DiscoveryRequest{TypeUrl: resource.SecretType, ResourceNames: s.names,
			VersionInfo: resp.GetVersionInfo(), ResponseNonce: resp.GetNonce()}); err != nil {
			t.Fatal(err)
		}
	}
	return s.got
}

// spiffeValidator checks sec with Envoy's validation and returns its
// SPIFFE validator config's bundles.
func spiffeValidator(t *testing.T, sec *tlsv3.Secret) *validator {
	t.Helper()
	if err := sec.ValidateAll(); err != nil {
		t.Fatalf("%s fails Envoy's validation: %v", sec.GetName(), err)
	}
	cv := sec.GetValidationContext().GetCustomValidatorConfig()
	if cv.GetName() != envoy.SPIFFEValidatorName {
		t.Fatalf("%s: validator %q", sec.GetName(), cv.GetName())
	}
	var cfg tlsv3.SPIFFECertValidatorConfig
	if err := cv.GetTypedConfig().UnmarshalTo(&cfg); err != nil {
		t.Fatal(err)
	}
	if err := cfg.ValidateAll(); err != nil {
		t.Fatalf("%s: SPIFFE validator config fails Envoy's validation: %v", sec.GetName(), err)
	}
	v := &validator{bundles: x509bundle.NewSet()}
	for _, e := range cfg.GetTrustDomains() {
		roots, err := pki.ParseCertificates(e.GetTrustBundle().GetInlineBytes())
		if err != nil {
			t.Fatal(err)
		}
		v.bundles.Add(x509bundle.FromX509Authorities(spiffeid.RequireTrustDomainFromString(e.GetName()), roots))
		v.names = append(v.names, e.GetName())
	}
	return v
}
