package policy

import (
	"strings"
	"testing"
)

// Istio sources the condition cases follow.
const (
	srcModel     = "istio/istio pilot/pkg/security/authz/model/model.go"
	srcGenerator = "istio/istio pilot/pkg/security/authz/model/generator.go"
	srcSecurity  = "istio/istio pkg/config/security/security.go (ValidateAttribute)"
	mysqlFilter  = "envoy.filters.network.mysql_proxy"
	mysqlKey     = "experimental.envoy.filters.network.mysql_proxy[db.table]"
)

func when1(cond string) string { return "{when: [" + cond + "]}" }

// TestSourceServiceAccountAndTrustDomainConditions follows model.go
// (attrSrcServiceAccount, attrSrcTrustDomain) and generator.go
// (srcServiceAccountGenerator's regex spiffe://.+/ns/NS/(.+/|)sa/SA(/.+)?,
// srcTrustDomainGenerator), with trust domain values expanded by
// pilot/pkg/security/trustdomain/bundle.go (ExpandTrustDomainAliases).
func TestSourceServiceAccountAndTrustDomainConditions(t *testing.T) {
	const A, D = Allow, Deny
	sa := func(vals string) string { return allowIf(when1("{key: source.serviceAccount, values: " + vals + "}")) }
	td := func(vals string) string { return allowIf(when1("{key: source.trustDomain, values: " + vals + "}")) }
	aliases := Options{TrustDomain: "new-td", TrustDomainAliases: []string{"old-td"}}
	runAuthz(t, []authzCase{
		{name: "serviceAccount namespace/name", source: srcModel + ": source.serviceAccount e.g. default/productpage", policies: sa("[bar/sleep]"), req: baseRequest(), want: A, by: "foo/allow"},
		{name: "serviceAccount bare name is in the policy namespace", source: srcGenerator + ": serviceAccountRegex defaultNamespace", policies: sa("[sleep]"), req: with(principal("cluster.local/ns/foo/sa/sleep")), want: A},
		{name: "serviceAccount bare name not in other namespace", source: srcGenerator + ": serviceAccountRegex defaultNamespace", policies: sa("[sleep]"), req: baseRequest(), want: D},
		{name: "serviceAccount other account", source: srcGenerator + ": serviceAccountRegex", policies: sa("[bar/other]"), req: baseRequest(), want: D},
		{name: "serviceAccount not a name prefix", source: srcGenerator + ": the / ensures we do not match <service account>-some-junk", policies: sa("[bar/sleep]"), req: with(principal("cluster.local/ns/bar/sa/sleep-junk")), want: D},
		{name: "serviceAccount trailing segments", source: srcGenerator + ": (/.+)? after the service account", policies: sa("[bar/sleep]"), req: with(principal("cluster.local/ns/bar/sa/sleep/extra")), want: A},
		{name: "serviceAccount segments between ns and sa", source: srcGenerator + ": (.+/|) between namespace and sa", policies: sa("[bar/sleep]"), req: with(principal("cluster.local/ns/bar/k/v/sa/sleep")), want: A},
		{name: "serviceAccount any trust domain", source: srcGenerator + ": spiffe://.+ before /ns/", policies: sa("[bar/sleep]"), req: with(principal("spiffe://elsewhere.org/ns/bar/sa/sleep")), want: A},
		{name: "serviceAccount plaintext never matches", source: srcGenerator + ": principalAuthenticated needs a peer identity", policies: sa("[bar/sleep]"), req: with(plaintext), want: D},
		{name: "serviceAccount notValues", source: srcModel + ": when notValues", policies: denyIf(when1("{key: source.serviceAccount, notValues: [bar/sleep]}")), req: with(principal("cluster.local/ns/bar/sa/other")), want: D, by: "foo/deny"},
		{name: "serviceAccount notValues passes the account", source: srcModel + ": when notValues", policies: denyIf(when1("{key: source.serviceAccount, notValues: [bar/sleep]}")), req: baseRequest(), want: A},
		{name: "serviceAccounts source field uses the same pattern", source: srcModel + ": from.source.serviceAccounts use srcServiceAccountGenerator", policies: allowIf("{from: [{source: {serviceAccounts: [bar/sleep]}}]}"), req: with(principal("cluster.local/ns/bar/x/sa/sleep/y")), want: A},

		{name: "trustDomain exact", source: srcModel + ": source.trustDomain", policies: td("[cluster.local]"), req: baseRequest(), want: A, by: "foo/allow"},
		{name: "trustDomain other", source: srcGenerator + ": srcTrustDomainGenerator exact prefix spiffe://TD/", policies: td("[example.org]"), req: baseRequest(), want: D},
		{name: "trustDomain is the whole first segment", source: srcGenerator + ": srcTrustDomainGenerator exact prefix spiffe://TD/", policies: td("[cluster]"), req: baseRequest(), want: D},
		{name: "trustDomain star matches any identity", source: srcGenerator + ": srcTrustDomainGenerator * is a presence match", policies: td("['*']"), req: with(principal("x.y/ns/a/sa/b")), want: A},
		{name: "trustDomain star not plaintext", source: srcGenerator + ": srcTrustDomainGenerator needs an authenticated peer", policies: td("['*']"), req: with(plaintext), want: D},
		{name: "trustDomain suffix", source: srcGenerator + ": srcTrustDomainGenerator [^/]* wildcard", policies: td("['*.example.org']"), req: with(principal("east.example.org/ns/a/sa/b")), want: A},
		{name: "trustDomain suffix not past the trust domain", source: srcGenerator + ": srcTrustDomainGenerator [^/]* stays in the trust domain", policies: td("['*.example.org']"), req: with(principal("evil.com/ns/x.example.org/sa/b")), want: D},
		{name: "trustDomain prefix", source: srcGenerator + ": srcTrustDomainGenerator [^/]* wildcard", policies: td("['cluster*']"), req: baseRequest(), want: A},
		{name: "trustDomain alias expands", source: srcModel + ": MigrateTrustDomain expands source.trustDomain", opts: aliases, policies: td("[new-td]"), req: with(principal("old-td/ns/bar/sa/sleep")), want: A},
		{name: "trustDomain alias expands both ways", source: srcModel + ": MigrateTrustDomain expands source.trustDomain", opts: aliases, policies: td("[old-td]"), req: with(principal("new-td/ns/bar/sa/sleep")), want: A},
		{name: "trustDomain cluster.local not special", source: "istio/istio pilot/pkg/security/trustdomain/bundle.go: ExpandTrustDomainAliases expands members only", opts: aliases, policies: td("[cluster.local]"), req: with(principal("new-td/ns/bar/sa/sleep")), want: D},
		{name: "trustDomain notValues", source: srcModel + ": when notValues", policies: denyIf(when1("{key: source.trustDomain, notValues: [cluster.local]}")), req: with(principal("other.org/ns/bar/sa/sleep")), want: D, by: "foo/deny"},
		{name: "trustDomains source field alias expands", source: srcModel + ": MigrateTrustDomain expands from.source.trustDomains", opts: aliases, policies: allowIf("{from: [{source: {trustDomains: [new-td]}}]}"), req: with(principal("old-td/ns/bar/sa/sleep")), want: A},
		{name: "source.principal condition aliased", source: srcModel + ": MigrateTrustDomain rewrites source.principal", opts: aliases, policies: allowIf(when1("{key: source.principal, values: [new-td/ns/bar/sa/sleep]}")), req: with(principal("old-td/ns/bar/sa/sleep")), want: A},
	})
}

// TestEnvoyFilterMetadataConditions follows model.go (attrEnvoyFilter) and
// generator.go (envoyFilterGenerator.extendedPermission): the key
// experimental.envoy.filters.FILTER[KEY] reads the dynamic metadata of
// "envoy.filters.FILTER" at KEY; a value "[v]" matches a list with an
// element v, any other value a string; values are ORed, notValues negate.
// The MySQL example is istio.io's conditions reference
// (docs/reference/config/security/conditions).
func TestEnvoyFilterMetadataConditions(t *testing.T) {
	const A, D = Allow, Deny
	md := func(filter, key string, v any) func(*Request) {
		return func(r *Request) { r.FilterMetadata = map[string]map[string]any{filter: {key: v}} }
	}
	tables := func(ops ...any) func(*Request) { return md(mysqlFilter, "db.table", ops) }
	cond := func(vals string) string { return "{key: '" + mysqlKey + "', values: " + vals + "}" }
	runAuthz(t, []authzCase{
		{name: "mysql table operation allowed", source: docCond + ": experimental.envoy.filters.network.mysql_proxy[db.table] [update]", policies: allowIf(when1(cond("['[update]']"))), req: with(tcp, tables("update", "insert")), want: A, by: "foo/allow"},
		{name: "mysql other operation denied", source: docCond + ": experimental.envoy.filters.* list match", policies: allowIf(when1(cond("['[update]']"))), req: with(tcp, tables("select")), want: D},
		{name: "metadata on HTTP too", source: srcGenerator + ": envoyFilterGenerator is a permission, not HTTP-only", policies: allowIf(when1(cond("['[update]']"))), req: with(tables("update")), want: A},
		{name: "list pattern does not match a string", source: srcGenerator + ": [v] builds a ListMatcher", policies: allowIf(when1(cond("['[update]']"))), req: with(tcp, md(mysqlFilter, "db.table", "update")), want: D},
		{name: "string pattern matches a string", source: srcGenerator + ": v builds a StringMatcher", policies: allowIf(when1(cond("[update]"))), req: with(tcp, md(mysqlFilter, "db.table", "update")), want: A},
		{name: "string pattern does not match a list", source: srcGenerator + ": v builds a StringMatcher", policies: allowIf(when1(cond("[update]"))), req: with(tcp, tables("update")), want: D},
		{name: "values are ORed", source: srcGenerator + ": OrMatcher over the values", policies: allowIf(when1(cond("['[delete]', '[insert]']"))), req: with(tcp, tables("insert")), want: A},
		{name: "list element prefix", source: srcGenerator + ": StringMatcher prefix inside a list match", policies: allowIf(when1(cond("['[upd*]']"))), req: with(tcp, tables("select", "update")), want: A},
		{name: "list element star is any non-empty", source: "istio/istio pilot/pkg/security/authz/matcher/string.go: * is .+", policies: allowIf(when1(cond("['[*]']"))), req: with(tcp, tables("")), want: D},
		{name: "non-string list elements never match", source: srcGenerator + ": ListMatcher one_of a StringMatcher", policies: allowIf(when1(cond("['[*]']"))), req: with(tcp, tables(1.0, true)), want: D},
		{name: "missing metadata does not match", source: srcGenerator + ": MetadataMatcher on an absent key", policies: allowIf(when1(cond("['[update]']"))), req: with(tcp), want: D},
		{name: "other filter's metadata not read", source: srcGenerator + ": the filter name is the key up to [", policies: allowIf(when1(cond("['[update]']"))), req: with(tcp, md("envoy.filters.network.other", "db.table", []any{"update"})), want: D},
		{name: "notValues deny what is not listed", source: srcGenerator + ": notValues become a NotRule", policies: denyIf(when1("{key: '" + mysqlKey + "', notValues: ['[select]']}")), req: with(tcp, tables("drop")), want: D, by: "foo/deny"},
		{name: "notValues on missing metadata", source: srcGenerator + ": not of an absent key matches", policies: denyIf(when1("{key: '" + mysqlKey + "', notValues: ['[select]']}")), req: with(tcp), want: D, by: "foo/deny"},
		{name: "notValues pass a listed operation", source: srcGenerator + ": notValues become a NotRule", policies: denyIf(when1("{key: '" + mysqlKey + "', notValues: ['[select]']}")), req: with(tcp, tables("select")), want: A},
		{name: "metadata key taken literally", source: srcGenerator + ": everything after the first [ but the last ] is the key", policies: allowIf(when1("{key: 'experimental.envoy.filters.a.b[c][d]', values: [x]}")), req: with(md("envoy.filters.a.b", "c][d", "x")), want: A},
	})
}

// TestConditionValidation follows pkg/config/security/security.go
// (ValidateAttribute: validateMapKey, CheckServiceAccount,
// CheckWildcardValues) and pkg/config/validation/validation.go
// (CheckTrustDomainValues for trustDomains).
func TestConditionValidation(t *testing.T) {
	seventeen := "[s1, s2, s3, s4, s5, s6, s7, s8, s9, s10, s11, s12, s13, s14, s15, s16, s17]"
	cases := []struct {
		name, rule, want string // want "" means valid
	}{
		{"filter key", when1("{key: '" + mysqlKey + "', values: ['[update]']}"), ""},
		{"filter key without brackets", when1("{key: experimental.envoy.filters.network.mysql_proxy, values: [x]}"), "invalid filter metadata key"},
		{"filter key with empty brackets", when1("{key: 'experimental.envoy.filters.x[]', values: [x]}"), "invalid filter metadata key"},
		{"filter key not closed", when1("{key: 'experimental.envoy.filters.x[a', values: [x]}"), "invalid filter metadata key"},
		{"experimental key of another kind", when1("{key: 'experimental.other[a]', values: [x]}"), "unknown condition key"},
		{"serviceAccount wildcard", when1("{key: source.serviceAccount, values: ['bar/*']}"), "invalid service account"},
		{"serviceAccount two slashes", when1("{key: source.serviceAccount, values: [a/b/c]}"), "invalid service account"},
		{"serviceAccount empty namespace", when1("{key: source.serviceAccount, values: [/b]}"), "invalid service account"},
		{"serviceAccount empty name", when1("{key: source.serviceAccount, notValues: [a/]}"), "invalid service account"},
		{"serviceAccount too long", when1("{key: source.serviceAccount, values: [" + strings.Repeat("a", 321) + "]}"), "invalid service account"},
		{"serviceAccount too many", when1("{key: source.serviceAccount, values: " + seventeen + "}"), "more than 16 values"},
		{"serviceAccounts source too many", "{from: [{source: {serviceAccounts: " + seventeen + "}}]}", "more than 16 values"},
		{"trustDomain two wildcards", when1("{key: source.trustDomain, values: ['*a*']}"), "at most one '*'"},
		{"trustDomain inner wildcard", when1("{key: source.trustDomain, values: ['a*b']}"), "only allowed at the start or the end"},
		{"trustDomains slash", "{from: [{source: {trustDomains: ['a/b']}}]}", "must not contain '/'"},
		{"trustDomains inner wildcard", "{from: [{source: {notTrustDomains: ['a*b']}}]}", "only allowed at the start or the end"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("v.yaml", []byte(allowIf(tc.rule)))
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("refused: %v (%s)", err, srcSecurity)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("error %v, want one containing %q (%s)", err, tc.want, srcSecurity)
			}
		})
	}
}
