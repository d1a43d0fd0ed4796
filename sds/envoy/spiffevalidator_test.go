package envoy

import (
	"crypto/x509"
	"fmt"
	"slices"
	"testing"
	"time"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/meshca/meshca/internal/pki"
	"github.com/meshca/meshca/internal/testca"
	"github.com/meshca/meshca/sds"
)

// validated runs Envoy's proto validation (protoc-gen-validate's
// ValidateAll, as Envoy applies on config load) on sec and, for a custom
// validator, on its typed config, which ValidateAll does not open.
func validated(t testing.TB, sec *tlsv3.Secret) {
	t.Helper()
	if err := sec.ValidateAll(); err != nil {
		t.Errorf("secret %q fails Envoy's validation: %v", sec.GetName(), err)
	}
	cv := sec.GetValidationContext().GetCustomValidatorConfig()
	if cv == nil {
		return
	}
	var cfg tlsv3.SPIFFECertValidatorConfig
	if err := cv.GetTypedConfig().UnmarshalTo(&cfg); err != nil {
		t.Fatalf("secret %q: typed_config is not a SPIFFECertValidatorConfig: %v", sec.GetName(), err)
	}
	if err := cfg.ValidateAll(); err != nil {
		t.Errorf("secret %q: SPIFFE validator config fails Envoy's validation: %v", sec.GetName(), err)
	}
}

// spiffeConfig checks that sec configures Envoy's SPIFFE validator and
// nothing else, and returns its config's trust bundles as go-spiffe bundles
// with the trust domain names in the order served.
func spiffeConfig(t testing.TB, sec *tlsv3.Secret) (*x509bundle.Set, []string) {
	t.Helper()
	validated(t, sec)
	vc := sec.GetValidationContext()
	if vc == nil {
		t.Fatalf("secret %q has no validation_context", sec.GetName())
	}
	if vc.GetTrustedCa() != nil {
		t.Errorf("secret %q sets trusted_ca beside the SPIFFE validator", sec.GetName())
	}
	cv := vc.GetCustomValidatorConfig()
	if cv.GetName() != SPIFFEValidatorName {
		t.Fatalf("secret %q: custom validator %q, want %q", sec.GetName(), cv.GetName(), SPIFFEValidatorName)
	}
	if want := "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.SPIFFECertValidatorConfig"; cv.GetTypedConfig().GetTypeUrl() != want {
		t.Fatalf("secret %q: typed_config type %q, want %q", sec.GetName(), cv.GetTypedConfig().GetTypeUrl(), want)
	}
	var cfg tlsv3.SPIFFECertValidatorConfig
	if err := cv.GetTypedConfig().UnmarshalTo(&cfg); err != nil {
		t.Fatal(err)
	}
	set := x509bundle.NewSet()
	var names []string
	for _, e := range cfg.GetTrustDomains() {
		// Envoy takes the name without "spiffe://".
		td, err := spiffeid.TrustDomainFromString(e.GetName())
		if err != nil || td.Name() != e.GetName() {
			t.Fatalf("secret %q: trust domain name %q is not a bare trust domain name (%v)", sec.GetName(), e.GetName(), err)
		}
		roots, err := pki.ParseCertificates(e.GetTrustBundle().GetInlineBytes())
		if err != nil {
			t.Fatalf("secret %q: trust bundle of %s: %v", sec.GetName(), e.GetName(), err)
		}
		set.Add(x509bundle.FromX509Authorities(td, roots))
		names = append(names, e.GetName())
	}
	return set, names
}

// verifiesAsEnvoy verifies svid's chain as Envoy's SPIFFE validator does:
// by the bundle of the trust domain in the leaf's URI SAN only.
func verifiesAsEnvoy(bundles *x509bundle.Set, svid *sds.SVID) error {
	_, _, err := x509svid.Verify(svid.Certificates, bundles)
	return err
}

// TestSPIFFEValidatorNames: with Config.SPIFFEValidator, a client asking
// for each validation context name gets a valid SPIFFE validator config for
// the trust domains SPIRE's agent serves under that name, whose bundle
// verifies the SVID the CA issued; the certificate names are unchanged.
func TestSPIFFEValidatorNames(t *testing.T) {
	h := newHarnessWith(t, Config{SPIFFEValidator: true})
	c := h.client()
	tests := []struct {
		name    string
		wantTDs []string // nil: a certificate, not a validation context
	}{
		{name: RootCAName, wantTDs: []string{"example.org"}},
		{name: AllName, wantTDs: []string{"example.org"}},
		{name: "spiffe://example.org", wantTDs: []string{"example.org"}},
		{name: DefaultName},
		{name: "spiffe://example.org/ns/foo/sa/bar"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := openStream(t, c)
			s.request(tt.name)
			got := decode(t, s.next())
			sec := got[tt.name]
			if len(got) != 1 || sec == nil {
				t.Fatalf("response holds %v, want only %q", keys(got), tt.name)
			}
			validated(t, sec)
			if tt.wantTDs == nil {
				checkCert(t, sec, h.svid)
				return
			}
			bundles, tds := spiffeConfig(t, sec)
			if !slices.Equal(tds, tt.wantTDs) {
				t.Errorf("trust domains %v, want %v", tds, tt.wantTDs)
			}
			if err := verifiesAsEnvoy(bundles, h.svid); err != nil {
				t.Errorf("the served bundle does not verify the CA's SVID: %v", err)
			}
		})
	}
}

// TestEveryResourceValidates: in both modes, every secret a wildcard
// stream and FetchSecrets serve passes Envoy's proto validation, and the
// names served are today's, plus ALL with the SPIFFE validator only.
func TestEveryResourceValidates(t *testing.T) {
	certNames := []string{DefaultName, "spiffe://example.org/ns/foo/sa/bar"}
	tests := []struct {
		name      string
		cfg       Config
		wantNames []string
		check     func(testing.TB, *tlsv3.Secret, *sds.SVID) // the validation contexts
	}{
		{
			name:      "trusted CA (default)",
			wantNames: []string{RootCAName, DefaultName, "spiffe://example.org", "spiffe://example.org/ns/foo/sa/bar"},
			check:     checkRoots,
		},
		{
			name:      "SPIFFE validator",
			cfg:       Config{SPIFFEValidator: true},
			wantNames: []string{AllName, RootCAName, DefaultName, "spiffe://example.org", "spiffe://example.org/ns/foo/sa/bar"},
			check: func(t testing.TB, sec *tlsv3.Secret, svid *sds.SVID) {
				t.Helper()
				bundles, _ := spiffeConfig(t, sec)
				if err := verifiesAsEnvoy(bundles, svid); err != nil {
					t.Errorf("secret %q does not verify the SVID: %v", sec.GetName(), err)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarnessWith(t, tt.cfg)
			c := h.client()
			s := openStream(t, c)
			s.request()
			streamed := decode(t, s.next())
			fetched, err := c.FetchSecrets(t.Context(), &discovery.DiscoveryRequest{Node: testNode})
			if err != nil {
				t.Fatal(err)
			}
			for what, got := range map[string]map[string]*tlsv3.Secret{"stream": streamed, "fetch": decode(t, fetched)} {
				if fmt.Sprint(keys(got)) != fmt.Sprint(tt.wantNames) {
					t.Errorf("%s serves %v, want %v", what, keys(got), tt.wantNames)
				}
				for name, sec := range got {
					validated(t, sec)
					if slices.Contains(certNames, name) {
						checkCert(t, sec, h.svid)
					} else {
						tt.check(t, sec, h.svid)
					}
				}
			}
		})
	}
}

// TestALLNotServedByDefault: without the option "ALL" is a name like any
// other that is not served: Envoy waits, as before.
func TestALLNotServedByDefault(t *testing.T) {
	h := newHarness(t)
	s := openStream(t, h.client())
	s.request(AllName)
	s.none()
}

// TestValidationContextsFederated: with a federated trust domain beside
// the workload's own, each name holds the trust domains SPIRE's agent
// serves under it, and (SPIFFE validator) each trust domain's SVIDs verify
// by its own bundle only: a federated CA cannot mint the own trust
// domain's identities.
func TestValidationContextsFederated(t *testing.T) {
	own, fed := spiffeid.RequireTrustDomainFromString("example.org"), spiffeid.RequireTrustDomainFromString("partner.example")
	ownCA, fedCA := testca.New(t), testca.New(t)
	bundles := map[spiffeid.TrustDomain][]*x509.Certificate{own: {ownCA.Root}, fed: {fedCA.Root}}
	ownSVID := ownCA.Issue(t, 1)
	fedSVID := issueFor(t, fedCA, spiffeid.RequireFromString("spiffe://partner.example/ns/api/sa/server"))
	forged := issueFor(t, fedCA, testca.WorkloadID) // the federated CA, the own trust domain's ID

	t.Run("SPIFFE validator", func(t *testing.T) {
		got, err := validationContexts(own, bundles, true)
		if err != nil {
			t.Fatal(err)
		}
		tests := []struct {
			name    string
			wantTDs []string
			verify  []*sds.SVID
			refuse  []*sds.SVID
		}{
			{RootCAName, []string{"example.org"}, []*sds.SVID{ownSVID}, []*sds.SVID{fedSVID, forged}},
			{"spiffe://example.org", []string{"example.org"}, []*sds.SVID{ownSVID}, []*sds.SVID{fedSVID, forged}},
			{"spiffe://partner.example", []string{"partner.example"}, []*sds.SVID{fedSVID}, []*sds.SVID{ownSVID, forged}},
			{AllName, []string{"example.org", "partner.example"}, []*sds.SVID{ownSVID, fedSVID}, []*sds.SVID{forged}},
		}
		if len(got) != len(tests) {
			t.Errorf("validation contexts %v, want %d", keys(got), len(tests))
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				sec := got[tt.name]
				if sec == nil || sec.GetName() != tt.name {
					t.Fatalf("%q not served under its name", tt.name)
				}
				set, tds := spiffeConfig(t, sec)
				if !slices.Equal(tds, tt.wantTDs) {
					t.Errorf("trust domains %v, want %v", tds, tt.wantTDs)
				}
				for _, svid := range tt.verify {
					if err := verifiesAsEnvoy(set, svid); err != nil {
						t.Errorf("%s refused: %v", svid.ID, err)
					}
				}
				for _, svid := range tt.refuse {
					if verifiesAsEnvoy(set, svid) == nil {
						t.Errorf("%s from the other trust domain's CA verified", svid.ID)
					}
				}
			})
		}
	})
	t.Run("trusted CA", func(t *testing.T) {
		got, err := validationContexts(own, bundles, false)
		if err != nil {
			t.Fatal(err)
		}
		want := map[string]*x509.Certificate{RootCAName: ownCA.Root, "spiffe://example.org": ownCA.Root, "spiffe://partner.example": fedCA.Root}
		if fmt.Sprint(keys(got)) != fmt.Sprint(keys(want)) {
			t.Fatalf("validation contexts %v, want %v", keys(got), keys(want))
		}
		for name, root := range want {
			validated(t, got[name])
			roots, err := pki.ParseCertificates(got[name].GetValidationContext().GetTrustedCa().GetInlineBytes())
			if err != nil || len(roots) != 1 || !roots[0].Equal(root) {
				t.Errorf("%s: trusted_ca %v (%v), want its trust domain's root", name, roots, err)
			}
		}
	})
	t.Run("no roots for the own trust domain", func(t *testing.T) {
		if _, err := validationContexts(own, map[spiffeid.TrustDomain][]*x509.Certificate{fed: {fedCA.Root}}, true); err == nil {
			t.Error("validation contexts without the own trust domain's roots")
		}
	})
}

// issueFor is an SVID for id signed by ca.
func issueFor(t testing.TB, ca *testca.CA, id spiffeid.ID) *sds.SVID {
	t.Helper()
	svid := ca.Issue(t, 1)
	leaf, err := ca.SignLeaf(id, svid.Key.Public(), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	svid.ID, svid.Certificates[0] = id, leaf
	return svid
}

// TestSPIFFEValidatorRootRotation: through a root rotation a stream
// holding the validation contexts gets one push per bundle change, each
// config trusting exactly the bundle's roots (both during the overlap), and
// nothing for a leaf rotation under unchanged roots.
func TestSPIFFEValidatorRootRotation(t *testing.T) {
	h := newHarnessWith(t, Config{SPIFFEValidator: true})
	oldCA, newCA := h.ca, testca.New(t)
	oldSVID := h.svid
	names := []string{RootCAName, AllName, "spiffe://example.org"}
	s := openStream(t, h.client())
	s.request(names...)
	s.ack(s.next())

	version := h.svid.Version
	underNew := func(roots ...*x509.Certificate) *sds.SVID {
		version++
		svid := newCA.Issue(t, version)
		svid.Roots = roots
		return svid
	}
	newOnly := underNew(newCA.Root) // an SVID under the new root alone
	steps := []struct {
		name   string
		svid   *sds.SVID
		push   bool
		verify []*sds.SVID
		refuse []*sds.SVID
	}{
		{"new root added to the bundle", underNew(oldCA.Root, newCA.Root), true, []*sds.SVID{oldSVID, newOnly}, nil},
		{"leaf rotation under the same roots", underNew(oldCA.Root, newCA.Root), false, nil, nil},
		{"old root removed", underNew(newCA.Root), true, []*sds.SVID{newOnly}, []*sds.SVID{oldSVID}},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			h.svid = st.svid
			h.src.Set(st.svid)
			if !st.push {
				s.none()
				return
			}
			resp := s.next()
			got := decode(t, resp)
			if fmt.Sprint(keys(got)) != fmt.Sprint(slices.Sorted(slices.Values(names))) {
				t.Fatalf("push holds %v, want %v", keys(got), names)
			}
			for _, name := range names {
				set, _ := spiffeConfig(t, got[name])
				b, err := set.GetX509BundleForTrustDomain(st.svid.ID.TrustDomain())
				if err != nil {
					t.Fatal(err)
				}
				if !b.Equal(x509bundle.FromX509Authorities(st.svid.ID.TrustDomain(), st.svid.Roots)) {
					t.Errorf("%s: bundle of %d roots, want the SVID's %d", name, len(b.X509Authorities()), len(st.svid.Roots))
				}
				for _, svid := range append(st.verify, st.svid) {
					if err := verifiesAsEnvoy(set, svid); err != nil {
						t.Errorf("%s: SVID version %d refused: %v", name, svid.Version, err)
					}
				}
				for _, svid := range st.refuse {
					if verifiesAsEnvoy(set, svid) == nil {
						t.Errorf("%s: an SVID under the removed root verified", name)
					}
				}
			}
			s.ack(resp)
		})
	}
}
