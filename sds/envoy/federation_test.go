package envoy

import (
	"crypto/x509"
	"fmt"
	"slices"
	"testing"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshca/meshca/internal/testca"
)

// withFederated publishes h's SVID again, one version on, carrying the
// roots as partner.example's bundle.
func (h *harness) withFederated(roots ...*x509.Certificate) {
	partner := spiffeid.RequireTrustDomainFromString("partner.example")
	next := *h.svid
	next.Version++
	next.Federated = map[spiffeid.TrustDomain]*spiffebundle.Bundle{partner: spiffebundle.FromX509Authorities(partner, roots)}
	h.svid = &next
	h.src.Set(h.svid)
}

// TestFederatedBundlesPushed: with the SPIFFE validator, a federated
// bundle reaching the SVID is pushed to a stream holding ALL and
// spiffe://partner.example (which waits for it until then), each
// verifying the partner's SVIDs by its own roots, ROOTCA unchanged; a
// change of its roots is pushed again. Without the validator nothing
// changes: the federated trust domain is not served.
func TestFederatedBundlesPushed(t *testing.T) {
	partnerCA, partnerNext := testca.New(t), testca.New(t)
	partnerSVID := issueFor(t, partnerCA, spiffeid.RequireFromString("spiffe://partner.example/ns/api/sa/server"))

	t.Run("SPIFFE validator", func(t *testing.T) {
		h := newHarnessWith(t, Config{SPIFFEValidator: true})
		s := openStream(t, h.client())
		s.request(AllName, "spiffe://partner.example", RootCAName)
		resp := s.next()
		if first := decode(t, resp); fmt.Sprint(keys(first)) != fmt.Sprint([]string{AllName, RootCAName}) {
			t.Fatalf("before federation the stream got %v", keys(first))
		}
		s.ack(resp)
		for i, roots := range [][]*x509.Certificate{{partnerCA.Root}, {partnerCA.Root, partnerNext.Root}} {
			h.withFederated(roots...)
			resp := s.next()
			got := decode(t, resp)
			// ROOTCA did not change: it is not sent again.
			if want := []string{AllName, "spiffe://partner.example"}; fmt.Sprint(keys(got)) != fmt.Sprint(want) {
				t.Fatalf("push %d holds %v, want %v", i, keys(got), want)
			}
			for name, wantTDs := range map[string][]string{AllName: {"example.org", "partner.example"}, "spiffe://partner.example": {"partner.example"}} {
				set, tds := spiffeConfig(t, got[name])
				if !slices.Equal(tds, wantTDs) {
					t.Errorf("push %d: %s holds %v, want %v", i, name, tds, wantTDs)
				}
				b, err := set.GetX509BundleForTrustDomain(spiffeid.RequireTrustDomainFromString("partner.example"))
				if err != nil || len(b.X509Authorities()) != len(roots) {
					t.Errorf("push %d: %s: partner.example's roots %v, want %d", i, name, err, len(roots))
				}
				if err := verifiesAsEnvoy(set, partnerSVID); err != nil {
					t.Errorf("push %d: %s refuses the partner's SVID: %v", i, name, err)
				}
			}
			s.ack(resp)
		}
	})
	t.Run("trusted CA", func(t *testing.T) {
		h := newHarness(t)
		s := openStream(t, h.client())
		s.request("spiffe://partner.example", RootCAName)
		s.ack(s.next())
		h.withFederated(partnerCA.Root)
		s.none()
		got, err := secrets(h.svid, false)
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := got["spiffe://partner.example"]; ok {
			t.Error("a federated trust domain is served without the SPIFFE validator")
		}
	})
}
