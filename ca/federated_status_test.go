package ca_test

import (
	"context"
	"crypto/x509"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshca/meshca/ca/store"
	"github.com/meshca/meshca/internal/clock/clocktest"
	"github.com/meshca/meshca/internal/storetest"
)

// TestStatusFederation: Status describes each stored federated bundle
// (source, times, sequence, roots, JWT key IDs in order) and says why one
// that cannot be read, or that the federation refuses, is not served.
func TestStatusFederation(t *testing.T) {
	ctx := context.Background()
	st := storetest.NewMem()
	root := testCA(t, "other root", p256(t), nil, nil)
	other := spiffeid.RequireTrustDomainFromString("other.org")
	b := spiffebundle.FromX509Authorities(other, []*x509.Certificate{root})
	b.SetSequenceNumber(42)
	for _, kid := range []string{"kid-b", "kid-a"} {
		if err := b.AddJWTAuthority(kid, p256(t).Public()); err != nil {
			t.Fatal(err)
		}
	}
	doc, err := b.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	for _, rec := range []store.FederatedBundle{
		{TrustDomain: "other.org", Bundle: doc, Source: store.FederatedFromEndpoint, RefreshedAt: t0, ChangedAt: t0.Add(-time.Hour)},
		{TrustDomain: "broken.org", Bundle: []byte(`{"keys": 1}`), Source: store.FederatedFromFile, RefreshedAt: t0, ChangedAt: t0},
		// A valid SPIFFE bundle document the federation refuses to serve.
		{TrustDomain: "empty.org", Bundle: []byte(`{"keys": []}`), Source: store.FederatedFromFile, RefreshedAt: t0, ChangedAt: t0},
	} {
		if err := st.SaveFederatedBundle(ctx, rec); err != nil {
			t.Fatal(err)
		}
	}
	s, err := newAuthority(t, st, clocktest.New(t0), nil).Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	byTD := map[string]int{}
	for i, f := range s.Federation {
		byTD[f.TrustDomain] = i
	}
	if len(s.Federation) != 3 {
		t.Fatalf("federation: %+v, want other.org, broken.org and empty.org", s.Federation)
	}
	good := s.Federation[byTD["other.org"]]
	if good.Source != store.FederatedFromEndpoint || !good.RefreshedAt.Equal(t0) || !good.ChangedAt.Equal(t0.Add(-time.Hour)) ||
		good.Sequence != 42 || good.Error != "" || !reflect.DeepEqual(good.JWTKeyIDs, []string{"kid-a", "kid-b"}) ||
		len(good.X509Authorities) != 1 || good.X509Authorities[0].State != "trusted" || !strings.Contains(good.X509Authorities[0].Subject, "CN=other root") {
		t.Errorf("other.org: %+v", good)
	}
	bad := s.Federation[byTD["broken.org"]]
	if bad.Error == "" || bad.Source != store.FederatedFromFile || len(bad.X509Authorities) != 0 {
		t.Errorf("broken.org: %+v, want the parse error", bad)
	}
	if empty := s.Federation[byTD["empty.org"]]; !strings.Contains(empty.Error, "no X.509 authorities") {
		t.Errorf("empty.org: %+v, want the error that keeps it from being served", empty)
	}
}
