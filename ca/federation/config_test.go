package federation

import (
	"reflect"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"sigs.k8s.io/yaml"
)

var own = spiffeid.RequireTrustDomainFromString("a.test")

// TestParse: what a --federation-config file may say, and what it may not,
// each refusal with the reason in its message.
func TestParse(t *testing.T) {
	tests := []struct {
		name    string
		yaml    string
		want    []TrustDomainConfig // nil with wantErr
		wantErr string
	}{
		{name: "empty file", yaml: "", want: []TrustDomainConfig{}},
		{name: "https_web with a CA file", yaml: `
trust_domains:
- trust_domain: b.test
  bundle_endpoint_url: https://b.test:8443/
  bundle_endpoint_profile: https_web
  ca_file: /ca.pem
`, want: []TrustDomainConfig{{TrustDomain: "b.test", BundleEndpointURL: "https://b.test:8443/", BundleEndpointProfile: "https_web", CAFile: "/ca.pem"}}},
		{name: "https_spiffe bootstrapped from a file", yaml: `
trust_domains:
- trust_domain: b.test
  bundle_endpoint_url: https://b.test:8443/
  bundle_endpoint_profile: https_spiffe
  endpoint_spiffe_id: spiffe://b.test/meshca/bundle-endpoint
  bundle_file: /b.json
`, want: []TrustDomainConfig{{TrustDomain: "b.test", BundleEndpointURL: "https://b.test:8443/", BundleEndpointProfile: "https_spiffe",
			EndpointSPIFFEID: "spiffe://b.test/meshca/bundle-endpoint", BundleFile: "/b.json"}}},
		{name: "https_spiffe endpoint in our own trust domain needs no bootstrap", yaml: `
trust_domains:
- trust_domain: b.test
  bundle_endpoint_url: https://b.test/
  bundle_endpoint_profile: https_spiffe
  endpoint_spiffe_id: spiffe://a.test/relay
`, want: []TrustDomainConfig{{TrustDomain: "b.test", BundleEndpointURL: "https://b.test/", BundleEndpointProfile: "https_spiffe", EndpointSPIFFEID: "spiffe://a.test/relay"}}},
		{name: "https_spiffe endpoint in another federated trust domain", yaml: `
trust_domains:
- trust_domain: b.test
  bundle_endpoint_url: https://b.test/
  bundle_endpoint_profile: https_spiffe
  endpoint_spiffe_id: spiffe://c.test/relay
- trust_domain: c.test
  bundle_file: /c.json
`, want: []TrustDomainConfig{
			{TrustDomain: "b.test", BundleEndpointURL: "https://b.test/", BundleEndpointProfile: "https_spiffe", EndpointSPIFFEID: "spiffe://c.test/relay"},
			{TrustDomain: "c.test", BundleFile: "/c.json"}}},
		{name: "static file, trust domain written as an ID", yaml: `
trust_domains:
- trust_domain: spiffe://d.test
  bundle_file: /d.json
`, want: []TrustDomainConfig{{TrustDomain: "d.test", BundleFile: "/d.json"}}},
		{name: "unknown field", yaml: "trust_domains:\n- trust_domain: b.test\n  bundle_file: /b\n  refresh: 1m\n", wantErr: "unknown field"},
		{name: "our own trust domain", yaml: "trust_domains:\n- trust_domain: a.test\n  bundle_file: /a\n", wantErr: "this CA's own"},
		{name: "listed twice", yaml: "trust_domains:\n- trust_domain: b.test\n  bundle_file: /b\n- trust_domain: b.test\n  bundle_file: /b2\n", wantErr: "listed twice"},
		{name: "bad trust domain", yaml: "trust_domains:\n- trust_domain: B_Test!\n  bundle_file: /b\n", wantErr: "trust_domain"},
		{name: "neither endpoint nor file", yaml: "trust_domains:\n- trust_domain: b.test\n", wantErr: "static bundle_file"},
		{name: "plain http", yaml: "trust_domains:\n- trust_domain: b.test\n  bundle_endpoint_url: http://b.test/\n  bundle_endpoint_profile: https_web\n", wantErr: "https only"},
		{name: "URL with user information", yaml: "trust_domains:\n- trust_domain: b.test\n  bundle_endpoint_url: https://u:p@b.test/\n  bundle_endpoint_profile: https_web\n", wantErr: "user information"},
		{name: "URL without host", yaml: "trust_domains:\n- trust_domain: b.test\n  bundle_endpoint_url: https:///bundle\n  bundle_endpoint_profile: https_web\n", wantErr: "has no host"},
		{name: "URL with a fragment", yaml: "trust_domains:\n- trust_domain: b.test\n  bundle_endpoint_url: https://b.test/#bundle\n  bundle_endpoint_profile: https_web\n", wantErr: "has a fragment"},
		{name: "no profile", yaml: "trust_domains:\n- trust_domain: b.test\n  bundle_endpoint_url: https://b.test/\n", wantErr: "bundle_endpoint_profile"},
		{name: "unknown profile", yaml: "trust_domains:\n- trust_domain: b.test\n  bundle_endpoint_url: https://b.test/\n  bundle_endpoint_profile: https_spire\n", wantErr: "https_spire"},
		{name: "https_spiffe without endpoint ID", yaml: "trust_domains:\n- trust_domain: b.test\n  bundle_endpoint_url: https://b.test/\n  bundle_endpoint_profile: https_spiffe\n  bundle_file: /b\n", wantErr: "endpoint_spiffe_id"},
		{name: "https_spiffe without bootstrap bundle", yaml: "trust_domains:\n- trust_domain: b.test\n  bundle_endpoint_url: https://b.test/\n  bundle_endpoint_profile: https_spiffe\n  endpoint_spiffe_id: spiffe://b.test/e\n", wantErr: "bundle_file"},
		{name: "https_spiffe endpoint in an unlisted trust domain", yaml: "trust_domains:\n- trust_domain: b.test\n  bundle_endpoint_url: https://b.test/\n  bundle_endpoint_profile: https_spiffe\n  endpoint_spiffe_id: spiffe://x.test/e\n", wantErr: "does not have"},
		{name: "https_spiffe with a CA file", yaml: "trust_domains:\n- trust_domain: b.test\n  bundle_endpoint_url: https://b.test/\n  bundle_endpoint_profile: https_spiffe\n  endpoint_spiffe_id: spiffe://a.test/e\n  ca_file: /ca\n", wantErr: "ca_file is for https_web"},
		{name: "https_web with an endpoint ID", yaml: "trust_domains:\n- trust_domain: b.test\n  bundle_endpoint_url: https://b.test/\n  bundle_endpoint_profile: https_web\n  endpoint_spiffe_id: spiffe://b.test/e\n", wantErr: "are for https_spiffe"},
		{name: "static file with a profile", yaml: "trust_domains:\n- trust_domain: b.test\n  bundle_file: /b\n  bundle_endpoint_profile: https_web\n", wantErr: "need a bundle_endpoint_url"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			peers, err := Parse([]byte(tt.yaml), own)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Parse error = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got := make([]TrustDomainConfig, len(peers))
			for i, p := range peers {
				got[i] = p.TrustDomainConfig
				if p.ID.Name() != p.TrustDomain {
					t.Errorf("peer %d: ID %s, trust domain %s", i, p.ID, p.TrustDomain)
				}
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("Parse =\n%+v\nwant\n%+v", got, tt.want)
			}
		})
	}
}

// FuzzParse reads arbitrary bytes as a --federation-config file and checks
// that Parse never panics and that what it accepts round-trips: the trust
// domains written back as YAML parse again to the same peers, so nothing
// in an accepted file was half read or silently dropped.
func FuzzParse(f *testing.F) {
	f.Add([]byte(`trust_domains:
- trust_domain: b.test
  bundle_endpoint_url: https://b.test:8443/
  bundle_endpoint_profile: https_spiffe
  endpoint_spiffe_id: spiffe://b.test/meshca/bundle-endpoint
  bundle_file: /b.json
- trust_domain: c.test
  bundle_endpoint_url: https://c.test/bundle
  bundle_endpoint_profile: https_web
  ca_file: /ca.pem
- trust_domain: spiffe://d.test
  bundle_file: /d.json
`))
	f.Add([]byte(`{"trust_domains":[{"trust_domain":"b.test","bundle_file":"/b"}]}`))
	f.Add([]byte("trust_domains:\n- trust_domain: a.test\n  bundle_file: /a\n"))
	f.Add([]byte("trust_domains: &a [*a]\n"))
	f.Add([]byte("trust_domains:\n- trust_domain: b.test\n  bundle_endpoint_url: \"https://[::1]:8443/#x\"\n  bundle_endpoint_profile: https_web\n"))
	f.Add([]byte(""))
	f.Fuzz(func(t *testing.T, data []byte) {
		peers, err := Parse(data, own)
		if err != nil {
			return
		}
		var file File
		for _, p := range peers {
			file.TrustDomains = append(file.TrustDomains, p.TrustDomainConfig)
		}
		out, err := yaml.Marshal(file)
		if err != nil {
			t.Fatalf("accepted trust domains do not marshal: %v", err)
		}
		again, err := Parse(out, own)
		if err != nil {
			t.Fatalf("re-reading %q: %v", out, err)
		}
		if len(peers) == 0 && len(again) == 0 {
			return
		}
		if !reflect.DeepEqual(peers, again) {
			t.Fatalf("round trip changed the peers:\n%#v\n%#v", peers, again)
		}
	})
}
