package policy

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
)

// Sources cited by the conformance cases.
const (
	docAP      = "istio.io/latest/docs/reference/config/security/authorization-policy"
	docCond    = "istio.io/latest/docs/reference/config/security/conditions"
	docTCP     = "istio.io/latest/docs/tasks/security/authorization/authz-tcp"
	docDryRun  = "istio.io/latest/docs/tasks/security/authorization/authz-dry-run"
	docCustom  = "istio.io/latest/docs/tasks/security/authorization/authz-custom"
	docConcept = "istio.io/latest/docs/concepts/security/#authorization-policies"
	docTD      = "istio.io/latest/docs/tasks/security/authorization/authz-td-migration"
	docJWT     = "istio.io/latest/docs/tasks/security/authorization/authz-jwt"
	docIP      = "istio.io/latest/docs/tasks/security/authorization/authz-ingress"
	docBest    = "istio.io/latest/docs/ops/best-practices/security/#writing-host-match-policies"
	docSidecar = "istio.io/latest/docs/reference/config/security/authorization-policy (targetRefs: gateways and waypoints only)"
)

// ap renders one AuthorizationPolicy document; spec is a YAML flow mapping.
func ap(ns, name, spec string) string {
	return fmt.Sprintf("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: %s, namespace: %s}\nspec: %s\n---\n", name, ns, spec)
}

func apAnn(ns, name, ann, spec string) string {
	return fmt.Sprintf("apiVersion: security.istio.io/v1beta1\nkind: AuthorizationPolicy\nmetadata: {name: %s, namespace: %s, annotations: %s}\nspec: %s\n---\n", name, ns, ann, spec)
}

const peer = "cluster.local/ns/bar/sa/sleep"

// baseRequest is an mTLS HTTP request from bar/sleep to foo/httpbin.
func baseRequest() Request {
	return Request{
		Protocol: "HTTP",
		Workload: Workload{Namespace: "foo", Labels: map[string]string{"app": "httpbin", "version": "v1"}},
		Source:   Source{Principal: "spiffe://" + peer, IP: "10.0.0.1"},
		Request: HTTPRequest{
			Method: "GET", Path: "/info", Host: "httpbin.foo.svc.cluster.local",
			Headers: map[string]string{"X-Token": "abc", "user-agent": "curl/8"},
		},
		Destination: Destination{IP: "10.1.0.5", Port: 8000},
		Connection:  Connection{SNI: "outbound_.8000_._.httpbin.foo.svc.cluster.local"},
	}
}

func with(mods ...func(*Request)) Request {
	r := baseRequest()
	for _, m := range mods {
		m(&r)
	}
	return r
}

func tcp(r *Request)       { r.Protocol = "TCP"; r.Request = HTTPRequest{} }
func plaintext(r *Request) { r.Source.Principal = "" }
func jwt(r *Request) {
	r.Request.Principal = "https://accounts.example.com/alice"
	r.Request.Audiences = []string{"httpbin", "other"}
	r.Request.Presenter = "frontend"
	r.Request.Claims = map[string]any{
		"iss":    "https://accounts.example.com",
		"groups": []any{"dev", "ops"},
		"nested": map[string]any{"key1": []any{"valueA", "valueB"}, "key2": "solo"},
		"admin":  true,
	}
}
func method(m string) func(*Request) { return func(r *Request) { r.Request.Method = m } }
func path(p string) func(*Request)   { return func(r *Request) { r.Request.Path = p } }
func host(h string) func(*Request)   { return func(r *Request) { r.Request.Host = h } }
func port(p uint32) func(*Request)   { return func(r *Request) { r.Destination.Port = p } }
func principal(p string) func(*Request) {
	return func(r *Request) { r.Source.Principal = p }
}
func srcIP(ip string) func(*Request) { return func(r *Request) { r.Source.IP = ip } }
func labels(kv ...string) func(*Request) {
	return func(r *Request) {
		r.Workload.Labels = map[string]string{}
		for i := 0; i+1 < len(kv); i += 2 {
			r.Workload.Labels[kv[i]] = kv[i+1]
		}
	}
}
func inNS(ns string) func(*Request) { return func(r *Request) { r.Workload.Namespace = ns } }
func verdict(provider string, v Verdict) func(*Request) {
	return func(r *Request) { r.CustomVerdicts = map[string]Verdict{provider: v} }
}

type authzCase struct {
	name     string
	source   string
	opts     Options
	policies string
	req      Request
	want     Verdict
	by       string // deciding policy "ns/name", "" for none
	action   Action // checked when non-empty
	rule     int    // checked when by != ""
}

func allowIf(rule string) string { return ap("foo", "allow", "{action: ALLOW, rules: ["+rule+"]}") }
func denyIf(rule string) string  { return ap("foo", "deny", "{action: DENY, rules: ["+rule+"]}") }

func authzCases() []authzCase {
	const A, D = Allow, Deny
	from := func(src string) string { return "{from: [{source: " + src + "}]}" }
	to := func(op string) string { return "{to: [{operation: " + op + "}]}" }
	when := func(cond string) string { return "{when: [" + cond + "]}" }
	return []authzCase{
		// Evaluation order and defaults.
		{name: "no policies allows", source: docAP + ": 3. no ALLOW policies for the workload, allow", req: baseRequest(), want: A},
		{name: "allow-nothing spec {} denies", source: docAP + ": allow-nothing, spec {}", policies: ap("foo", "allow-nothing", "{}"), req: baseRequest(), want: D, action: "ALLOW"},
		{name: "allow-all rule {} allows", source: docAP + ": allow-all, rules [{}]", policies: ap("foo", "allow-all", "{rules: [{}]}"), req: baseRequest(), want: A, by: "foo/allow-all"},
		{name: "allow-nothing with selector matches workload", source: docAP + ": allow-nothing with selector app: httpbin", policies: ap("foo", "allow-nothing", "{selector: {matchLabels: {app: httpbin}}}"), req: baseRequest(), want: D},
		{name: "allow-nothing with selector for other workload", source: docAP + ": selector restricts where a policy applies", policies: ap("foo", "allow-nothing", "{selector: {matchLabels: {app: other}}}"), req: baseRequest(), want: A},
		{name: "selector needs all labels", source: docAP + ": selector matchLabels", policies: ap("foo", "p", "{selector: {matchLabels: {app: httpbin, version: v2}}}"), req: baseRequest(), want: A},
		{name: "selector with all labels present", source: docAP + ": selector matchLabels", policies: ap("foo", "p", "{selector: {matchLabels: {app: httpbin, version: v1}}}"), req: baseRequest(), want: D},
		{name: "policy in other namespace does not apply", source: docAP + ": metadata/namespace tells which namespace the policy applies", policies: ap("bar", "allow-nothing", "{}"), req: baseRequest(), want: A},
		{name: "root namespace policy applies mesh-wide", source: docAP + ": root namespace policy applies to all namespaces", policies: ap("istio-system", "allow-nothing", "{}"), req: baseRequest(), want: D},
		{name: "root namespace selector matches in every namespace", source: docAP + ": version: v1 in all namespaces", policies: ap("istio-system", "v1-nothing", "{selector: {matchLabels: {version: v1}}}"), req: baseRequest(), want: D},
		{name: "root namespace selector non-matching", source: docAP + ": version: v1 in all namespaces", policies: ap("istio-system", "v1-nothing", "{selector: {matchLabels: {version: v2}}}"), req: baseRequest(), want: A},
		{name: "custom root namespace", source: docAP + ": root namespace is configurable (meshConfig.rootNamespace)", opts: Options{RootNamespace: "mesh-root"}, policies: ap("mesh-root", "deny-all", "{action: DENY, rules: [{}]}") + ap("istio-system", "x", "{}"), req: baseRequest(), want: D, by: "mesh-root/deny-all"},
		{name: "istio-system not root when configured otherwise", source: docAP + ": root namespace is configurable", opts: Options{RootNamespace: "mesh-root"}, policies: ap("istio-system", "x", "{}"), req: baseRequest(), want: A},
		{name: "deny overrides allow", source: docAP + ": 2. DENY before 4. ALLOW", policies: ap("foo", "allow-all", "{rules: [{}]}") + ap("foo", "deny-all", "{action: DENY, rules: [{}]}"), req: baseRequest(), want: D, by: "foo/deny-all", action: "DENY"},
		{name: "deny in root overrides namespace allow", source: docAP + ": DENY evaluated before ALLOW, root policies included", policies: ap("foo", "allow-all", "{rules: [{}]}") + ap("istio-system", "deny-all", "{action: DENY, rules: [{}]}"), req: baseRequest(), want: D, by: "istio-system/deny-all"},
		{name: "deny with no rules never matches", source: docAP + ": rules not set, match never occurs", policies: ap("foo", "deny-empty", "{action: DENY}"), req: baseRequest(), want: A},
		{name: "deny not matching falls to no allow policies", source: docAP + ": 3. no ALLOW policies, allow", policies: denyIf(from("{namespaces: [dev]}")), req: baseRequest(), want: A},
		{name: "any allow policy match allows", source: docAP + ": 4. any ALLOW policy matches, allow", policies: ap("foo", "a1", "{rules: [{from: [{source: {namespaces: [x]}}]}]}") + ap("foo", "a2", "{rules: [{}]}"), req: baseRequest(), want: A, by: "foo/a2"},
		{name: "allow policies none match denies", source: docAP + ": 5. deny the request", policies: ap("foo", "a1", "{rules: [{from: [{source: {namespaces: [x]}}]}]}"), req: baseRequest(), want: D, by: "", action: "ALLOW"},
		{name: "rule index reported", source: docAP + ": rules, a match occurs when at least one rule matches", policies: allowIf(from("{namespaces: [x]}") + "," + from("{namespaces: [bar]}")), req: baseRequest(), want: A, by: "foo/allow", rule: 1},
		{name: "audit never changes decision (allow)", source: docAP + ": AUDIT policies do not affect whether requests are allowed", policies: ap("foo", "audit", "{action: AUDIT, rules: [{}]}"), req: baseRequest(), want: A},
		{name: "audit does not count as allow policy", source: docAP + ": AUDIT policies do not affect whether requests are allowed", policies: ap("foo", "audit", "{action: AUDIT, rules: [{}]}") + ap("foo", "allow-nothing", "{}"), req: baseRequest(), want: D},
		{name: "default action is ALLOW", source: docAP + ": default action is ALLOW", policies: ap("foo", "p", "{rules: [{to: [{operation: {methods: [POST]}}]}]}"), req: baseRequest(), want: D},

		// CUSTOM.
		{name: "custom provider denies", source: docAP + ": 1. CUSTOM evaluated first, deny if result is deny", policies: ap("foo", "ext", "{action: CUSTOM, provider: {name: ext-authz}, rules: [{}]}") + ap("foo", "allow-all", "{rules: [{}]}"), req: with(verdict("ext-authz", "DENY")), want: D, by: "foo/ext", action: "CUSTOM"},
		{name: "custom provider allows then native allow", source: docAP + ": allowed iff all actions allow", policies: ap("foo", "ext", "{action: CUSTOM, provider: {name: ext-authz}, rules: [{}]}"), req: with(verdict("ext-authz", "ALLOW")), want: A},
		{name: "custom provider allows but native deny", source: docAP + ": extension cannot bypass ALLOW and DENY", policies: ap("foo", "ext", "{action: CUSTOM, provider: {name: ext-authz}, rules: [{}]}") + ap("foo", "deny-all", "{action: DENY, rules: [{}]}"), req: with(verdict("ext-authz", "ALLOW")), want: D, by: "foo/deny-all"},
		{name: "custom not matching does not ask provider", source: docAP + ": CUSTOM only if matching rules evaluate to true", policies: ap("foo", "ext", "{action: CUSTOM, provider: {name: ext-authz}, rules: [{to: [{operation: {paths: [/admin/*]}}]}]}"), req: with(verdict("ext-authz", "DENY")), want: A},
		{name: "custom matching path asks provider", source: docAP + ": CUSTOM example paths /admin/*", policies: ap("foo", "ext", "{action: CUSTOM, provider: {name: ext-authz}, rules: [{to: [{operation: {paths: [/admin/*]}}]}]}"), req: with(path("/admin/users"), verdict("ext-authz", "DENY")), want: D, by: "foo/ext"},
		{name: "custom verdict unknown reports provider decides", source: docCustom + ": the external authorizer decides", policies: ap("foo", "ext", "{action: CUSTOM, provider: {name: ext-authz}, rules: [{}]}"), req: baseRequest(), want: D, by: "foo/ext", action: "CUSTOM"},
		{name: "custom verdict unknown but native deny names native", source: docAP + ": DENY applies regardless of CUSTOM", policies: ap("foo", "ext", "{action: CUSTOM, provider: {name: ext-authz}, rules: [{}]}") + ap("foo", "deny-all", "{action: DENY, rules: [{}]}"), req: baseRequest(), want: D, by: "foo/deny-all"},
		{name: "custom does not count as allow policy", source: docAP + ": 3. no ALLOW policies, allow", policies: ap("foo", "ext", "{action: CUSTOM, provider: {name: ext-authz}, rules: [{}]}"), req: with(verdict("ext-authz", "allow")), want: A, by: ""},

		// Dry-run and targetRefs.
		{name: "dry-run deny does not enforce", source: docDryRun + ": istio.io/dry-run annotation", policies: apAnn("foo", "deny-dry", `{"istio.io/dry-run": "true"}`, "{action: DENY, rules: [{}]}"), req: baseRequest(), want: A},
		{name: "dry-run allow-nothing does not enforce", source: docDryRun + ": dry-run policy not enforced", policies: apAnn("foo", "allow-dry", `{"istio.io/dry-run": "true"}`, "{}"), req: baseRequest(), want: A},
		{name: "dry-run false enforces", source: docDryRun + ": annotation value true", policies: apAnn("foo", "deny", `{"istio.io/dry-run": "false"}`, "{action: DENY, rules: [{}]}"), req: baseRequest(), want: D, by: "foo/deny"},
		{name: "dry-run allow beside real allow", source: docDryRun + ": only enforced policies decide", policies: apAnn("foo", "allow-dry", `{"istio.io/dry-run": "true"}`, "{rules: [{}]}") + ap("foo", "allow-x", "{rules: [{from: [{source: {namespaces: [x]}}]}]}"), req: baseRequest(), want: D},
		{name: "targetRefs policy ignored by sidecar", source: docSidecar, policies: ap("foo", "gw", "{targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: gw}], action: DENY, rules: [{}]}"), req: baseRequest(), want: A},
		{name: "targetRef policy ignored by sidecar", source: docSidecar, policies: ap("foo", "gw", "{targetRef: {kind: Gateway, group: gateway.networking.k8s.io, name: gw}}"), req: baseRequest(), want: A},

		// Rule structure.
		{name: "fields in a source AND (both match)", source: docAP + ": Source fields are ANDed", policies: allowIf(from("{principals: [" + peer + "], namespaces: [bar]}")), req: baseRequest(), want: A, by: "foo/allow"},
		{name: "fields in a source AND (one fails)", source: docAP + ": Source fields are ANDed", policies: allowIf(from("{principals: [" + peer + "], namespaces: [baz]}")), req: baseRequest(), want: D},
		{name: "values in a field OR", source: docAP + ": principals admin or dev", policies: allowIf(from("{namespaces: [x, 'y', bar]}")), req: baseRequest(), want: A},
		{name: "sources in from OR", source: docAP + ": from is a list of sources", policies: allowIf("{from: [{source: {namespaces: [x]}}, {source: {principals: [" + peer + "]}}]}"), req: baseRequest(), want: A},
		{name: "operations in to OR", source: docAP + ": to is a list of operations", policies: allowIf("{to: [{operation: {methods: [POST]}}, {operation: {paths: [/info]}}]}"), req: baseRequest(), want: A},
		{name: "from and to AND", source: docAP + ": one source, one operation and all conditions", policies: allowIf("{from: [{source: {namespaces: [bar]}}], to: [{operation: {methods: [POST]}}]}"), req: baseRequest(), want: D},
		{name: "when conditions AND", source: docAP + ": all conditions must match", policies: allowIf(when("{key: source.namespace, values: [bar]}, {key: 'request.headers[x-token]', values: [zzz]}")), req: baseRequest(), want: D},
		{name: "when conditions all match", source: docAP + ": all conditions must match", policies: allowIf(when("{key: source.namespace, values: [bar]}, {key: 'request.headers[x-token]', values: [abc]}")), req: baseRequest(), want: A},
		{name: "doc example httpbin allows GET /info* from sleep", source: docAP + ": first example policy", policies: ap("foo", "httpbin", `{action: ALLOW, rules: [{from: [{source: {principals: ["cluster.local/ns/default/sa/sleep"]}}, {source: {namespaces: ["test"]}}], to: [{operation: {methods: ["GET"], paths: ["/info*"]}}, {operation: {methods: ["POST"], paths: ["/data"]}}], when: [{key: "request.auth.claims[iss]", values: ["https://accounts.google.com"]}]}]}`), req: with(principal("cluster.local/ns/default/sa/sleep"), path("/info/x"), func(r *Request) { r.Request.Claims = map[string]any{"iss": "https://accounts.google.com"} }), want: A},
		{name: "doc example httpbin denies without JWT", source: docAP + ": first example policy", policies: ap("foo", "httpbin", `{action: ALLOW, rules: [{from: [{source: {namespaces: ["test"]}}], to: [{operation: {methods: ["POST"], paths: ["/data"]}}], when: [{key: "request.auth.claims[iss]", values: ["https://accounts.google.com"]}]}]}`), req: with(principal("cluster.local/ns/test/sa/x"), method("POST"), path("/data")), want: D},
		{name: "doc example deny POST from dev", source: docAP + ": DENY example dev namespace POST", policies: ap("foo", "httpbin", `{action: DENY, rules: [{from: [{source: {namespaces: ["dev"]}}], to: [{operation: {methods: ["POST"]}}]}]}`), req: with(principal("cluster.local/ns/dev/sa/x"), method("POST")), want: D},
		{name: "doc example deny POST from dev, GET passes", source: docAP + ": DENY example dev namespace POST", policies: ap("foo", "httpbin", `{action: DENY, rules: [{from: [{source: {namespaces: ["dev"]}}], to: [{operation: {methods: ["POST"]}}]}]}`), req: with(principal("cluster.local/ns/dev/sa/x")), want: A},

		// String matching.
		{name: "exact path", source: docAP + ": Exact match abc", policies: allowIf(to("{paths: [/info]}")), req: baseRequest(), want: A},
		{name: "exact path no partial", source: docAP + ": Exact match abc", policies: allowIf(to("{paths: [/inf]}")), req: baseRequest(), want: D},
		{name: "prefix path", source: docAP + ": Prefix match abc*", policies: allowIf(to("{paths: [/in*]}")), req: baseRequest(), want: A},
		{name: "prefix matches the prefix itself", source: docAP + ": abc* matches abc", policies: allowIf(to("{paths: [/info*]}")), req: baseRequest(), want: A},
		{name: "suffix path", source: docAP + ": Suffix match *abc", policies: allowIf(to("{paths: ['*fo']}")), req: baseRequest(), want: A},
		{name: "suffix matches the suffix itself", source: docAP + ": *abc matches abc", policies: allowIf(to("{paths: ['*/info']}")), req: baseRequest(), want: A},
		{name: "presence path", source: docAP + ": Presence match *", policies: allowIf(to("{paths: ['*']}")), req: baseRequest(), want: A},
		{name: "presence needs non-empty", source: docAP + ": Presence match * matches when value is not empty", policies: allowIf(when("{key: 'request.headers[x-missing]', values: ['*']}")), req: baseRequest(), want: D},
		{name: "path template single segment", source: docAP + ": /foo/{*} matches /foo/bar", policies: allowIf(to("{paths: ['/api/{*}']}")), req: with(path("/api/bar")), want: A},
		{name: "path template single segment not deeper", source: docAP + ": /foo/{*} does not match /foo/bar/baz", policies: allowIf(to("{paths: ['/api/{*}']}")), req: with(path("/api/bar/baz")), want: D},
		{name: "path template multi segment", source: docAP + ": {**} matches zero or more", policies: allowIf(to("{paths: ['/api/{*}/x/{**}']}")), req: with(path("/api/v1/x/a/b")), want: A},
		{name: "notPaths excludes", source: docAP + ": notPaths /admin*", policies: allowIf(to("{notPaths: [/admin*]}")), req: with(path("/admin/x")), want: D},
		{name: "notPaths allows others", source: docAP + ": notPaths /admin*", policies: allowIf(to("{notPaths: [/admin*]}")), req: baseRequest(), want: A},

		// Hosts.
		{name: "host exact", source: docAP + ": hosts", policies: allowIf(to("{hosts: [httpbin.foo.svc.cluster.local]}")), req: baseRequest(), want: A},
		{name: "host case-insensitive request", source: docAP + ": hosts match is case-insensitive", policies: allowIf(to("{hosts: [httpbin.foo.svc.cluster.local]}")), req: with(host("HTTPBIN.Foo.svc.cluster.local")), want: A},
		{name: "host case-insensitive policy", source: docAP + ": hosts match is case-insensitive", policies: allowIf(to("{hosts: [HTTPBIN.FOO.SVC.CLUSTER.LOCAL]}")), req: baseRequest(), want: A},
		{name: "host suffix", source: docAP + ": hosts *.example.com", policies: allowIf(to("{hosts: ['*.example.com']}")), req: with(host("api.example.com")), want: A},
		{name: "host with port is not the bare host", source: docBest, policies: allowIf(to("{hosts: [example.com]}")), req: with(host("example.com:8080")), want: D},
		{name: "host with port matched by host:*", source: docBest, policies: allowIf(to("{hosts: [example.com, 'example.com:*']}")), req: with(host("example.com:8080")), want: A},
		{name: "notHosts case-insensitive", source: docAP + ": notHosts case-insensitive", policies: denyIf(to("{notHosts: [Example.com]}")), req: with(host("EXAMPLE.COM")), want: A},
		{name: "notHosts denies other", source: docAP + ": notHosts", policies: denyIf(to("{notHosts: [example.com]}")), req: baseRequest(), want: D},

		// Methods and ports.
		{name: "method match", source: docAP + ": methods", policies: allowIf(to("{methods: [GET, HEAD]}")), req: baseRequest(), want: A},
		{name: "method mismatch", source: docAP + ": methods", policies: allowIf(to("{methods: [POST]}")), req: baseRequest(), want: D},
		{name: "notMethods", source: docAP + ": notMethods", policies: denyIf(to("{notMethods: [GET]}")), req: with(method("DELETE")), want: D},
		{name: "notMethods not matched", source: docAP + ": notMethods", policies: denyIf(to("{notMethods: [GET]}")), req: baseRequest(), want: A},
		{name: "port match", source: docAP + ": ports", policies: allowIf(to("{ports: ['8000']}")), req: baseRequest(), want: A},
		{name: "port mismatch", source: docAP + ": ports", policies: allowIf(to("{ports: ['9000']}")), req: baseRequest(), want: D},
		{name: "notPorts", source: docAP + ": notPorts", policies: allowIf(to("{notPorts: ['8000']}")), req: baseRequest(), want: D},
		{name: "doc example deny POST on 8080", source: docAP + ": DENY POST on port 8080", policies: denyIf(to("{methods: [POST], ports: ['8080']}")), req: with(method("POST"), port(8080)), want: D},
		{name: "doc example deny POST on 8080 other port", source: docAP + ": DENY POST on port 8080", policies: denyIf(to("{methods: [POST], ports: ['8080']}")), req: with(method("POST")), want: A},

		// Principals.
		{name: "principal without spiffe prefix in request", source: docAP + ": principals format <TRUST_DOMAIN>/ns/<NAMESPACE>/sa/<SERVICE_ACCOUNT>", policies: allowIf(from("{principals: [" + peer + "]}")), req: with(principal(peer)), want: A},
		{name: "principal with spiffe prefix in request", source: docAP + ": peer identity from certificate URI SAN", policies: allowIf(from("{principals: [" + peer + "]}")), req: baseRequest(), want: A},
		{name: "principal mismatch", source: docAP + ": principals", policies: allowIf(from("{principals: [cluster.local/ns/bar/sa/other]}")), req: baseRequest(), want: D},
		{name: "principal prefix", source: docAP + ": Prefix match", policies: allowIf(from("{principals: [cluster.local/ns/bar/*]}")), req: baseRequest(), want: A},
		{name: "principal suffix", source: docAP + ": Suffix match", policies: allowIf(from("{principals: ['*/sa/sleep']}")), req: baseRequest(), want: A},
		{name: "principal presence requires mTLS", source: docAP + ": principals requires mTLS", policies: allowIf(from("{principals: ['*']}")), req: with(plaintext), want: D},
		{name: "principal presence with mTLS", source: docAP + ": Presence match", policies: allowIf(from("{principals: ['*']}")), req: baseRequest(), want: A},
		{name: "plaintext matches no principal", source: docAP + ": principals requires mTLS", policies: allowIf(from("{principals: [" + peer + "]}")), req: with(plaintext), want: D},
		{name: "plaintext matches notPrincipals *", source: "istio.io/latest/docs/ops/best-practices/security (deny plaintext with notPrincipals: [\"*\"])", policies: denyIf(from("{notPrincipals: ['*']}")), req: with(plaintext), want: D, by: "foo/deny"},
		{name: "mTLS does not match notPrincipals *", source: "istio.io/latest/docs/ops/best-practices/security (deny plaintext with notPrincipals: [\"*\"])", policies: denyIf(from("{notPrincipals: ['*']}")), req: baseRequest(), want: A},
		{name: "notPrincipals exact", source: docAP + ": notPrincipals", policies: allowIf(from("{notPrincipals: [" + peer + "]}")), req: baseRequest(), want: D},
		{name: "spiffe-prefixed principal in policy never matches", source: docAP + ": principal format has no spiffe:// (Istio prepends it)", policies: allowIf(from("{principals: ['spiffe://" + peer + "']}")), req: baseRequest(), want: D},
		{name: "trust domain alias in request", source: docTD + ": trustDomainAliases", opts: Options{TrustDomain: "new-td", TrustDomainAliases: []string{"old-td"}}, policies: allowIf(from("{principals: [new-td/ns/bar/sa/sleep]}")), req: with(principal("old-td/ns/bar/sa/sleep")), want: A},
		{name: "trust domain alias in policy", source: docTD + ": trustDomainAliases", opts: Options{TrustDomain: "new-td", TrustDomainAliases: []string{"old-td"}}, policies: allowIf(from("{principals: [old-td/ns/bar/sa/sleep]}")), req: with(principal("spiffe://new-td/ns/bar/sa/sleep")), want: A},
		{name: "cluster.local policy matches local trust domain", source: docTD + ": cluster.local treated as the local trust domain", opts: Options{TrustDomain: "new-td"}, policies: allowIf(from("{principals: [cluster.local/ns/bar/sa/sleep]}")), req: with(principal("new-td/ns/bar/sa/sleep")), want: A},
		{name: "foreign trust domain not aliased", source: docTD + ": only aliases are equivalent", opts: Options{TrustDomain: "new-td", TrustDomainAliases: []string{"old-td"}}, policies: allowIf(from("{principals: [new-td/ns/bar/sa/sleep]}")), req: with(principal("evil-td/ns/bar/sa/sleep")), want: D},
		// pilot/pkg/security/trustdomain/bundle.go: only principals of exactly five "/"-separated parts are rewritten.
		{name: "alias not applied to short prefix principal", source: docTD + ": trustDomainAliases; Istio bundle.go rewrites TD/ns/NS/sa/SA only", opts: Options{TrustDomain: "new-td", TrustDomainAliases: []string{"old-td"}}, policies: allowIf(from("{principals: [new-td/ns/bar/*]}")), req: with(principal("old-td/ns/bar/sa/x")), want: D},
		{name: "alias applies to five-part prefix principal", source: docTD + ": trustDomainAliases; Istio bundle.go", opts: Options{TrustDomain: "new-td", TrustDomainAliases: []string{"old-td"}}, policies: allowIf(from("{principals: [new-td/ns/bar/sa/*]}")), req: with(principal("old-td/ns/bar/sa/x")), want: A},
		{name: "no aliases configured", source: docTD + ": without aliases only the trust domain matches", policies: allowIf(from("{principals: [cluster.local/ns/bar/sa/sleep]}")), req: with(principal("old-td/ns/bar/sa/sleep")), want: D},

		// Namespaces, service accounts, trust domains.
		{name: "namespace match", source: docAP + ": namespaces", policies: allowIf(from("{namespaces: [bar]}")), req: baseRequest(), want: A},
		{name: "namespace prefix", source: docAP + ": namespaces prefix", policies: allowIf(from("{namespaces: [ba*]}")), req: baseRequest(), want: A},
		{name: "namespace requires mTLS", source: docAP + ": namespaces requires mTLS", policies: allowIf(from("{namespaces: [bar]}")), req: with(plaintext, func(r *Request) { r.Source.Namespace = "bar" }), want: D},
		{name: "notNamespaces", source: docAP + ": notNamespaces", policies: denyIf(from("{notNamespaces: [foo]}")), req: baseRequest(), want: D},
		{name: "notNamespaces same namespace", source: docAP + ": notNamespaces", policies: denyIf(from("{notNamespaces: [bar]}")), req: baseRequest(), want: A},
		{name: "plaintext matches notNamespaces", source: docAP + ": not-forms negate a match that needs mTLS", policies: denyIf(from("{notNamespaces: [bar]}")), req: with(plaintext), want: D},
		{name: "service account ns/name", source: docAP + ": serviceAccounts <namespace>/<serviceaccount>", policies: allowIf(from("{serviceAccounts: [bar/sleep]}")), req: baseRequest(), want: A},
		{name: "service account name only uses policy namespace", source: docAP + ": serviceAccounts <serviceaccount> in the policy namespace", policies: allowIf(from("{serviceAccounts: [sleep]}")), req: baseRequest(), want: D},
		{name: "service account name only same namespace", source: docAP + ": serviceAccounts <serviceaccount> in the policy namespace", policies: allowIf(from("{serviceAccounts: [sleep]}")), req: with(principal("cluster.local/ns/foo/sa/sleep")), want: A},
		{name: "notServiceAccounts", source: docAP + ": notServiceAccounts", policies: denyIf(from("{notServiceAccounts: [bar/sleep]}")), req: baseRequest(), want: A},
		{name: "trustDomains", source: docAP + ": trustDomains", policies: allowIf(from("{trustDomains: [cluster.local]}")), req: baseRequest(), want: A},
		{name: "notTrustDomains", source: docAP + ": notTrustDomains", policies: denyIf(from("{notTrustDomains: [cluster.local]}")), req: with(principal("other/ns/bar/sa/sleep")), want: D},

		// Request principals.
		{name: "requestPrincipals match", source: docJWT + ": requestPrincipals <ISS>/<SUB>", policies: allowIf(from("{requestPrincipals: ['https://accounts.example.com/alice']}")), req: with(jwt), want: A},
		{name: "requestPrincipals presence without JWT", source: docJWT + ": requestPrincipals * requires a valid JWT", policies: allowIf(from("{requestPrincipals: ['*']}")), req: baseRequest(), want: D},
		{name: "requestPrincipals presence with JWT", source: docJWT + ": requestPrincipals *", policies: allowIf(from("{requestPrincipals: ['*']}")), req: with(jwt), want: A},
		{name: "deny notRequestPrincipals * without JWT", source: "istio.io/latest/docs/tasks/security/authentication/authn-policy (require JWT with notRequestPrincipals)", policies: denyIf(from("{notRequestPrincipals: ['*']}")), req: baseRequest(), want: D},
		{name: "deny notRequestPrincipals * with JWT", source: "istio.io/latest/docs/tasks/security/authentication/authn-policy (require JWT with notRequestPrincipals)", policies: denyIf(from("{notRequestPrincipals: ['*']}")), req: with(jwt), want: A},

		// IP blocks.
		{name: "ipBlocks single ip", source: docAP + ": ipBlocks single IP", policies: allowIf(from("{ipBlocks: [10.0.0.1]}")), req: baseRequest(), want: A},
		{name: "ipBlocks cidr", source: docAP + ": ipBlocks CIDR", policies: allowIf(from("{ipBlocks: [10.0.0.0/24]}")), req: baseRequest(), want: A},
		{name: "ipBlocks cidr miss", source: docAP + ": ipBlocks CIDR", policies: allowIf(from("{ipBlocks: [10.0.1.0/24]}")), req: baseRequest(), want: D},
		{name: "notIpBlocks", source: docAP + ": notIpBlocks 203.0.113.4", policies: denyIf(from("{notIpBlocks: [10.0.0.0/8]}")), req: with(srcIP("203.0.113.4")), want: D},
		{name: "ipBlocks ipv6", source: docAP + ": ipBlocks", policies: allowIf(from("{ipBlocks: ['2001:db8::/32']}")), req: with(srcIP("2001:db8::1")), want: A},
		{name: "ipBlocks missing source ip", source: docAP + ": ipBlocks populated from the source address", policies: allowIf(from("{ipBlocks: [0.0.0.0/0]}")), req: with(srcIP("")), want: D},
		{name: "remoteIpBlocks from remote_ip", source: docIP + ": remoteIpBlocks and X-Forwarded-For", policies: allowIf(from("{remoteIpBlocks: [203.0.113.0/24]}")), req: with(func(r *Request) { r.Source.RemoteIP = "203.0.113.9" }), want: A},
		{name: "remoteIpBlocks defaults to source ip", source: docIP + ": remote.ip is the peer without trusted proxies", policies: allowIf(from("{remoteIpBlocks: [10.0.0.1]}")), req: baseRequest(), want: A},
		{name: "notRemoteIpBlocks", source: docIP + ": notRemoteIpBlocks", policies: denyIf(from("{notRemoteIpBlocks: [203.0.113.0/24]}")), req: with(func(r *Request) { r.Source.RemoteIP = "198.51.100.1" }), want: D},

		// when conditions.
		{name: "when header", source: docCond + ": request.headers", policies: allowIf(when("{key: 'request.headers[X-Token]', values: [abc]}")), req: baseRequest(), want: A},
		{name: "when header name case-insensitive", source: docCond + ": request.headers (HTTP header names are case-insensitive)", policies: allowIf(when("{key: 'request.headers[User-Agent]', values: ['curl/*']}")), req: baseRequest(), want: A},
		{name: "when header notValues", source: docCond + ": notValues", policies: allowIf(when("{key: 'request.headers[x-token]', notValues: [abc]}")), req: baseRequest(), want: D},
		{name: "when missing header notValues matches", source: docCond + ": notValues", policies: allowIf(when("{key: 'request.headers[x-none]', notValues: [abc]}")), req: baseRequest(), want: A},
		{name: "when source.ip", source: docCond + ": source.ip", policies: allowIf(when("{key: source.ip, values: [10.0.0.0/16]}")), req: baseRequest(), want: A},
		{name: "when source.ip notValues", source: docCond + ": source.ip", policies: allowIf(when("{key: source.ip, notValues: [10.0.0.1]}")), req: baseRequest(), want: D},
		{name: "when remote.ip", source: docCond + ": remote.ip", policies: allowIf(when("{key: remote.ip, values: [203.0.113.9]}")), req: with(func(r *Request) { r.Source.RemoteIP = "203.0.113.9" }), want: A},
		{name: "when source.namespace", source: docCond + ": source.namespace", policies: allowIf(when("{key: source.namespace, values: [bar]}")), req: baseRequest(), want: A},
		{name: "when source.namespace plaintext", source: docCond + ": source.namespace requires mTLS", policies: allowIf(when("{key: source.namespace, values: [bar]}")), req: with(plaintext), want: D},
		{name: "when source.principal", source: docCond + ": source.principal", policies: allowIf(when("{key: source.principal, values: [" + peer + "]}")), req: baseRequest(), want: A},
		{name: "when source.principal notValues", source: docCond + ": source.principal", policies: allowIf(when("{key: source.principal, notValues: ['*/sa/sleep']}")), req: baseRequest(), want: D},
		{name: "when request.auth.principal", source: docCond + ": request.auth.principal", policies: allowIf(when("{key: request.auth.principal, values: ['https://accounts.example.com/*']}")), req: with(jwt), want: A},
		{name: "when request.auth.audiences any element", source: docCond + ": request.auth.audiences", policies: allowIf(when("{key: request.auth.audiences, values: [other]}")), req: with(jwt), want: A},
		{name: "when request.auth.audiences none", source: docCond + ": request.auth.audiences", policies: allowIf(when("{key: request.auth.audiences, values: [nope]}")), req: with(jwt), want: D},
		{name: "when request.auth.presenter", source: docCond + ": request.auth.presenter", policies: allowIf(when("{key: request.auth.presenter, values: [frontend]}")), req: with(jwt), want: A},
		{name: "when claim string", source: docCond + ": request.auth.claims", policies: allowIf(when("{key: 'request.auth.claims[iss]', values: ['https://accounts.example.com']}")), req: with(jwt), want: A},
		{name: "when claim list any element", source: docJWT + ": list-typed claim groups", policies: allowIf(when("{key: 'request.auth.claims[groups]', values: [ops]}")), req: with(jwt), want: A},
		{name: "when claim list no element", source: docJWT + ": list-typed claim groups", policies: allowIf(when("{key: 'request.auth.claims[groups]', values: [admin]}")), req: with(jwt), want: D},
		{name: "when claim list notValues", source: docJWT + ": list-typed claim groups", policies: allowIf(when("{key: 'request.auth.claims[groups]', notValues: [dev]}")), req: with(jwt), want: D},
		{name: "when nested claim list", source: docJWT + ": nested claims request.auth.claims[nested][key1]", policies: allowIf(when("{key: 'request.auth.claims[nested][key1]', values: [valueB]}")), req: with(jwt), want: A},
		{name: "when nested claim string", source: docJWT + ": nested claims", policies: allowIf(when("{key: 'request.auth.claims[nested][key2]', values: [solo]}")), req: with(jwt), want: A},
		{name: "when nested claim missing", source: docJWT + ": nested claims", policies: allowIf(when("{key: 'request.auth.claims[nested][key3]', values: ['*']}")), req: with(jwt), want: D},
		{name: "when claim without JWT", source: docJWT + ": claims require a JWT", policies: allowIf(when("{key: 'request.auth.claims[iss]', values: ['*']}")), req: baseRequest(), want: D},
		{name: "when destination.ip", source: docCond + ": destination.ip", policies: allowIf(when("{key: destination.ip, values: [10.1.0.0/16]}")), req: baseRequest(), want: A},
		{name: "when destination.port", source: docCond + ": destination.port", policies: allowIf(when("{key: destination.port, values: ['8000']}")), req: baseRequest(), want: A},
		{name: "when destination.port notValues", source: docCond + ": destination.port", policies: allowIf(when("{key: destination.port, notValues: ['8000']}")), req: baseRequest(), want: D},
		{name: "when connection.sni", source: docCond + ": connection.sni", policies: allowIf(when("{key: connection.sni, values: ['*.httpbin.foo.svc.cluster.local']}")), req: baseRequest(), want: A},
		{name: "when connection.sni mismatch", source: docCond + ": connection.sni", policies: allowIf(when("{key: connection.sni, values: [other]}")), req: baseRequest(), want: D},

		// TCP.
		{name: "tcp allow rule with methods dropped", source: docTCP + ": ALLOW with HTTP-only fields on TCP never matches", policies: allowIf(to("{methods: [GET], ports: ['8000']}")), req: with(tcp), want: D},
		{name: "tcp allow rule with ports only", source: docTCP + ": ports apply to TCP", policies: allowIf(to("{ports: ['8000']}")), req: with(tcp), want: A},
		{name: "tcp allow other rule still matches", source: docTCP + ": only the rule using HTTP fields is dropped", policies: allowIf(to("{methods: [GET]}") + "," + from("{namespaces: [bar]}")), req: with(tcp), want: A, by: "foo/allow", rule: 1},
		{name: "tcp allow rule with request principal dropped", source: docTCP + ": requestPrincipals are HTTP-only", policies: allowIf(from("{requestPrincipals: ['*']}")), req: with(tcp), want: D},
		{name: "tcp allow rule with header condition dropped", source: docTCP + ": request.headers is HTTP-only", policies: allowIf(when("{key: 'request.headers[x]', notValues: ['y']}")), req: with(tcp), want: D},
		{name: "tcp deny ignores methods", source: docAP + ": for DENY, missing attributes are treated as matches", policies: denyIf(to("{methods: [POST], ports: ['8000']}")), req: with(tcp), want: D, by: "foo/deny"},
		{name: "tcp deny ignores methods but keeps ports", source: docAP + ": DENY POST on 8080 denies TCP on 8080 only", policies: denyIf(to("{methods: [POST], ports: ['8080']}")), req: with(tcp), want: A},
		{name: "tcp deny with methods only denies all", source: docAP + ": without ports all TCP traffic would be denied", policies: denyIf(to("{methods: [POST]}")), req: with(tcp), want: D},
		{name: "tcp deny ignores header condition", source: docTCP + ": DENY ignores HTTP-only attributes", policies: denyIf("{from: [{source: {namespaces: [bar]}}], when: [{key: 'request.headers[x]', values: ['y']}]}"), req: with(tcp), want: D},
		{name: "tcp deny keeps namespace", source: docTCP + ": DENY keeps TCP attributes", policies: denyIf("{from: [{source: {namespaces: [dev]}}], when: [{key: 'request.headers[x]', values: ['y']}]}"), req: with(tcp), want: A},
		{name: "tcp principals apply", source: docTCP + ": principals work for TCP", policies: allowIf(from("{principals: [" + peer + "]}")), req: with(tcp), want: A},
		{name: "tcp lowercase protocol", source: docTCP + ": TCP traffic", policies: allowIf(to("{paths: ['*']}")), req: with(tcp, func(r *Request) { r.Protocol = "tcp" }), want: D},
		{name: "tcp audit never decides", source: docAP + ": AUDIT", policies: ap("foo", "audit", "{action: AUDIT, rules: [{to: [{operation: {methods: [GET]}}]}]}"), req: with(tcp), want: A},
		{name: "http deny methods applies", source: docAP + ": DENY POST", policies: denyIf(to("{methods: [POST]}")), req: baseRequest(), want: A},
		{name: "tcp custom ignores paths", source: docCustom + ": CUSTOM is enforced like DENY, so on TCP its HTTP-only fields are ignored", policies: ap("foo", "ext", "{action: CUSTOM, provider: {name: ext-authz}, rules: [{to: [{operation: {paths: [/admin/*]}}]}]}"), req: with(tcp, verdict("ext-authz", "DENY")), want: D, by: "foo/ext", action: "CUSTOM"},
		{name: "path query string not matched", source: docAP + ": paths match the URL path without the query string", policies: denyIf(to("{paths: [/admin]}")), req: with(path("/admin?x=1")), want: D, by: "foo/deny"},
		{name: "path fragment not matched", source: docAP + ": paths match the URL path without the fragment", policies: denyIf(to("{paths: [/admin]}")), req: with(path("/admin#top")), want: D, by: "foo/deny"},
		{name: "dry-run annotation 1", source: docAP + ": istio.io/dry-run is a boolean", policies: apAnn("foo", "deny", "{istio.io/dry-run: '1'}", "{action: DENY, rules: [{}]}"), req: baseRequest(), want: A},
	}
}

func TestAuthorizeConformance(t *testing.T) {
	cases := authzCases()
	seen := map[string]bool{}
	for _, tc := range cases {
		if seen[tc.name] {
			t.Fatalf("duplicate case name %q", tc.name)
		}
		seen[tc.name] = true
		if tc.source == "" {
			t.Fatalf("case %q names no source", tc.name)
		}
		t.Run(tc.name, func(t *testing.T) { checkAuthz(t, tc) })
	}
	if len(cases) < 100 {
		t.Errorf("conformance suite has %d cases, want at least 100", len(cases))
	}
}

// runAuthz runs named authorization cases, each citing its source.
func runAuthz(t *testing.T, cases []authzCase) {
	t.Helper()
	seen := map[string]bool{}
	for _, tc := range cases {
		if seen[tc.name] || tc.source == "" {
			t.Fatalf("case %q: duplicate name or no source", tc.name)
		}
		seen[tc.name] = true
		t.Run(tc.name, func(t *testing.T) { checkAuthz(t, tc) })
	}
}

func checkAuthz(t *testing.T, tc authzCase) {
	t.Helper()
	set, err := tc.opts.Parse(tc.name+".yaml", []byte(tc.policies))
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	got := set.Authorize(tc.req)
	if got.Decision != tc.want {
		t.Fatalf("decision = %s, want %s (%s)\n%+v", got.Decision, tc.want, tc.source, got)
	}
	if tc.by != "" || got.Decision == Deny && tc.want == Deny && tc.action == "ALLOW" {
		if got.Policy != tc.by {
			t.Errorf("policy = %q, want %q (%+v)", got.Policy, tc.by, got)
		}
	}
	if tc.by != "" && got.Rule != tc.rule {
		t.Errorf("rule = %d, want %d (%+v)", got.Rule, tc.rule, got)
	}
	if tc.by == "" && got.Policy == "" && got.Rule != -1 {
		t.Errorf("rule = %d without a deciding policy, want -1", got.Rule)
	}
	if tc.action != "" && got.Action != tc.action {
		t.Errorf("action = %q, want %q (%+v)", got.Action, tc.action, got)
	}
	if got.Reason == "" {
		t.Error("decision has no reason")
	}
}

func TestDecisionReasons(t *testing.T) {
	set, err := Parse("r.yaml", []byte(
		ap("foo", "a1", "{rules: [{from: [{source: {namespaces: [x]}}]}]}")+
			apAnn("foo", "dry", `{"istio.io/dry-run": "true"}`, "{action: DENY, rules: [{}]}")+
			ap("foo", "ext", "{action: CUSTOM, provider: {name: authz-svc}, rules: [{}]}")+
			ap("foo", "audit", "{action: AUDIT, rules: [{}]}")))
	if err != nil {
		t.Fatal(err)
	}
	d := set.Authorize(with(verdict("authz-svc", "ALLOW")))
	for _, want := range []string{"no ALLOW policy matched", "foo/a1", "foo/dry", "would deny (dry-run)", `provider "authz-svc" allowed`, "foo/audit"} {
		if !strings.Contains(d.Reason, want) {
			t.Errorf("reason %q lacks %q", d.Reason, want)
		}
	}
	set, err = Parse("r.yaml", []byte(ap("foo", "ext", "{action: CUSTOM, provider: {name: authz-svc}, rules: [{}]}")))
	if err != nil {
		t.Fatal(err)
	}
	d = set.Authorize(baseRequest())
	if d.Decision != Deny || d.Action != "CUSTOM" || !strings.Contains(d.Reason, `provider "authz-svc" decides`) || !strings.Contains(d.Reason, "native policies allow") {
		t.Errorf("undecided provider: %+v", d)
	}
}

func TestRequestDecisionJSON(t *testing.T) {
	in := `{"protocol":"HTTP","workload":{"namespace":"foo","labels":{"app":"a"}},
	"source":{"principal":"cluster.local/ns/bar/sa/sleep","namespace":"bar","ip":"10.0.0.1","remote_ip":"1.2.3.4"},
	"request":{"principal":"iss/sub","claims":{"groups":["a"],"n":{"k":"v"}},"audiences":["x"],"presenter":"p",
	"method":"GET","path":"/","host":"h","headers":{"k":"v"}},"destination":{"ip":"10.1.0.1","port":8080},
	"connection":{"sni":"s"},"custom_verdicts":{"ext":"DENY"}}`
	dec := json.NewDecoder(strings.NewReader(in))
	dec.DisallowUnknownFields()
	var r Request
	if err := dec.Decode(&r); err != nil {
		t.Fatal(err)
	}
	if r.Source.RemoteIP != "1.2.3.4" || r.Destination.Port != 8080 || r.CustomVerdicts["ext"] != "DENY" || r.Request.Presenter != "p" || r.Connection.SNI != "s" {
		t.Errorf("decoded %+v", r)
	}
	out, err := json.Marshal(Decision{Decision: Allow, Action: "ALLOW", Policy: "ns/name", Rule: 0, Reason: "r"})
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"decision":"ALLOW","action":"ALLOW","policy":"ns/name","rule":0,"reason":"r"}`; string(out) != want {
		t.Errorf("decision JSON = %s, want %s", out, want)
	}
}
