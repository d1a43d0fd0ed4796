package kubeenv

import (
	"context"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// NodeConfig returns a client configuration that authenticates as the
// kubelet of node name, system:node:<name> in group system:nodes: the Node
// authorizer and NodeRestriction decide what it may do. The node must be
// one of those given to PodCertificates.
func (e *Env) NodeConfig(t testing.TB, name string) *rest.Config {
	t.Helper()
	token, ok := e.nodeTokens[name]
	if !ok {
		t.Fatalf("kubeenv: no node %q: start the Env with PodCertificates(%q)", name, name)
	}
	cfg := rest.AnonymousClientConfig(e.Config)
	cfg.BearerToken = token
	return cfg
}

// NodeClient is a clientset of NodeConfig.
func (e *Env) NodeClient(t testing.TB, name string) kubernetes.Interface {
	t.Helper()
	c, err := kubernetes.NewForConfig(e.NodeConfig(t, name))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// CreateNode creates the Node name as its own kubelet does (NodeClient),
// unless it exists, and returns it.
func (e *Env) CreateNode(t testing.TB, name string) *corev1.Node {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	nodes := e.NodeClient(t, name).CoreV1().Nodes()
	n, err := nodes.Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		n, err = nodes.Get(ctx, name, metav1.GetOptions{})
	}
	if err != nil {
		t.Fatalf("kubeenv: create node %s: %v", name, err)
	}
	return n
}

// CreatePod creates the pod ns/name, running as ServiceAccount sa, bound to
// node (no scheduler runs), and returns it. The namespace and the
// ServiceAccount must exist (CreateServiceAccount); nothing runs the pod.
func (e *Env) CreatePod(t testing.TB, ns, name, sa, node string) *corev1.Pod {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p, err := e.Client.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.PodSpec{ServiceAccountName: sa, NodeName: node,
			Containers: []corev1.Container{{Name: "app", Image: "registry.invalid/app:1"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("kubeenv: create pod %s/%s: %v", ns, name, err)
	}
	return p
}
