package policy

import (
	"encoding/json"
	"reflect"
	"testing"
)

func TestLint(t *testing.T) {
	w := func(policy string, rule int, msg string) Finding {
		return Finding{Severity: "warning", Policy: policy, Rule: rule, Message: msg}
	}
	strict := pa("istio-system", "default", "", "{mtls: {mode: STRICT}}")
	served := []string{"example.org", "old.example.org"}
	workloads := []WorkloadInfo{
		{Namespace: "foo", Labels: map[string]string{"app": "httpbin", "version": "v1"}},
		{Namespace: "bar", Labels: map[string]string{"app": "sleep"}},
	}
	const plain = "plaintext callers have no principal or namespace, so "
	cases := []struct {
		name     string
		policies string
		opts     LintOptions
		want     []Finding
	}{
		{name: "clean policies produce nothing",
			opts: LintOptions{ServedTrustDomains: served, Workloads: workloads},
			policies: strict +
				ap("foo", "allow", "{selector: {matchLabels: {app: httpbin}}, rules: [{from: [{source: {principals: ['example.org/ns/bar/sa/sleep', 'old.example.org/ns/bar/*', 'cluster.local/ns/bar/sa/x', '*', '*/sa/sleep']}}], to: [{operation: {methods: [GET], notMethods: [POST]}}]}, {to: [{operation: {paths: ['/info']}}]}]}") +
				ap("foo", "deny", "{action: DENY, rules: [{from: [{source: {namespaces: [evil]}}]}, {to: [{operation: {ports: ['9000']}}]}]}") +
				ap("istio-system", "mesh-deny", "{action: DENY, rules: [{when: [{key: source.namespace, values: [evil]}]}]}"),
		},
		{name: "no policies", want: nil},

		// 1. Identity without STRICT mTLS.
		{name: "allow principals under default permissive",
			policies: ap("foo", "allow", "{rules: [{from: [{source: {principals: ['cluster.local/ns/bar/sa/sleep']}}]}]}"),
			want:     []Finding{w("foo/allow", 0, "rule 0 uses principals but mTLS for foo is PERMISSIVE: "+plain+"this rule never allows them")}},
		{name: "deny namespaces with selector under namespace permissive",
			policies: pa("foo", "ns", "", "{mtls: {mode: PERMISSIVE}}") +
				ap("foo", "deny", "{action: DENY, selector: {matchLabels: {version: v1, app: httpbin}}, rules: [{from: [{source: {namespaces: [bar]}}]}]}"),
			want: []Finding{w("foo/deny", 0, "rule 0 uses namespaces but mTLS for foo app=httpbin,version=v1 is PERMISSIVE: "+plain+"this rule never denies them")}},
		{name: "when source.principal under DISABLE",
			policies: pa("foo", "ns", "", "{mtls: {mode: DISABLE}}") +
				ap("foo", "allow", "{rules: [{to: [{operation: {methods: [GET]}}]}, {when: [{key: source.principal, values: ['cluster.local/ns/bar/sa/sleep']}]}]}"),
			want: []Finding{w("foo/allow", 1, "rule 1 uses source.principal but mTLS for foo is DISABLE: "+plain+"this rule never allows them")}},
		{name: "allow notNamespaces lets plaintext through",
			policies: ap("foo", "allow", "{rules: [{from: [{source: {notNamespaces: [evil]}}]}]}"),
			want:     []Finding{w("foo/allow", 0, "rule 0 uses notNamespaces but mTLS for foo is PERMISSIVE: "+plain+"they satisfy its not-forms: this rule can allow them whoever they are")}},
		{name: "deny notPrincipals star (deny plaintext idiom) is not reported",
			policies: ap("foo", "deny", "{action: DENY, rules: [{from: [{source: {notPrincipals: ['*']}}]}]}")},
		{name: "mixed sources",
			policies: ap("foo", "audit", "{action: AUDIT, rules: [{from: [{source: {principals: [a/ns/b/sa/c]}}, {source: {ipBlocks: [10.0.0.0/8]}}]}]}"),
			want:     []Finding{w("foo/audit", 0, "rule 0 uses principals but mTLS for foo is PERMISSIVE: "+plain+"the sources using them never match plaintext callers")}},
		{name: "workload STRICT overrides namespace PERMISSIVE",
			policies: pa("foo", "ns", "", "{mtls: {mode: PERMISSIVE}}") +
				pa("foo", "httpbin", "", "{selector: {matchLabels: {app: httpbin}}, mtls: {mode: STRICT}}") +
				ap("foo", "allow", "{selector: {matchLabels: {app: httpbin}}, rules: [{from: [{source: {principals: ['cluster.local/ns/bar/sa/sleep']}}]}]}")},
		{name: "targetRefs policies skip the mTLS check",
			policies: ap("foo", "gw", "{targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: gw}], rules: [{from: [{source: {principals: ['cluster.local/ns/bar/sa/sleep']}}]}]}")},

		// 2. Trust domains.
		{name: "principal in unserved trust domain",
			opts: LintOptions{ServedTrustDomains: served},
			policies: strict +
				ap("foo", "allow", "{rules: [{from: [{source: {principals: ['spiffe://other.org/ns/bar/sa/sleep', 'example.org/ns/bar/sa/ok', 'exa*', 'other.org/ns/*'], notPrincipals: ['evil.org/ns/x/sa/y']}}], when: [{key: source.principal, notValues: ['third.org/ns/a/sa/b']}]}]}"),
			want: []Finding{
				w("foo/allow", 0, `rule 0 from[0].source.notPrincipals "evil.org/ns/x/sa/y" is in trust domain "evil.org", which the CA does not serve (serves example.org, old.example.org)`),
				w("foo/allow", 0, `rule 0 from[0].source.principals "other.org/ns/*" is in trust domain "other.org", which the CA does not serve (serves example.org, old.example.org)`),
				w("foo/allow", 0, `rule 0 from[0].source.principals "spiffe://other.org/ns/bar/sa/sleep" starts with spiffe://: Istio principals omit the scheme, so it never matches`),
				w("foo/allow", 0, `rule 0 when[0].notValues "third.org/ns/a/sa/b" is in trust domain "third.org", which the CA does not serve (serves example.org, old.example.org)`),
			}},
		{name: "trust domain check skipped without served domains",
			policies: strict + ap("foo", "allow", "{rules: [{from: [{source: {principals: ['other.org/ns/bar/sa/sleep']}}]}]}")},

		// 3. Shadowing and duplicates.
		{name: "namespace-wide deny-all shadows selector allow",
			policies: ap("foo", "allow", "{selector: {matchLabels: {app: httpbin}}, rules: [{to: [{operation: {methods: [GET]}}]}, {to: [{operation: {paths: ['/x']}}]}]}") +
				ap("foo", "deny-all", "{action: DENY, rules: [{to: [{operation: {ports: ['1']}}]}, {}]}"),
			want: []Finding{
				w("foo/allow", 0, "never takes effect: DENY policy foo/deny-all rule 1 matches every request"),
				w("foo/allow", 1, "never takes effect: DENY policy foo/deny-all rule 1 matches every request"),
			}},
		{name: "root namespace deny-all shadows every allow",
			policies: ap("istio-system", "deny-all", "{action: DENY, rules: [{}]}") +
				ap("bar", "allow", "{rules: [{}]}"),
			want: []Finding{w("bar/allow", 0, "never takes effect: DENY policy istio-system/deny-all rule 0 matches every request")}},
		{name: "deny-all for other workloads, other namespace, dry-run or targeted shadows nothing",
			policies: ap("foo", "deny-other", "{action: DENY, selector: {matchLabels: {app: other}}, rules: [{}]}") +
				ap("bar", "deny-bar", "{action: DENY, rules: [{}]}") +
				apAnn("foo", "deny-dry", "{istio.io/dry-run: 'true'}", "{action: DENY, rules: [{}]}") +
				ap("foo", "deny-gw", "{action: DENY, targetRef: {kind: Gateway, group: gateway.networking.k8s.io, name: gw}, rules: [{}]}") +
				ap("foo", "allow", "{selector: {matchLabels: {app: httpbin}}, rules: [{}]}") +
				ap("foo", "allow-ns", "{rules: [{}]}"),
		},
		{name: "selector deny-all does not shadow namespace-wide allow",
			policies: ap("foo", "deny", "{action: DENY, selector: {matchLabels: {app: httpbin}}, rules: [{}]}") +
				ap("foo", "allow", "{rules: [{}]}")},
		{name: "duplicate rules",
			policies: ap("foo", "deny", "{action: DENY, rules: [{to: [{operation: {methods: [DELETE]}}]}, {to: [{operation: {methods: [PUT]}}]}, {to: [{operation: {methods: [DELETE]}}]}, {to: [{operation: {methods: [DELETE]}}]}]}"),
			want: []Finding{
				w("foo/deny", 2, "duplicate of rule 0"),
				w("foo/deny", 3, "duplicate of rule 0"),
			}},

		// 4. ALLOW policies that can never match.
		{name: "empty allow policy allows nothing",
			policies: ap("foo", "allow-nothing", "{}") + apAnn("foo", "dry", "{istio.io/dry-run: 'true'}", "{}") + ap("foo", "deny-empty", "{action: DENY}"),
			want:     []Finding{w("foo/allow-nothing", -1, "allows nothing: denies every request to its workloads")}},
		{name: "methods excluded by notMethods",
			policies: ap("foo", "allow", "{rules: [{to: [{operation: {methods: [GET], notMethods: [GET]}}]}]}"),
			want: []Finding{
				w("foo/allow", -1, "allows nothing: no rule can match, so it denies every request to its workloads"),
				w("foo/allow", 0, "never matches: to[0].operation methods are all excluded by notMethods"),
			}},
		{name: "one unsatisfiable rule of two",
			policies: strict + ap("foo", "allow", "{rules: [{from: [{source: {principals: [a/ns/b/sa/c], notPrincipals: ['*']}}, {source: {ipBlocks: [10.1.0.0/16], notIpBlocks: [10.0.0.0/8]}}]}, {when: [{key: 'request.headers[x-a]', values: [v]}]}]}"),
			want:     []Finding{w("foo/allow", 0, "never matches: from[0].source principals are all excluded by notPrincipals; from[1].source ipBlocks are all excluded by notIpBlocks")}},
		{name: "satisfiable when one source or operation can match",
			policies: ap("foo", "allow", "{rules: [{from: [{source: {ipBlocks: [10.0.0.0/8], notIpBlocks: [10.1.0.0/16]}}, {source: {remoteIpBlocks: [1.2.3.4], notRemoteIpBlocks: [1.2.3.4]}}], to: [{operation: {ports: ['80'], notPorts: ['80']}}, {operation: {paths: ['/a', '/b'], notPaths: ['/a']}}]}]}")},
		{name: "unsatisfiable when condition in a deny rule",
			policies: ap("foo", "deny", "{action: DENY, rules: [{when: [{key: destination.port, values: ['80'], notValues: ['80', '81']}]}]}"),
			want:     []Finding{w("foo/deny", 0, "never matches: when[0] values are all excluded by notValues")}},

		// 5. Selectors with no workload.
		{name: "selector matches no known workload",
			opts: LintOptions{Workloads: workloads},
			policies: strict +
				ap("foo", "stale", "{selector: {matchLabels: {app: sleep}}, rules: [{}]}") +
				ap("istio-system", "mesh-sleep", "{selector: {matchLabels: {app: sleep}}, rules: [{}]}") +
				ap("istio-system", "mesh-gone", "{selector: {matchLabels: {app: gone}}, rules: [{}]}") +
				pa("bar", "pa-gone", "", "{selector: {matchLabels: {app: httpbin}}, mtls: {mode: STRICT}}"),
			want: []Finding{
				w("bar/pa-gone", -1, "PeerAuthentication selector app=httpbin matches no known workload in namespace bar"),
				w("foo/stale", -1, "selector app=sleep matches no known workload in namespace foo"),
				w("istio-system/mesh-gone", -1, "selector app=gone matches no known workload in any namespace"),
			}},
		// istio/istio pilot/pkg/security/authn/policy_applier.go (ComposePeerAuthentication)
		// and pkg/config/validation (ValidatePeerAuthentication).
		{name: "PeerAuthentication parts istiod ignores",
			opts: LintOptions{Workloads: workloads},
			policies: pa("istio-system", "gw", "", "{selector: {matchLabels: {app: gone}}, mtls: {mode: STRICT}}") +
				pa("foo", "ns", "", "{mtls: {mode: STRICT}, portLevelMtls: {'80': {mode: DISABLE}}}"),
			want: []Finding{
				w("foo/ns", -1, "PeerAuthentication portLevelMtls without a selector is ignored, and Istio's validation refuses it"),
				w("istio-system/gw", -1, "PeerAuthentication with a selector in the root namespace istio-system is ignored: it applies to no workload"),
			}},
		{name: "selector check skipped without workloads",
			policies: ap("foo", "stale", "{selector: {matchLabels: {app: gone}}, rules: [{}]}")},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s, err := Parse("lint.yaml", []byte(tc.policies))
			if err != nil {
				t.Fatal(err)
			}
			got := s.Lint(tc.opts)
			if len(got) == 0 && len(tc.want) == 0 {
				return
			}
			if !reflect.DeepEqual(got, tc.want) {
				g, _ := json.MarshalIndent(got, "", "  ")
				w, _ := json.MarshalIndent(tc.want, "", "  ")
				t.Errorf("findings:\n%s\nwant:\n%s", g, w)
			}
		})
	}
}

func TestLintLoadTestdata(t *testing.T) {
	s, err := Options{TrustDomain: "example.org"}.Load("testdata/lint")
	if err != nil {
		t.Fatal(err)
	}
	got := s.Lint(LintOptions{ServedTrustDomains: []string{"example.org"}})
	want := []Finding{
		{Severity: "warning", Policy: "foo/allow-get", Rule: 0, Message: "never takes effect: DENY policy foo/deny-everything rule 0 matches every request"},
		{Severity: "warning", Policy: "foo/allow-get", Rule: 1, Message: "never takes effect: DENY policy foo/deny-everything rule 0 matches every request"},
		{Severity: "warning", Policy: "foo/allow-get", Rule: 1, Message: `rule 1 from[0].source.principals "legacy.org/ns/bar/sa/sleep" is in trust domain "legacy.org", which the CA does not serve (serves example.org)`},
	}
	if !reflect.DeepEqual(got, want) {
		g, _ := json.MarshalIndent(got, "", "  ")
		t.Errorf("findings:\n%s", g)
	}
	if b, _ := json.Marshal(got[0]); string(b) != `{"severity":"warning","policy":"foo/allow-get","rule":0,"message":"never takes effect: DENY policy foo/deny-everything rule 0 matches every request"}` {
		t.Errorf("JSON: %s", b)
	}
}
