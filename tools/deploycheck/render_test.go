package deploycheck

import (
	"flag"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
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
