package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"sigs.k8s.io/yaml"

	"github.com/meshca/meshca/internal/kubeenv"
	"github.com/meshca/meshca/policy/kube"
)

// TestAuditKube runs meshca audit authz, mtls and lint with --kube against a
// real kube-apiserver holding the security.istio.io CRDs and policies.
func TestAuditKube(t *testing.T) {
	env := kubeenv.Start(t)
	ctx := context.Background()
	kc := clientcmdapi.NewConfig()
	kc.Clusters["test"] = &clientcmdapi.Cluster{Server: env.Config.Host, CertificateAuthorityData: env.Config.CAData}
	kc.AuthInfos["admin"] = &clientcmdapi.AuthInfo{Token: env.Config.BearerToken}
	kc.Contexts["test"] = &clientcmdapi.Context{Cluster: "test", AuthInfo: "admin"}
	kc.CurrentContext = "test"
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*kc, kubeconfig); err != nil {
		t.Fatal(err)
	}
	dc, err := dynamic.NewForConfig(env.Config)
	if err != nil {
		t.Fatal(err)
	}
	apply := func(file string, gvrOf func(kind string) schema.GroupVersionResource) {
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		for _, doc := range strings.Split(string(b), "\n---\n") {
			var obj map[string]any
			if err := yaml.Unmarshal([]byte(doc), &obj); err != nil || obj == nil {
				continue
			}
			u := &unstructured.Unstructured{Object: obj}
			ri := dc.Resource(gvrOf(u.GetKind()))
			if ns := u.GetNamespace(); ns != "" {
				env.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
				_, err = ri.Namespace(ns).Create(ctx, u, metav1.CreateOptions{})
			} else {
				_, err = ri.Create(ctx, u, metav1.CreateOptions{})
			}
			if err != nil && !apierrors.IsAlreadyExists(err) {
				t.Fatalf("create %s: %v", u.GetName(), err)
			}
		}
	}
	apply(filepath.Join("testdata", "audit", "crds.yaml"), func(string) schema.GroupVersionResource {
		return schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
	})
	deadline := time.Now().Add(30 * time.Second)
	for _, gvr := range []schema.GroupVersionResource{kube.AuthorizationPolicies, kube.PeerAuthentications} {
		for _, err := dc.Resource(gvr).List(ctx, metav1.ListOptions{}); err != nil; _, err = dc.Resource(gvr).List(ctx, metav1.ListOptions{}) {
			if time.Now().After(deadline) {
				t.Fatalf("CRD %s not served: %v", gvr.Resource, err)
			}
			time.Sleep(100 * time.Millisecond) // waiting on the API server
		}
	}
	apply(filepath.Join("testdata", "audit", "policies", "mesh.yaml"), func(kind string) schema.GroupVersionResource {
		if kind == "PeerAuthentication" {
			return kube.PeerAuthentications
		}
		return kube.AuthorizationPolicies
	})

	k := []string{"--kube", "--kubeconfig", kubeconfig}
	code, stdout, stderr := runMeshca(t, append([]string{"audit", "authz", "--namespace", "shop", "--labels", "app=checkout",
		"--source-principal", "cluster.local/ns/web/sa/frontend", "--method", "GET", "--path", "/api/x", "-o", "json"}, k...)...)
	if code != 0 || !strings.Contains(stdout, `"policy": "shop/allow-frontend"`) {
		t.Fatalf("authz --kube: exit %d\n%s%s", code, stdout, stderr)
	}
	code, stdout, stderr = runMeshca(t, append([]string{"audit", "authz", "--namespace", "shop", "--labels", "app=checkout",
		"--source-principal", "cluster.local/ns/web/sa/frontend", "--method", "GET", "--path", "/admin/x", "-o", "json"}, k...)...)
	if code != 1 || !strings.Contains(stdout, `"policy": "shop/deny-admin"`) {
		t.Fatalf("authz --kube deny: exit %d\n%s%s", code, stdout, stderr)
	}
	code, stdout, stderr = runMeshca(t, append([]string{"audit", "mtls", "--namespace", "shop", "--labels", "app=checkout", "--port", "8081", "-o", "json"}, k...)...)
	if code != 0 || !strings.Contains(stdout, `"mode": "PERMISSIVE"`) {
		t.Fatalf("mtls --kube: exit %d\n%s%s", code, stdout, stderr)
	}
	// No pods run in this cluster: every selector matches no workload.
	code, stdout, stderr = runMeshca(t, append([]string{"audit", "lint"}, k...)...)
	if code != 1 || !strings.Contains(stdout, "shop/allow-frontend") {
		t.Fatalf("lint --kube: exit %d\n%s%s", code, stdout, stderr)
	}
	if code, _, _ := runMeshca(t, append([]string{"audit", "lint", "--policies", "x"}, k...)...); code != 2 {
		t.Fatalf("--policies with --kube: exit %d, want 2", code)
	}
}
