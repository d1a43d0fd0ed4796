package policy

import (
	"fmt"
	"testing"
)

const docPA = "istio.io/latest/docs/reference/config/security/peer_authentication"

func pa(ns, name, created, spec string) string {
	ts := ""
	if created != "" {
		ts = ", creationTimestamp: '" + created + "'"
	}
	return fmt.Sprintf("apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata: {name: %s, namespace: %s%s}\nspec: %s\n---\n", name, ns, ts, spec)
}

func TestMTLSMode(t *testing.T) {
	app := map[string]string{"app": "reviews"}
	cases := []struct {
		name, source string
		opts         Options
		policies     string
		ns           string
		labels       map[string]string
		port         uint32
		mode         MTLSMode
		by           string
	}{
		{"default permissive", docPA + ": default PERMISSIVE", Options{}, "", "foo", app, 0, "PERMISSIVE", ""},
		{"mesh-wide strict", docPA + ": mesh-wide policy in root namespace", Options{}, pa("istio-system", "default", "", "{mtls: {mode: STRICT}}"), "foo", app, 0, "STRICT", "istio-system/default"},
		{"custom root namespace", docPA + ": root namespace from meshConfig", Options{RootNamespace: "root"}, pa("root", "default", "", "{mtls: {mode: STRICT}}") + pa("istio-system", "x", "", "{mtls: {mode: DISABLE}}"), "foo", app, 0, "STRICT", "root/default"},
		{"namespace over mesh", docPA + ": namespace-wide overrides mesh-wide", Options{}, pa("istio-system", "default", "", "{mtls: {mode: STRICT}}") + pa("foo", "ns", "", "{mtls: {mode: PERMISSIVE}}"), "foo", app, 0, "PERMISSIVE", "foo/ns"},
		{"other namespace policy ignored", docPA + ": namespace scope", Options{}, pa("bar", "ns", "", "{mtls: {mode: STRICT}}"), "foo", app, 0, "PERMISSIVE", ""},
		{"workload over namespace", docPA + ": workload-specific overrides namespace-wide", Options{}, pa("foo", "ns", "", "{mtls: {mode: STRICT}}") + pa("foo", "wl", "", "{selector: {matchLabels: {app: reviews}}, mtls: {mode: DISABLE}}"), "foo", app, 0, "DISABLE", "foo/wl"},
		{"selector not matching", docPA + ": selector", Options{}, pa("foo", "wl", "", "{selector: {matchLabels: {app: other}}, mtls: {mode: DISABLE}}"), "foo", app, 0, "PERMISSIVE", ""},
		{"root selector applies only in root namespace", docPA + ": selector matches workloads in the policy namespace", Options{}, pa("istio-system", "wl", "", "{selector: {matchLabels: {app: reviews}}, mtls: {mode: STRICT}}"), "foo", app, 0, "PERMISSIVE", ""},
		{"unset workload inherits namespace", docPA + ": UNSET inherits from parent", Options{}, pa("foo", "ns", "", "{mtls: {mode: STRICT}}") + pa("foo", "wl", "", "{selector: {matchLabels: {app: reviews}}, mtls: {mode: UNSET}}"), "foo", app, 0, "STRICT", "foo/ns"},
		{"unset namespace inherits mesh", docPA + ": UNSET inherits from parent", Options{}, pa("istio-system", "default", "", "{mtls: {mode: STRICT}}") + pa("foo", "ns", "", "{mtls: {mode: UNSET}}"), "foo", app, 0, "STRICT", "istio-system/default"},
		{"no mtls field inherits", docPA + ": mtls not set inherits", Options{}, pa("istio-system", "default", "", "{mtls: {mode: DISABLE}}") + pa("foo", "ns", "", "{}"), "foo", app, 0, "DISABLE", "istio-system/default"},
		{"all unset default", docPA + ": UNSET everywhere gives PERMISSIVE", Options{}, pa("istio-system", "default", "", "{mtls: {mode: UNSET}}"), "foo", app, 0, "PERMISSIVE", ""},
		{"port level", docPA + ": portLevelMtls", Options{}, pa("foo", "wl", "", "{selector: {matchLabels: {app: reviews}}, mtls: {mode: STRICT}, portLevelMtls: {'8080': {mode: DISABLE}}}"), "foo", app, 8080, "DISABLE", "foo/wl"},
		{"port level other port", docPA + ": portLevelMtls", Options{}, pa("foo", "wl", "", "{selector: {matchLabels: {app: reviews}}, mtls: {mode: STRICT}, portLevelMtls: {'8080': {mode: DISABLE}}}"), "foo", app, 9090, "STRICT", "foo/wl"},
		{"port level unset inherits workload", docPA + ": portLevelMtls UNSET", Options{}, pa("foo", "wl", "", "{selector: {matchLabels: {app: reviews}}, mtls: {mode: STRICT}, portLevelMtls: {'8080': {mode: UNSET}}}"), "foo", app, 8080, "STRICT", "foo/wl"},
		{"port level over namespace with unset workload", docPA + ": portLevelMtls with workload UNSET", Options{}, pa("foo", "ns", "", "{mtls: {mode: STRICT}}") + pa("foo", "wl", "", "{selector: {matchLabels: {app: reviews}}, portLevelMtls: {'8080': {mode: PERMISSIVE}}}"), "foo", app, 8080, "PERMISSIVE", "foo/wl"},
		{"port 0 ignores port level", docPA + ": workload-level mode", Options{}, pa("foo", "wl", "", "{selector: {matchLabels: {app: reviews}}, mtls: {mode: STRICT}, portLevelMtls: {'8080': {mode: DISABLE}}}"), "foo", app, 0, "STRICT", "foo/wl"},
		{"oldest workload policy wins", docPA + ": oldest policy wins", Options{}, pa("foo", "a-new", "2024-02-01T00:00:00Z", "{selector: {matchLabels: {app: reviews}}, mtls: {mode: DISABLE}}") + pa("foo", "z-old", "2024-01-01T00:00:00Z", "{selector: {matchLabels: {app: reviews}}, mtls: {mode: STRICT}}"), "foo", app, 0, "STRICT", "foo/z-old"},
		{"oldest namespace policy wins", docPA + ": oldest policy wins", Options{}, pa("foo", "a-new", "2024-02-01T00:00:00Z", "{mtls: {mode: DISABLE}}") + pa("foo", "z-old", "2024-01-01T00:00:00Z", "{mtls: {mode: STRICT}}"), "foo", app, 0, "STRICT", "foo/z-old"},
		{"equal age name wins", docPA + ": tie broken by name", Options{}, pa("foo", "b", "2024-01-01T00:00:00Z", "{mtls: {mode: DISABLE}}") + pa("foo", "a", "2024-01-01T00:00:00Z", "{mtls: {mode: STRICT}}"), "foo", app, 0, "STRICT", "foo/a"},
		{"oldest mesh policy wins", docPA + ": oldest policy wins", Options{}, pa("istio-system", "a", "2024-03-01T00:00:00Z", "{mtls: {mode: DISABLE}}") + pa("istio-system", "b", "2023-01-01T00:00:00Z", "{mtls: {mode: STRICT}}"), "foo", app, 0, "STRICT", "istio-system/b"},
		// istio.io/latest/docs/reference/config/security/peer_authentication: "PeerAuthentication
		// policies with workload selectors are ignored when deployed in the root namespace."
		{"selector policy in root namespace ignored", docPA + ": root namespace selector policies ignored", Options{}, pa("istio-system", "default", "", "{mtls: {mode: STRICT}}") + pa("istio-system", "gw", "", "{selector: {matchLabels: {app: reviews}}, mtls: {mode: PERMISSIVE}}"), "istio-system", app, 0, "STRICT", "istio-system/default"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			set, err := tc.opts.Parse("pa.yaml", []byte(tc.policies))
			if err != nil {
				t.Fatal(err)
			}
			mode, by := set.MTLSMode(tc.ns, tc.labels, tc.port)
			if mode != tc.mode || by != tc.by {
				t.Errorf("MTLSMode = %s, %q; want %s, %q (%s)", mode, by, tc.mode, tc.by, tc.source)
			}
		})
	}
}

// TestMTLSModeIgnoredParts follows istio/istio
// pilot/pkg/security/authn/policy_applier.go (ComposePeerAuthentication:
// a policy with a selector counts only outside the root namespace, and
// portLevelMtls is read from the workload policy alone; its test "ignore
// non-emptypb selector in root namespace") and the PeerAuthentication API
// note "policies with workload selectors are ignored when deployed in the
// root namespace". Istio's validation refuses portLevelMtls without a
// selector, but istiod ignores it where it gets one, and so does MTLSMode.
func TestMTLSModeIgnoredParts(t *testing.T) {
	const src = "istio/istio pilot/pkg/security/authn/policy_applier.go ComposePeerAuthentication"
	app := map[string]string{"app": "reviews"}
	other := map[string]string{"app": "other"}
	rootSel := pa("istio-system", "gw", "2020-01-01T00:00:00Z", "{selector: {matchLabels: {app: reviews}}, mtls: {mode: STRICT}}")
	mesh := pa("istio-system", "default", "2024-01-01T00:00:00Z", "{mtls: {mode: DISABLE}}")
	cases := []struct {
		name, policies, ns string
		labels             map[string]string
		port               uint32
		mode               MTLSMode
		by                 string
	}{
		{"root selector ignored for the workload it selects", rootSel, "istio-system", app, 0, MTLSPermissive, ""},
		{"root selector ignored for other root workloads", rootSel, "istio-system", other, 0, MTLSPermissive, ""},
		{"root selector ignored in other namespaces", rootSel, "foo", app, 0, MTLSPermissive, ""},
		{"older root selector does not beat the mesh policy", rootSel + mesh, "istio-system", app, 0, MTLSDisable, "istio-system/default"},
		{"root selector port level ignored", pa("istio-system", "gw", "", "{selector: {matchLabels: {app: reviews}}, portLevelMtls: {'8080': {mode: STRICT}}}"), "istio-system", app, 8080, MTLSPermissive, ""},
		{"mesh-wide mode for root workloads", mesh, "istio-system", other, 0, MTLSDisable, "istio-system/default"},
		{"namespace policy port level ignored", pa("foo", "ns", "", "{mtls: {mode: STRICT}, portLevelMtls: {'8080': {mode: DISABLE}}}"), "foo", app, 8080, MTLSStrict, "foo/ns"},
		{"mesh policy port level ignored", pa("istio-system", "default", "", "{mtls: {mode: PERMISSIVE}, portLevelMtls: {'8080': {mode: STRICT}}}"), "foo", app, 8080, MTLSPermissive, "istio-system/default"},
		{"selector port level still applies", pa("foo", "ns", "", "{mtls: {mode: STRICT}, portLevelMtls: {'8080': {mode: DISABLE}}}") + pa("foo", "wl", "", "{selector: {matchLabels: {app: reviews}}, portLevelMtls: {'8080': {mode: DISABLE}}}"), "foo", app, 8080, MTLSDisable, "foo/wl"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			set, err := Parse("pa.yaml", []byte(tc.policies))
			if err != nil {
				t.Fatal(err)
			}
			if mode, by := set.MTLSMode(tc.ns, tc.labels, tc.port); mode != tc.mode || by != tc.by {
				t.Errorf("MTLSMode = %s, %q; want %s, %q (%s)", mode, by, tc.mode, tc.by, src)
			}
		})
	}
}
