package deploycheck

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

var update = flag.Bool("update", false, "rewrite the golden files in deploy/manifests")

// repo is the repository root, relative to this package.
const repo = "../.."

var chartDir = filepath.Join(repo, "deploy", "charts", "meshca")

// TestGolden renders every variant and compares it with its plain manifest
// in deploy/manifests; -update rewrites them.
func TestGolden(t *testing.T) {
	for _, v := range Variants {
		t.Run(v.Name, func(t *testing.T) {
			got, err := Render(chartDir, v)
			if err != nil {
				t.Fatal(err)
			}
			got = goldenHeader(v) + got
			path := filepath.Join(repo, "deploy", "manifests", v.Name+".yaml")
			if *update {
				if err := os.WriteFile(path, []byte(got), 0o644); err != nil { // #nosec G306 -- a file of the repository
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(path) // #nosec G304 -- a file of the repository
			if err != nil {
				t.Fatalf("%v (make deploy-check DEPLOYCHECK_FLAGS=-update writes it)", err)
			}
			if string(want) != got {
				t.Errorf("%s differs from the chart's rendering: run make deploy-check DEPLOYCHECK_FLAGS=-update and review the diff\n%s", path, firstDiff(string(want), got))
			}
		})
	}
}

// goldenHeader says where a plain manifest comes from.
func goldenHeader(v Variant) string {
	src := "deploy/charts/meshca/values.yaml"
	for _, f := range v.ValuesFiles {
		src += ", deploy/charts/meshca/" + f
	}
	return "# meshca plain manifests, rendered from the Helm chart by `make deploy-check DEPLOYCHECK_FLAGS=-update`\n" +
		"# (tools/deploycheck): release " + ReleaseName + " in namespace " + ReleaseNamespace + ", values " + src + ",\n" +
		"# namespace.create=true. Do not edit: change the chart and render again.\n"
}

// firstDiff shows the first line where want and got differ.
func firstDiff(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	for i := 0; i < len(w) || i < len(g); i++ {
		var wl, gl string
		if i < len(w) {
			wl = w[i]
		}
		if i < len(g) {
			gl = g[i]
		}
		if wl != gl {
			return "line " + strconv.Itoa(i+1) + ":\n  golden:   " + wl + "\n  rendered: " + gl
		}
	}
	return ""
}

// TestChartRefuses shows the chart refuses values that cannot work, with
// a message saying why, before anything reaches a cluster: misspelled or
// mistyped values (values.schema.json) and combinations meshca would
// refuse at start (templates/_helpers.tpl, meshca.validate).
func TestChartRefuses(t *testing.T) {
	pg := map[string]any{"type": "postgres", "postgres": map[string]any{"dsnSecret": map[string]any{"name": "pg"}}}
	for _, tc := range []struct {
		name string
		set  map[string]any
		want string
	}{
		{"misspelled value", map[string]any{"replica": 2}, "replica"},
		{"unknown store", map[string]any{"store": map[string]any{"type": "etcd"}}, "/store/type"},
		{"unknown attestation mode", map[string]any{"kubernetes": map[string]any{"attestation": "oidc"}}, "attestation"},
		{"replicas on bbolt", map[string]any{"replicas": 2}, "replicas > 1 needs store.type=postgres"},
		{"postgres without a DSN", map[string]any{"store": map[string]any{"type": "postgres"}}, "dsnSecret.name"},
		{"postgres with a self-signed root", map[string]any{"store": pg, "adminToken": map[string]any{"secretName": "a"}}, "a root no replica keeps"},
		{"postgres without a shared admin token", map[string]any{"store": pg, "cacerts": map[string]any{"secretName": "cacerts"}}, "adminToken.secretName"},
		{"cacerts and Vault", map[string]any{"cacerts": map[string]any{"secretName": "c"}, "vault": map[string]any{"addr": "https://v:8200"}}, "choose one root"},
		{"Vault AppRole without its Secret", map[string]any{"vault": map[string]any{"addr": "https://v:8200", "auth": "approle"}}, "vault.approle.secretName"},
		{"Vault token without its Secret", map[string]any{"vault": map[string]any{"addr": "https://v:8200", "auth": "token"}}, "vault.token.secretName"},
		{"ambient without informers", map[string]any{"kubernetes": map[string]any{"attestation": "tokenreview", "trustedNodeAccounts": []any{"istio-system/ztunnel"}}}, "needs kubernetes.attestation=informer"},
		{"taking over another ConfigMap", map[string]any{"bundle": map[string]any{"takeOverIstio": true}}, "istio-ca-root-cert"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Render(chartDir, Variant{Name: tc.name, Set: tc.set})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

// TestChartRenders renders values at their edges and checks what they
// must change in the output.
func TestChartRenders(t *testing.T) {
	for _, tc := range []struct {
		name          string
		set           map[string]any
		want, notWant []string
	}{
		{"no memory limit", map[string]any{"resources": map[string]any{"limits": nil}}, []string{"kind: Deployment"}, []string{"GOMEMLIMIT"}},
		{"no Kubernetes API", map[string]any{"kubernetes": map[string]any{"attestation": "off"}, "bundle": map[string]any{"configMap": ""}},
			[]string{"automountServiceAccountToken: false", "--k8s-attestation=off", "--bundle-configmap="},
			[]string{"kind: ClusterRole", "kind: Role", "--token-audiences"}},
		{"bundle ConfigMap in two namespaces", map[string]any{"bundle": map[string]any{"configMapNamespaces": []any{"a", "b"}}},
			[]string{"--bundle-configmap-namespaces=a,b", "name: meshca-bundle\n  namespace: a", "name: meshca-bundle\n  namespace: b"}, nil},
		{"bundle ConfigMap in namespaces by pattern", map[string]any{"bundle": map[string]any{"configMapNamespaces": []any{"team-*"}}},
			[]string{"--bundle-configmap-namespaces=team-*"}, []string{"name: meshca-bundle"}},
		{"Vault PKI with AppRole", map[string]any{"vault": map[string]any{"addr": "https://vault:8200", "auth": "approle",
			"approle": map[string]any{"secretName": "vault-approle"}, "pki": map[string]any{"path": "pki_int/root/sign-intermediate"}}},
			[]string{"--vault-auth=approle", "--vault-approle-role-id-file=/etc/meshca/vault-approle/role-id", "--vault-pki-path=pki_int/root/sign-intermediate", "secretName: vault-approle"},
			[]string{"--vault-transit-key", "vault-token"}},
		{"staged cacerts", map[string]any{"cacerts": map[string]any{"secretName": "cacerts", "nextSecretName": "cacerts-next", "signDirectly": true}},
			[]string{"--cacerts-dir=/etc/cacerts", "--cacerts-next-dir=/etc/cacerts-next", "--cacerts-sign-directly", "optional: true"}, nil},
		{"federation", map[string]any{"federation": map[string]any{"configMap": "meshca-federation"}, "bundle": map[string]any{"endpoint": map[string]any{"enabled": true}}},
			[]string{"--federation-config=/etc/meshca/federation/federation.yaml", "name: meshca-federation", "--bundle-endpoint-listen=:8444", "name: https-bundle"}, nil},
		{"extra arguments", map[string]any{"extraArgs": []any{"--max-inflight-csrs=64"}}, []string{"- --max-inflight-csrs=64"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := Render(chartDir, Variant{Name: tc.name, Set: tc.set})
			if err != nil {
				t.Fatal(err)
			}
			objs, err := decode([]byte(out))
			if err != nil {
				t.Fatalf("the output is not YAML: %v", err)
			}
			if strings.Contains(out, "--bundle-configmap=meshca-root-cert") && clusterCreatesConfigMaps(objs) == (len(roles(objs, "meshca-bundle")) > 0) {
				t.Errorf("ConfigMaps created through the ClusterRole: %v, through %d Roles: want one or the other", clusterCreatesConfigMaps(objs), len(roles(objs, "meshca-bundle")))
			}
			for _, w := range tc.want {
				if !strings.Contains(out, w) {
					t.Errorf("no %q in the output", w)
				}
			}
			for _, w := range tc.notWant {
				if strings.Contains(out, w) {
					t.Errorf("%q in the output", w)
				}
			}
		})
	}
}

// clusterCreatesConfigMaps reports whether the ClusterRole among objs may
// create ConfigMaps.
func clusterCreatesConfigMaps(objs []*unstructured.Unstructured) bool {
	for _, o := range objs {
		if o.GetKind() != "ClusterRole" {
			continue
		}
		rules, _, _ := unstructured.NestedSlice(o.Object, "rules")
		for _, r := range rules {
			r := r.(map[string]any)
			if fmt.Sprint(r["resources"]) == "[configmaps]" && fmt.Sprint(r["verbs"]) == "[create]" {
				return true
			}
		}
	}
	return false
}

// roles returns the Roles named name among objs.
func roles(objs []*unstructured.Unstructured, name string) []*unstructured.Unstructured {
	var out []*unstructured.Unstructured
	for _, o := range objs {
		if o.GetKind() == "Role" && o.GetName() == name {
			out = append(out, o)
		}
	}
	return out
}
