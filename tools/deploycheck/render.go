package deploycheck

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/engine"
	"helm.sh/helm/v3/pkg/releaseutil"
	"sigs.k8s.io/yaml"
)

// Release is the name and namespace every variant is rendered with: the
// plain manifests install meshca as release "meshca" in "meshca-system".
const (
	ReleaseName      = "meshca"
	ReleaseNamespace = "meshca-system"
	// KubeVersion is the Kubernetes version the chart is rendered for: the
	// test apiserver's.
	KubeVersion = "v1.35.4"
)

// Variant is one way of rendering the chart: the chart's values.yaml,
// then ValuesFiles (relative to the chart, later ones win), then Set.
type Variant struct {
	// Name names the golden file deploy/manifests/<Name>.yaml.
	Name        string
	ValuesFiles []string
	// Set holds values as nested maps, applied last (helm's --set).
	Set map[string]any
}

// plain is what every plain manifest sets: the Namespace object, which a
// Helm release leaves to `helm install --create-namespace`.
var plain = map[string]any{"namespace": map[string]any{"create": true}}

// Variants are the renderings kept as plain manifests in deploy/manifests.
var Variants = []Variant{
	{Name: "meshca", Set: plain},
	{Name: "meshca-vault", ValuesFiles: []string{"ci/vault-values.yaml"}, Set: plain},
	{Name: "meshca-ha", ValuesFiles: []string{"ci/ha-values.yaml"}, Set: plain},
	{Name: "meshca-istio", ValuesFiles: []string{"ci/istio-values.yaml"}, Set: plain},
	{Name: "meshca-podcert", ValuesFiles: []string{"ci/podcert-values.yaml"}, Set: plain},
}

// Render renders the chart in chartDir as `helm template` does (release
// ReleaseName in ReleaseNamespace, Kubernetes KubeVersion) with strict
// templates: a reference to a value the chart does not define is an
// error. It returns the manifests in Helm's install order, each under a
// "# Source:" comment, and fails on a chart that renders no object.
func Render(chartDir string, v Variant) (string, error) {
	chrt, err := loader.Load(chartDir)
	if err != nil {
		return "", fmt.Errorf("load chart: %w", err)
	}
	vals := map[string]any{}
	for _, f := range v.ValuesFiles {
		b, err := os.ReadFile(filepath.Join(chartDir, f)) // #nosec G304 -- the chart's own files
		if err != nil {
			return "", err
		}
		var m map[string]any
		if err := yaml.Unmarshal(b, &m); err != nil {
			return "", fmt.Errorf("%s: %w", f, err)
		}
		vals = Merge(vals, m)
	}
	vals = Merge(vals, v.Set)
	caps := chartutil.DefaultCapabilities.Copy()
	caps.KubeVersion = chartutil.KubeVersion{Version: KubeVersion, Major: "1", Minor: "35"}
	top, err := chartutil.ToRenderValues(chrt, vals, chartutil.ReleaseOptions{
		Name: ReleaseName, Namespace: ReleaseNamespace, Revision: 1, IsInstall: true,
	}, caps)
	if err != nil {
		return "", err
	}
	files, err := engine.Engine{Strict: true}.Render(chrt, top)
	if err != nil {
		return "", err
	}
	for name := range files {
		if strings.HasSuffix(name, "NOTES.txt") {
			delete(files, name) // rendered (so checked), not a manifest
		}
	}
	hooks, manifests, err := releaseutil.SortManifests(files, caps.APIVersions, releaseutil.InstallOrder)
	if err != nil {
		return "", err
	}
	if len(hooks) > 0 {
		return "", fmt.Errorf("the chart has %d hooks; plain manifests cannot carry them", len(hooks))
	}
	if len(manifests) == 0 {
		return "", fmt.Errorf("variant %s renders nothing", v.Name)
	}
	var b strings.Builder
	for _, m := range manifests {
		fmt.Fprintf(&b, "---\n# Source: %s\n%s\n", m.Name, strings.TrimSpace(m.Content))
	}
	return b.String(), nil
}

// Merge returns dst with src merged into it, src winning; maps are merged
// key by key, anything else replaced.
func Merge(dst, src map[string]any) map[string]any {
	out := make(map[string]any, len(dst)+len(src))
	for k, v := range dst {
		out[k] = v
	}
	for k := range src {
		sm, sok := src[k].(map[string]any)
		dm, dok := out[k].(map[string]any)
		if sok && dok {
			out[k] = Merge(dm, sm)
			continue
		}
		out[k] = src[k]
	}
	return out
}
