package deploycheck

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"

	"github.com/meshca/meshca/internal/kubeenv"
)

func TestMain(m *testing.M) {
	// The shared apiserver serves the beta certificates APIs the chart's
	// pod-certificate and ClusterTrustBundle settings use, with the Node
	// authorizer and NodeRestriction, so that a test can make a
	// PodCertificateRequest as a kubelet makes it.
	kubeenv.Main(m, kubeenv.PodCertificates())
}

// decode splits a multi-document YAML stream into objects, skipping empty
// documents.
func decode(data []byte) ([]*unstructured.Unstructured, error) {
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
	var out []*unstructured.Unstructured
	for {
		var m map[string]any
		if err := dec.Decode(&m); errors.Is(err, io.EOF) {
			return out, nil
		} else if err != nil {
			return nil, err
		}
		if len(m) == 0 {
			continue
		}
		out = append(out, &unstructured.Unstructured{Object: m})
	}
}

// warnings collects the API server's warning headers (PodSecurity's
// "would violate" among them).
type warnings struct {
	mu   sync.Mutex
	msgs []string
}

func (w *warnings) HandleWarningHeader(_ int, _ string, text string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.msgs = append(w.msgs, text)
}

func (w *warnings) take() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := w.msgs
	w.msgs = nil
	return out
}

// applier applies objects with server-side apply as one identity.
type applier struct {
	client dynamic.Interface
	mapper *restmapper.DeferredDiscoveryRESTMapper
	warn   *warnings
}

func newApplier(t *testing.T, cfg *rest.Config) *applier {
	t.Helper()
	cfg = rest.CopyConfig(cfg)
	w := &warnings{}
	cfg.WarningHandler = w
	client, err := dynamic.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	dc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return &applier{client: client, mapper: restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(dc)), warn: w}
}

// apply server-side applies obj (with every field of it owned by
// "deploycheck"); dryRun only has the API server validate, admit and
// default it.
func (a *applier) apply(ctx context.Context, obj *unstructured.Unstructured, dryRun bool) error {
	gvk := obj.GroupVersionKind()
	m, err := a.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if err != nil {
		return fmt.Errorf("%s %s: %w", gvk.Kind, obj.GetName(), err)
	}
	ri := dynamic.ResourceInterface(a.client.Resource(m.Resource))
	if m.Scope.Name() == "namespace" {
		if obj.GetNamespace() == "" {
			return fmt.Errorf("%s %s: a namespaced object without its namespace", gvk.Kind, obj.GetName())
		}
		ri = a.client.Resource(m.Resource).Namespace(obj.GetNamespace())
	}
	opts := metav1.ApplyOptions{FieldManager: "deploycheck", Force: true}
	if dryRun {
		opts.DryRun = []string{metav1.DryRunAll}
	}
	if _, err := ri.Apply(ctx, obj.GetName(), obj, opts); err != nil {
		return fmt.Errorf("%s %s/%s: %w", gvk.Kind, obj.GetNamespace(), obj.GetName(), err)
	}
	return nil
}

// installCRDs creates the CRDs of testdata/crds and waits until the API
// server serves their kinds.
func (a *applier) installCRDs(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	objs := readObjects(t, filepath.Join("testdata", "crds", "monitoring.coreos.com.yaml"))
	for _, o := range objs {
		if err := a.apply(ctx, o, false); err != nil {
			t.Fatal(err)
		}
	}
	for _, kind := range []string{"ServiceMonitor", "PrometheusRule"} {
		gk := schema.GroupKind{Group: "monitoring.coreos.com", Kind: kind}
		for {
			a.mapper.Reset()
			if _, err := a.mapper.RESTMapping(gk, "v1"); err == nil {
				break
			}
			select {
			case <-ctx.Done():
				t.Fatalf("the API server does not serve %s: %v", gk, ctx.Err())
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
}

func readObjects(t *testing.T, path string) []*unstructured.Unstructured {
	t.Helper()
	b, err := os.ReadFile(path) // #nosec G304 -- files of the repository
	if err != nil {
		t.Fatal(err)
	}
	objs, err := decode(b)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return objs
}

// dryRunAll applies the Namespaces among objs for real (namespaced
// objects need theirs to exist, even in a dry run), then every other
// object with server-side dry-run, and fails t on any refusal or warning.
func (a *applier) dryRunAll(t *testing.T, what string, objs []*unstructured.Unstructured) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	kinds := map[string]int{}
	for _, pass := range []bool{false, true} { // Namespaces first, for real
		for _, o := range objs {
			if (o.GetKind() == "Namespace") == pass {
				continue
			}
			if err := a.apply(ctx, o, pass); err != nil {
				t.Errorf("%s: %v", what, err)
				continue
			}
			kinds[o.GetKind()]++
		}
	}
	for _, w := range a.warn.take() {
		t.Errorf("%s: API server warning: %s", what, w)
	}
	var names []string
	for k, n := range kinds {
		names = append(names, fmt.Sprintf("%s×%d", k, n))
	}
	sort.Strings(names)
	t.Logf("%s: %d objects accepted (%s)", what, len(objs), strings.Join(names, ", "))
}

// TestDryRun applies every rendered variant, and the examples of
// deploy/examples, to the real kube-apiserver with server-side dry-run:
// schemas, defaulting and admission (PodSecurity's warnings for the
// "restricted" level included) accept every object.
func TestDryRun(t *testing.T) {
	env := kubeenv.Get(t)
	a := newApplier(t, env.Config)
	a.installCRDs(t)
	for _, v := range Variants {
		t.Run(v.Name, func(t *testing.T) {
			out, err := Render(chartDir, v)
			if err != nil {
				t.Fatal(err)
			}
			objs, err := decode([]byte(out))
			if err != nil {
				t.Fatal(err)
			}
			a.dryRunAll(t, v.Name, objs)
		})
	}
	examples, err := filepath.Glob(filepath.Join(repo, "deploy", "examples", "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if len(examples) == 0 {
		t.Fatal("no examples in deploy/examples")
	}
	for _, path := range examples {
		t.Run(filepath.Base(path), func(t *testing.T) {
			a.dryRunAll(t, path, readObjects(t, path))
		})
	}
}

// TestDryRunCatches shows that the dry run refuses what it should: the
// chart's Deployment with a misspelled field (an error of server-side
// apply), and with a pod that the "restricted" Pod Security level forbids
// (a warning, which dryRunAll turns into a failure).
func TestDryRunCatches(t *testing.T) {
	env := kubeenv.Get(t)
	a := newApplier(t, env.Config)
	out, err := Render(chartDir, Variants[0])
	if err != nil {
		t.Fatal(err)
	}
	objs, err := decode([]byte(out))
	if err != nil {
		t.Fatal(err)
	}
	var deploy *unstructured.Unstructured
	for _, o := range objs {
		switch o.GetKind() {
		case "Namespace":
			if err := a.apply(context.Background(), o, false); err != nil {
				t.Fatal(err)
			}
		case "Deployment":
			deploy = o
		}
	}
	for _, tc := range []struct {
		name   string
		change func(spec map[string]any)
		want   string
	}{
		{"unknown field", func(spec map[string]any) { spec["containerz"] = []any{} }, "field not declared in schema"},
		{"no seccomp profile", func(spec map[string]any) {
			delete(spec["securityContext"].(map[string]any), "seccompProfile")
		}, "would violate PodSecurity"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := deploy.DeepCopy()
			spec, _, _ := unstructured.NestedMap(o.Object, "spec", "template", "spec")
			tc.change(spec)
			if err := unstructured.SetNestedMap(o.Object, spec, "spec", "template", "spec"); err != nil {
				t.Fatal(err)
			}
			a.warn.take() // earlier warnings are not this case's
			var got string
			if err := a.apply(context.Background(), o, true); err != nil {
				got = err.Error()
			}
			got += strings.Join(a.warn.take(), "\n")
			if !strings.Contains(got, tc.want) {
				t.Errorf("got %q, want an error or warning containing %q", got, tc.want)
			}
		})
	}
}
