package kubeenv

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"reflect"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestOptionsArgs: the options' feature gates and runtime config are
// merged into one flag each.
func TestOptionsArgs(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts []Option
		want []string
	}{
		{"none", nil, []string{"--authorization-mode=RBAC"}},
		{"cluster trust bundles", []Option{ClusterTrustBundles()}, []string{"--authorization-mode=RBAC",
			"--feature-gates=ClusterTrustBundle=true", "--runtime-config=certificates.k8s.io/v1beta1/clustertrustbundles=true"}},
		{"pod certificates, with cluster trust bundles again", []Option{ClusterTrustBundles(), PodCertificates("n1", "n2")}, []string{
			"--authorization-mode=Node,RBAC", "--enable-admission-plugins=NodeRestriction",
			"--feature-gates=ClusterTrustBundle=true,ClusterTrustBundleProjection=true,PodCertificateRequest=true",
			"--runtime-config=certificates.k8s.io/v1beta1/clustertrustbundles=true,certificates.k8s.io/v1beta1/podcertificaterequests=true"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := newOptions(tc.opts).args()
			// The two joined flags come in map order.
			if len(got) != len(tc.want) {
				t.Fatalf("args %q, want %q", got, tc.want)
			}
			for _, w := range tc.want {
				found := false
				for _, g := range got {
					found = found || g == w
				}
				if !found {
					t.Errorf("args %q lack %q", got, w)
				}
			}
		})
	}
}

// TestPodCertificates: with PodCertificates, a node creates its Node and a
// PodCertificateRequest for a pod on it, as a kubelet does; it may not
// answer the request itself, nor ask for a pod on another node.
func TestPodCertificates(t *testing.T) {
	e := Start(t, PodCertificates("n1", "n2"))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	n1 := e.CreateNode(t, "n1")
	e.CreateNode(t, "n2")
	sa := e.CreateServiceAccount(t, "shop", "web")
	p := e.CreatePod(t, "shop", "web-0", "web", "n1")
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	req := PodCertificateRequest(t, p, sa, n1, "example.com/signer", key)
	created := e.CreatePodCertificateRequest(t, req)
	if got := created.Spec.MaxExpirationSeconds; got == nil || *got != 86400 {
		t.Errorf("maxExpirationSeconds defaulted to %v, want 86400", got)
	}
	created.Status.Conditions = []metav1.Condition{{Type: "Denied", Status: metav1.ConditionTrue, Reason: "ByTheNode", LastTransitionTime: metav1.Now()}}
	if _, err := e.NodeClient(t, "n1").CertificatesV1beta1().PodCertificateRequests("shop").UpdateStatus(ctx, created, metav1.UpdateOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("the node answered its own request: %v", err)
	}
	other := req.DeepCopy()
	if _, err := e.NodeClient(t, "n2").CertificatesV1beta1().PodCertificateRequests("shop").Create(ctx, other, metav1.CreateOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("n2 asked for a pod of n1: %v", err)
	}
	if !reflect.DeepEqual(created.Spec.PKIXPublicKey, req.Spec.PKIXPublicKey) {
		t.Error("the key changed")
	}
}
