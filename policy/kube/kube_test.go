package kube_test

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"sigs.k8s.io/yaml"

	"github.com/meshca/meshca/internal/kubeenv"
	"github.com/meshca/meshca/policy"
	"github.com/meshca/meshca/policy/kube"
)

// These tests run against a real kube-apiserver and etcd (make testenv).
func TestMain(m *testing.M) { kubeenv.Main(m) }

var crdGVR = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

// installCRDs creates the security.istio.io CRDs and waits until they serve.
func installCRDs(t *testing.T, dc dynamic.Interface) {
	t.Helper()
	b, err := os.ReadFile("testdata/crds.yaml")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, doc := range strings.Split(string(b), "\n---\n") {
		var obj map[string]any
		if err := yaml.Unmarshal([]byte(doc), &obj); err != nil {
			t.Fatal(err)
		}
		if _, err := dc.Resource(crdGVR).Create(ctx, &unstructured.Unstructured{Object: obj}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for _, gvr := range []schema.GroupVersionResource{kube.AuthorizationPolicies, kube.PeerAuthentications} {
		for {
			if _, err := dc.Resource(gvr).List(ctx, metav1.ListOptions{}); err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("CRD %s not served", gvr.Resource)
			}
			time.Sleep(100 * time.Millisecond) // waiting on the API server, not on our own code
		}
	}
}

func create(t *testing.T, env *kubeenv.Env, dc dynamic.Interface, gvr schema.GroupVersionResource, y string) {
	t.Helper()
	var obj map[string]any
	if err := yaml.Unmarshal([]byte(y), &obj); err != nil {
		t.Fatal(err)
	}
	u := &unstructured.Unstructured{Object: obj}
	ctx := context.Background()
	if _, err := env.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: u.GetNamespace()}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	if _, err := dc.Resource(gvr).Namespace(u.GetNamespace()).Create(ctx, u, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// The shared API server outlives the test (go test -count=N).
	t.Cleanup(func() {
		dc.Resource(gvr).Namespace(u.GetNamespace()).Delete(context.Background(), u.GetName(), metav1.DeleteOptions{})
	})
}

const allowFrontend = `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-frontend, namespace: shop}
spec:
  selector: {matchLabels: {app: checkout}}
  rules:
  - from: [{source: {principals: ["cluster.local/ns/web/sa/frontend"]}}]
`

const strictShop = `apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: strict, namespace: shop}
spec: {mtls: {mode: STRICT}}
`

const denyAll = `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-all, namespace: shop}
spec:
  action: DENY
  rules: [{}]
`

func request(principal string) policy.Request {
	return policy.Request{Workload: policy.Workload{Namespace: "shop", Labels: map[string]string{"app": "checkout"}},
		Source: policy.Source{Principal: principal}, Request: policy.HTTPRequest{Method: "GET", Path: "/"}}
}

func TestLoadAndWatchFromTheAPIServer(t *testing.T) {
	env := kubeenv.Get(t)
	dc, err := dynamic.NewForConfig(env.Config)
	if err != nil {
		t.Fatal(err)
	}
	installCRDs(t, dc)
	create(t, env, dc, kube.AuthorizationPolicies, allowFrontend)
	create(t, env, dc, kube.PeerAuthentications, strictShop)

	set, err := kube.Load(context.Background(), dc, policy.Options{})
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if d := set.Authorize(request("spiffe://cluster.local/ns/web/sa/frontend")); d.Decision != policy.Allow || d.Policy != "shop/allow-frontend" {
		t.Fatalf("frontend: %+v", d)
	}
	if d := set.Authorize(request("spiffe://cluster.local/ns/web/sa/other")); d.Decision != policy.Deny {
		t.Fatalf("other: %+v", d)
	}
	if mode, pol := set.MTLSMode("shop", nil, 0); mode != "STRICT" || pol != "shop/strict" {
		t.Fatalf("mTLS %s %s", mode, pol)
	}

	// Live: a DENY policy created now reaches the watcher.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sets := make(chan *policy.Set, 16)
	go kube.Watch(ctx, dc, policy.Options{}, func(s *policy.Set, err error) {
		if err != nil {
			t.Errorf("Watch: %v", err)
			return
		}
		sets <- s
	})
	first := <-sets
	if d := first.Authorize(request("spiffe://cluster.local/ns/web/sa/frontend")); d.Decision != policy.Allow {
		t.Fatalf("watched set before the change: %+v", d)
	}
	create(t, env, dc, kube.AuthorizationPolicies, denyAll)
	timeout := time.After(30 * time.Second)
	for {
		select {
		case s := <-sets:
			if d := s.Authorize(request("spiffe://cluster.local/ns/web/sa/frontend")); d.Decision == policy.Deny && d.Policy == "shop/deny-all" {
				return
			}
		case <-timeout:
			t.Fatal("the new DENY policy never reached the watcher")
		}
	}
}

// TestLoadRefusesMisspelledFields: an object the API server accepted (the
// CRD schema is open) is still held to istio.io/api's schema.
func TestLoadRefusesMisspelledFields(t *testing.T) {
	env := kubeenv.Get(t)
	dc, err := dynamic.NewForConfig(env.Config)
	if err != nil {
		t.Fatal(err)
	}
	installCRDs(t, dc)
	create(t, env, dc, kube.AuthorizationPolicies, `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: typo, namespace: typo}
spec:
  rulez: [{}]
`)
	_, err = kube.Load(context.Background(), dc, policy.Options{})
	if err == nil || !strings.Contains(err.Error(), "rulez") || !strings.Contains(err.Error(), "AuthorizationPolicy/typo/typo") {
		t.Fatalf("Load = %v, want an error naming the field and the object", err)
	}
}
