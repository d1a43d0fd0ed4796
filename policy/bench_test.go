package policy

import (
	"fmt"
	"strings"
	"testing"
)

// benchSet builds 10,000 policies across 1,000 namespaces: per namespace a
// namespace-wide DENY, and ALLOW policies selecting ten different apps, plus
// a few mesh-wide policies in the root namespace.
func benchSet(b *testing.B) *Set {
	var sb strings.Builder
	for n := 0; n < 1000; n++ {
		ns := fmt.Sprintf("ns-%d", n)
		sb.WriteString(ap(ns, "deny-dev", "{action: DENY, rules: [{from: [{source: {namespaces: [dev]}}], to: [{operation: {methods: [DELETE]}}]}]}"))
		for i := 0; i < 9; i++ {
			sb.WriteString(ap(ns, fmt.Sprintf("allow-app-%d", i), fmt.Sprintf(
				"{selector: {matchLabels: {app: app-%d}}, rules: [{from: [{source: {principals: ['cluster.local/ns/%s/sa/client-%d', 'cluster.local/ns/bar/*']}}], to: [{operation: {methods: [GET, POST], paths: ['/api/*']}}], when: [{key: 'request.auth.claims[groups]', values: [ops]}]}]}", i, ns, i)))
		}
	}
	sb.WriteString(ap("istio-system", "deny-plaintext", "{action: DENY, rules: [{from: [{source: {notPrincipals: ['*']}}]}]}"))
	set, err := Parse("bench.yaml", []byte(sb.String()))
	if err != nil {
		b.Fatal(err)
	}
	if n := len(set.AuthorizationPolicies); n != 10001 {
		b.Fatalf("%d policies", n)
	}
	return set
}

func BenchmarkAuthorize(b *testing.B) {
	set := benchSet(b)
	req := with(jwt, inNS("ns-500"), labels("app", "app-7", "version", "v1"), path("/api/items"))
	if d := set.Authorize(req); d.Decision != Allow || d.Policy != "ns-500/allow-app-7" {
		b.Fatalf("unexpected decision %+v", d)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		set.Authorize(req)
	}
}
