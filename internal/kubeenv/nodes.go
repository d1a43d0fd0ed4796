package kubeenv

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"fmt"
	"testing"
	"time"

	certificatesv1beta1 "k8s.io/api/certificates/v1beta1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/meshca/meshca/internal/pki"
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

// ProofOfPossession is what a kubelet puts in a PodCertificateRequest's
// proofOfPossession: the ASCII bytes of podUID signed with key (ECDSA,
// ASN.1, over SHA-256; RSA-PSS over SHA-256; Ed25519).
func ProofOfPossession(key crypto.Signer, podUID types.UID) ([]byte, error) {
	sum := sha256.Sum256([]byte(podUID))
	switch k := key.(type) {
	case ed25519.PrivateKey:
		return ed25519.Sign(k, []byte(podUID)), nil
	case *rsa.PrivateKey:
		return rsa.SignPSS(rand.Reader, k, crypto.SHA256, sum[:], nil)
	case *ecdsa.PrivateKey:
		return ecdsa.SignASN1(rand.Reader, k, sum[:])
	}
	return nil, fmt.Errorf("kubeenv: no proof of possession for a %T", key)
}

// PodCertificateRequest returns the request the kubelet of pod's node
// makes for pod (running as sa on node) to signer, for key: named
// <pod>-<random>, with key's public key and its proof of possession.
func PodCertificateRequest(t testing.TB, pod *corev1.Pod, sa *corev1.ServiceAccount, node *corev1.Node, signer string, key crypto.Signer) *certificatesv1beta1.PodCertificateRequest {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		t.Fatal(err)
	}
	pop, err := ProofOfPossession(key, pod.UID)
	if err != nil {
		t.Fatal(err)
	}
	return &certificatesv1beta1.PodCertificateRequest{
		ObjectMeta: metav1.ObjectMeta{Namespace: pod.Namespace, GenerateName: pod.Name + "-"},
		Spec: certificatesv1beta1.PodCertificateRequestSpec{SignerName: signer, PodName: pod.Name, PodUID: pod.UID,
			ServiceAccountName: sa.Name, ServiceAccountUID: sa.UID, NodeName: types.NodeName(node.Name), NodeUID: node.UID,
			PKIXPublicKey: der, ProofOfPossession: pop},
	}
}

// CreatePodCertificateRequest creates req as its node (NodeClient), and
// returns it as created. NodeRestriction reads informer caches that may
// lag a pod just created, so a refusal other than Forbidden is tried again
// for up to 30 s.
func (e *Env) CreatePodCertificateRequest(t testing.TB, req *certificatesv1beta1.PodCertificateRequest) *certificatesv1beta1.PodCertificateRequest {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	reqs := e.NodeClient(t, string(req.Spec.NodeName)).CertificatesV1beta1().PodCertificateRequests(req.Namespace)
	for {
		got, err := reqs.Create(ctx, req, metav1.CreateOptions{})
		if err == nil {
			return got
		}
		if apierrors.IsForbidden(err) || ctx.Err() != nil {
			t.Fatalf("kubeenv: create PodCertificateRequest as node %s: %v", req.Spec.NodeName, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// IssuedPodCertificate asks, as node's kubelet, for a certificate of signer
// for pod (running as sa) with a new P-256 key, waits up to a minute for
// the signer's answer, fails the test unless the request is Issued, and
// returns the key, the answered request and its chain, leaf first.
func (e *Env) IssuedPodCertificate(t testing.TB, pod *corev1.Pod, sa *corev1.ServiceAccount, node *corev1.Node, signer string) (*ecdsa.PrivateKey, *certificatesv1beta1.PodCertificateRequest, []*x509.Certificate) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	req := e.CreatePodCertificateRequest(t, PodCertificateRequest(t, pod, sa, node, signer, key))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	reqs := e.Client.CertificatesV1beta1().PodCertificateRequests(req.Namespace)
	for {
		got, err := reqs.Get(ctx, req.Name, metav1.GetOptions{})
		if err == nil && len(got.Status.Conditions) > 0 {
			if c := got.Status.Conditions[0]; c.Type != certificatesv1beta1.PodCertificateRequestConditionTypeIssued {
				t.Fatalf("kubeenv: PodCertificateRequest %s/%s: condition %s (%s: %s), want Issued", req.Namespace, req.Name, c.Type, c.Reason, c.Message)
			}
			chain, err := pki.ParseCertificates([]byte(got.Status.CertificateChain))
			if err != nil {
				t.Fatalf("kubeenv: PodCertificateRequest %s/%s: the chain: %v", req.Namespace, req.Name, err)
			}
			return key, got, chain
		}
		if ctx.Err() != nil {
			t.Fatalf("kubeenv: PodCertificateRequest %s/%s not answered in a minute (last error: %v)", req.Namespace, req.Name, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
