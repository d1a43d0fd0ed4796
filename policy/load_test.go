package policy

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestLoadErrors(t *testing.T) {
	cases := []struct {
		name string
		doc  string
		want string // substring of the error, which always carries file and document
	}{
		{"bad CIDR ipBlocks", ap("foo", "p", "{rules: [{from: [{source: {ipBlocks: [10.0.0.0/33]}}]}]}"), "spec.rules[0].from[0].source.ipBlocks[0]: invalid IP address or CIDR"},
		{"bad CIDR remoteIpBlocks", ap("foo", "p", "{rules: [{from: [{source: {remoteIpBlocks: [1.2.3.4, nope]}}]}]}"), "spec.rules[0].from[0].source.remoteIpBlocks[1]"},
		{"bad CIDR notIpBlocks", ap("foo", "p", "{rules: [{}, {from: [{source: {notIpBlocks: [300.1.1.1]}}]}]}"), "spec.rules[1].from[0].source.notIpBlocks[0]"},
		{"path star in middle", ap("foo", "p", "{rules: [{to: [{operation: {paths: ['/a/*/b']}}]}]}"), "spec.rules[0].to[0].operation.paths[0]: invalid path"},
		{"notPaths star in middle", ap("foo", "p", "{rules: [{to: [{operation: {notPaths: ['/a*b']}}]}]}"), "spec.rules[0].to[0].operation.notPaths[0]"},
		{"bad path template", ap("foo", "p", "{rules: [{to: [{operation: {paths: ['/{**}/foo/{*}']}}]}]}"), "invalid path template"},
		{"unknown when key", ap("foo", "p", "{rules: [{when: [{key: request.foo, values: [x]}]}]}"), `spec.rules[0].when[0].key: unknown condition key "request.foo"`},
		{"when without values", ap("foo", "p", "{rules: [{when: [{key: source.ip}]}]}"), "spec.rules[0].when[0]: at least one of values or notValues"},
		{"when bad ip", ap("foo", "p", "{rules: [{when: [{key: destination.ip, values: [x]}]}]}"), "spec.rules[0].when[0].values[0]"},
		{"when bad port", ap("foo", "p", "{rules: [{when: [{key: destination.port, values: [http]}]}]}"), "invalid port"},
		{"bad header key", ap("foo", "p", "{rules: [{when: [{key: 'request.headers[]', values: [x]}]}]}"), "invalid header key"},
		{"empty from source", ap("foo", "p", "{rules: [{from: [{source: {}}]}]}"), "spec.rules[0].from[0].source: must not be empty"},
		{"missing from source", ap("foo", "p", "{rules: [{from: [{}]}]}"), "spec.rules[0].from[0].source: must not be empty"},
		{"empty to operation", ap("foo", "p", "{rules: [{to: [{operation: {}}]}]}"), "spec.rules[0].to[0].operation: must not be empty"},
		{"custom without provider", ap("foo", "p", "{action: CUSTOM, rules: [{}]}"), "spec.provider: required when action is CUSTOM"},
		{"provider without custom", ap("foo", "p", "{action: DENY, provider: {name: x}, rules: [{}]}"), "spec.provider: must only be set"},
		{"bad port", ap("foo", "p", "{rules: [{to: [{operation: {ports: ['99999']}}]}]}"), "spec.rules[0].to[0].operation.ports[0]: invalid port"},
		{"unknown kind", "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: x}\nspec: {}\n", `kind: unknown kind "RequestAuthentication"`},
		{"wrong apiVersion", "apiVersion: networking.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: x}\n", "apiVersion: unsupported apiVersion"},
		{"misspelled field", ap("foo", "p", "{rules: [{from: [{source: {principal: [a]}}]}]}"), `spec.rules[0].from[0].source.principal: unknown field "principal"`},
		{"misspelled top field", ap("foo", "p", "{actions: DENY}"), `spec.actions: unknown field`},
		{"wrong type", ap("foo", "p", "{rules: [{to: [{operation: {ports: [8080]}}]}]}"), "spec.rules[0].to[0].operation.ports[0]: expected a string"},
		{"unknown action", ap("foo", "p", "{action: REJECT}"), `spec.action: unknown value "REJECT"`},
		{"unknown mtls mode", pa("foo", "p", "", "{mtls: {mode: STRICTEST}}"), `spec.mtls.mode: unknown value "STRICTEST"`},
		{"missing name", "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {namespace: x}\n", "metadata.name: required"},
		{"bad timestamp", "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: x, creationTimestamp: yesterday}\n", "metadata.creationTimestamp"},
		{"unknown top-level field", "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: x}\nspecs: {}\n", "not a Kubernetes object"},
		{"invalid yaml", "kind: [\n", "invalid YAML"},
		{"duplicate", ap("foo", "ok", "{}"), "duplicate AuthorizationPolicy foo/ok (first in in.yaml document 0)"},
		{"selector and targetRefs", ap("foo", "p", "{selector: {matchLabels: {a: b}}, targetRefs: [{kind: Gateway, name: g}]}"), "only one of selector"},
		{"serviceAccounts wildcard", ap("foo", "p", "{rules: [{from: [{source: {serviceAccounts: ['ns/*']}}]}]}"), "spec.rules[0].from[0].source.serviceAccounts[0]"},
		{"bad portLevelMtls port", pa("foo", "p", "", "{selector: {matchLabels: {a: b}}, portLevelMtls: {'0': {mode: STRICT}}}"), "spec.portLevelMtls[0]: port must be in 1-65535"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			// A valid document first, so the failing one is document 1.
			data := ap("foo", "ok", "{}") + tc.doc
			set, err := Parse("in.yaml", []byte(data))
			if err == nil {
				t.Fatalf("no error; set %+v", set)
			}
			if set != nil {
				t.Error("set returned with an error")
			}
			var list ErrorList
			if !errors.As(err, &list) || len(list) == 0 {
				t.Fatalf("error %T is not an ErrorList: %v", err, err)
			}
			msg := err.Error()
			if !strings.HasPrefix(msg, "policy: in.yaml: document 1: ") {
				t.Errorf("error %q does not name file and document 1", msg)
			}
			if !strings.Contains(msg, tc.want) {
				t.Errorf("error %q lacks %q", msg, tc.want)
			}
		})
	}
}

func TestLoadCollectsAllErrors(t *testing.T) {
	_, err := Parse("x.yaml", []byte(ap("a", "p", "{action: CUSTOM}")+ap("a", "q", "{rules: [{from: [{source: {ipBlocks: [x]}}]}]}")))
	var list ErrorList
	if !errors.As(err, &list) || len(list) != 2 || list[0].Document != 0 || list[1].Document != 1 {
		t.Fatalf("got %v", err)
	}
}

func TestLoadFilesAndDirectories(t *testing.T) {
	dir := t.TempDir()
	write := func(name, data string) string {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	write("a.yaml", "# comment\n---\n"+ap("foo", "deny", "{action: DENY, rules: [{}]}")+"---\n")
	write("sub/b.yml", "apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata:\n  name: default\n  creationTimestamp: '2024-01-01T00:00:00Z'\n  annotations: {team: sec}\n  labels: {x: y}\n  uid: abc\nspec:\n  mtls:\n    mode: STRICT\n")
	write("notes.txt", "not yaml: [")
	set, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(set.AuthorizationPolicies) != 1 || len(set.PeerAuthentications) != 1 {
		t.Fatalf("loaded %d AP, %d PA", len(set.AuthorizationPolicies), len(set.PeerAuthentications))
	}
	p := set.PeerAuthentications[0]
	if p.Namespace != "default" || p.Annotations["team"] != "sec" || !p.CreationTimestamp.Equal(time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)) || p.Document != 0 {
		t.Errorf("meta %+v", p.Meta)
	}
	if d := set.AuthorizationPolicies[0].Document; d != 1 {
		t.Errorf("document index %d, want 1 (after the comment-only document)", d)
	}
	bad := write("bad/c.yaml", ap("foo", "x", "{action: CUSTOM}"))
	if _, err := Load(bad); err == nil || !strings.Contains(err.Error(), bad+": document 0: spec.provider") {
		t.Errorf("Load(file) error = %v", err)
	}
	if _, err := Load(filepath.Join(dir, "missing")); err == nil {
		t.Error("missing path: no error")
	}
	if _, err := (Options{RootNamespace: "r"}).Load(filepath.Join(dir, "a.yaml")); err != nil {
		t.Error(err)
	}
}

func TestParseAcceptsJSONAndV1beta1(t *testing.T) {
	js := `{"apiVersion":"security.istio.io/v1beta1","kind":"AuthorizationPolicy","metadata":{"name":"j","namespace":"n"},"spec":{"action":"DENY","rules":[{"to":[{"operation":{"notPaths":["/x"]}}]}]}}`
	set, err := Parse("j.json", []byte(js))
	if err != nil {
		t.Fatal(err)
	}
	if got := set.AuthorizationPolicies[0].Spec.GetRules()[0].GetTo()[0].GetOperation().GetNotPaths(); len(got) != 1 {
		t.Errorf("notPaths = %v", got)
	}
}

// TestParseRefusesWhatTheCRDRefuses: protojson accepts these, the CRD
// schema (and Istio's validation) do not.
func TestParseRefusesWhatTheCRDRefuses(t *testing.T) {
	for name, tc := range map[string]struct{ spec, msg string }{
		"snake_case field": {`{"rules":[{"to":[{"operation":{"not_paths":["/x"]}}]}]}`, `spec.rules[0].to[0].operation.not_paths: unknown field "not_paths" (did you mean "notPaths"?)`},
		"numeric action":   {`{"action":9}`, `spec.action: expected an enum name, got a number`},
		"empty principal":  {`{"rules":[{"from":[{"source":{"requestPrincipals":[""]}}]}]}`, `spec.rules[0].from[0].source.requestPrincipals[0]: must not be an empty string`},
		"empty when value": {`{"rules":[{"when":[{"key":"request.headers[x]","values":[""]}]}]}`, `spec.rules[0].when[0].values[0]: must not be an empty string`},
	} {
		t.Run(name, func(t *testing.T) {
			js := `{"apiVersion":"security.istio.io/v1","kind":"AuthorizationPolicy","metadata":{"name":"j","namespace":"n"},"spec":` + tc.spec + `}`
			_, err := Parse("j.json", []byte(js))
			if err == nil || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("Parse = %v, want an error saying %q", err, tc.msg)
			}
		})
	}
}

// FuzzLoad checks that the loader never panics on arbitrary input, and that
// whatever it accepts can be evaluated without panicking.
func FuzzLoad(f *testing.F) {
	for _, tc := range authzCases() {
		f.Add([]byte(tc.policies))
	}
	f.Add([]byte(pa("foo", "p", "2024-01-01T00:00:00Z", "{selector: {matchLabels: {a: b}}, portLevelMtls: {'80': {mode: STRICT}}}")))
	f.Add([]byte(ap("foo", "md", "{rules: [{when: [{key: 'experimental.envoy.filters.network.mysql_proxy[db.table]', values: ['[update]']}, {key: source.serviceAccount, values: [a/b]}, {key: source.trustDomain, notValues: ['*.org']}]}]}")))
	f.Add([]byte("---\n---\n"))
	f.Add([]byte("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: x}\nspec: [1]\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		set, err := Parse("fuzz.yaml", data)
		if err != nil {
			if set != nil {
				t.Fatal("set and error both returned")
			}
			_ = err.Error()
			return
		}
		set.Authorize(with(jwt))
		set.Authorize(with(tcp, plaintext))
		set.MTLSMode("foo", map[string]string{"a": "b"}, 80)
	})
}

func Example() {
	set, err := Parse("policies.yaml", []byte(`
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: httpbin, namespace: foo}
spec:
  rules:
  - from: [{source: {principals: ["cluster.local/ns/bar/sa/sleep"]}}]
    to: [{operation: {methods: ["GET"]}}]
`))
	if err != nil {
		fmt.Println(err)
		return
	}
	d := set.Authorize(Request{
		Workload: Workload{Namespace: "foo"},
		Source:   Source{Principal: "spiffe://cluster.local/ns/bar/sa/sleep"},
		Request:  HTTPRequest{Method: "POST"},
	})
	fmt.Println(d.Decision, d.Reason)
	// Output: DENY no ALLOW policy matched (applicable: foo/httpbin)
}
