package policy

import (
	"reflect"
	"testing"
)

// TestTrustBundlePrincipals follows istio/istio
// pilot/pkg/security/trustdomain/bundle.go (ReplaceTrustDomainAliases,
// replaceTrustDomains, isTrustDomainBeingEnforced) and util.go
// (stringMatch): which policy principals are rewritten for the mesh trust
// domain and its aliases, and into what.
func TestTrustBundlePrincipals(t *testing.T) {
	cases := []struct {
		name   string
		bundle trustBundle
		in     []string
		want   []string
	}{
		{"default mesh keeps cluster.local", trustBundle{"cluster.local"}, []string{"cluster.local/ns/a/sa/b"}, []string{"cluster.local/ns/a/sa/b"}},
		{"cluster.local means the trust domain", trustBundle{"example.org"}, []string{"cluster.local/ns/a/sa/b"}, []string{"example.org/ns/a/sa/b"}},
		{"cluster.local means trust domain and aliases", trustBundle{"new.org", "old.org"}, []string{"cluster.local/ns/a/sa/b"}, []string{"new.org/ns/a/sa/b", "old.org/ns/a/sa/b"}},
		{"alias written, all members meant", trustBundle{"new.org", "old.org"}, []string{"old.org/ns/a/sa/b"}, []string{"new.org/ns/a/sa/b", "old.org/ns/a/sa/b"}},
		{"two principals", trustBundle{"new.org", "old.org"}, []string{"new.org/ns/a/sa/b", "cluster.local/ns/c/sa/d"}, []string{"new.org/ns/a/sa/b", "old.org/ns/a/sa/b", "new.org/ns/c/sa/d", "old.org/ns/c/sa/d"}},
		{"foreign trust domain kept", trustBundle{"new.org", "old.org"}, []string{"partner.org/ns/a/sa/b"}, []string{"partner.org/ns/a/sa/b"}},
		{"star kept", trustBundle{"new.org", "old.org"}, []string{"*"}, []string{"*"}},
		{"star trust domain kept", trustBundle{"new.org", "old.org"}, []string{"*/ns/a/sa/b"}, []string{"*/ns/a/sa/b"}},
		{"suffix pattern kept", trustBundle{"new.org", "old.org"}, []string{"*sa/b"}, []string{"*sa/b"}},
		{"four parts kept", trustBundle{"new.org", "old.org"}, []string{"new.org/ns/a/*"}, []string{"new.org/ns/a/*"}},
		{"six parts kept", trustBundle{"new.org", "old.org"}, []string{"new.org/ns/a/sa/b/c"}, []string{"new.org/ns/a/sa/b/c"}},
		{"scheme kept", trustBundle{"new.org", "old.org"}, []string{"spiffe://new.org/ns/a/sa/b"}, []string{"spiffe://new.org/ns/a/sa/b"}},
		{"empty trust domain kept", trustBundle{"new.org", "old.org"}, []string{"/ns/a/sa/b"}, []string{"/ns/a/sa/b"}},
		{"prefix pattern in the service account rewritten", trustBundle{"new.org", "old.org"}, []string{"old.org/ns/a/sa/*"}, []string{"new.org/ns/a/sa/*", "old.org/ns/a/sa/*"}},
		{"suffix trust domain kept for members it matches", trustBundle{"east-mesh", "west-mesh", "legacy"}, []string{"*-mesh/ns/a/sa/b"}, []string{"*-mesh/ns/a/sa/b", "legacy/ns/a/sa/b"}},
		{"suffix trust domain matching every member stays one", trustBundle{"east-mesh", "west-mesh"}, []string{"*-mesh/ns/a/sa/b"}, []string{"*-mesh/ns/a/sa/b"}},
		{"prefix trust domain rewritten", trustBundle{"mesh-east", "other"}, []string{"mesh*/ns/a/sa/b"}, []string{"mesh-east/ns/a/sa/b", "other/ns/a/sa/b"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.bundle.principals(tc.in); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("principals(%q) = %q, want %q", tc.in, got, tc.want)
			}
		})
	}
}

// TestTrustBundleTrustDomains follows bundle.go ExpandTrustDomainAliases.
func TestTrustBundleTrustDomains(t *testing.T) {
	b := trustBundle{"new.org", "old.org"}
	cases := []struct {
		name     string
		in, want []string
	}{
		{"member expands", []string{"old.org"}, []string{"new.org", "old.org"}},
		{"no duplicates", []string{"new.org", "old.org", "x"}, []string{"new.org", "old.org", "x"}},
		{"patterns and cluster.local as written", []string{"*.org", "cluster.local"}, []string{"*.org", "cluster.local"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := b.trustDomains(tc.in); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("trustDomains(%q) = %q, want %q", tc.in, got, tc.want)
			}
		})
	}
}

// TestTrustDomainAliasing is the same rewriting seen through Authorize:
// istio.io's trust domain migration task (docTD) and
// pilot/pkg/security/authz/model/model.go MigrateTrustDomain, which
// rewrites principals, notPrincipals and source.principal, and expands
// trustDomains and source.trustDomain.
func TestTrustDomainAliasing(t *testing.T) {
	const A, D = Allow, Deny
	td := Options{TrustDomain: "new-td"}
	aliased := Options{TrustDomain: "new-td", TrustDomainAliases: []string{"old-td"}}
	from := func(src string) string { return "{from: [{source: " + src + "}]}" }
	runAuthz(t, []authzCase{
		{name: "cluster.local policy, renamed mesh, old identity refused", source: docTD + ": before adding the alias, cluster.local identities are refused", opts: td, policies: allowIf(from("{principals: [cluster.local/ns/bar/sa/sleep]}")), req: baseRequest(), want: D},
		{name: "cluster.local policy, renamed mesh, new identity allowed", source: docTD + ": cluster.local in policies means the local trust domain", opts: td, policies: allowIf(from("{principals: [cluster.local/ns/bar/sa/sleep]}")), req: with(principal("new-td/ns/bar/sa/sleep")), want: A},
		{name: "alias cluster.local, old identity allowed", source: docTD + ": trustDomainAliases [cluster.local]", opts: Options{TrustDomain: "new-td", TrustDomainAliases: []string{"cluster.local"}}, policies: allowIf(from("{principals: [cluster.local/ns/bar/sa/sleep]}")), req: baseRequest(), want: A},
		{name: "notPrincipals aliased", source: srcModel + ": MigrateTrustDomain rewrites notPrincipals", opts: aliased, policies: denyIf(from("{notPrincipals: [new-td/ns/bar/sa/sleep]}")), req: with(principal("old-td/ns/bar/sa/sleep")), want: A},
		{name: "notPrincipals aliased, others denied", source: srcModel + ": MigrateTrustDomain rewrites notPrincipals", opts: aliased, policies: denyIf(from("{notPrincipals: [new-td/ns/bar/sa/sleep]}")), req: with(principal("old-td/ns/bar/sa/other")), want: D, by: "foo/deny"},
		{name: "suffix trust domain pattern", source: "istio/istio pilot/pkg/security/trustdomain/bundle.go: *-suffix trust domains kept", opts: Options{TrustDomain: "a-td", TrustDomainAliases: []string{"legacy"}}, policies: allowIf(from("{principals: ['*-td/ns/bar/sa/sleep']}")), req: with(principal("legacy/ns/bar/sa/sleep")), want: A},
		{name: "trustDomains alias", source: srcModel + ": MigrateTrustDomain expands trustDomains", opts: aliased, policies: allowIf(from("{trustDomains: [old-td]}")), req: with(principal("new-td/ns/bar/sa/sleep")), want: A},
		{name: "notTrustDomains alias", source: srcModel + ": MigrateTrustDomain expands notTrustDomains", opts: aliased, policies: denyIf(from("{notTrustDomains: [new-td]}")), req: with(principal("old-td/ns/bar/sa/sleep")), want: A},
	})
}
