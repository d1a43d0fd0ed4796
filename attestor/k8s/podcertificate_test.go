package k8s_test

import (
	"errors"
	"reflect"
	"testing"

	certificatesv1beta1 "k8s.io/api/certificates/v1beta1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshca/meshca/attestor"
	"github.com/meshca/meshca/attestor/k8s"
)

// TestPodCertificateIdentity: the request's namespace and ServiceAccount
// make the SPIFFE ID, the allow and deny lists apply, and the details name
// the pod, the node and the request.
func TestPodCertificateIdentity(t *testing.T) {
	adm, err := k8s.NewAdmission(k8s.AdmissionConfig{Config: k8s.Config{TrustDomain: td, Allow: []string{"team-*", "ops/agent"}}})
	if err != nil {
		t.Fatal(err)
	}
	req := func(ns, sa string) *certificatesv1beta1.PodCertificateRequest {
		return &certificatesv1beta1.PodCertificateRequest{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "req-1", UID: "r-uid"},
			Spec: certificatesv1beta1.PodCertificateRequestSpec{SignerName: "meshca.io/spiffe", PodName: "web-0", PodUID: "p-uid",
				ServiceAccountName: sa, ServiceAccountUID: "sa-uid", NodeName: "n1", NodeUID: "n-uid"},
		}
	}
	for _, tc := range []struct {
		name, ns, sa string
		want         string // the SPIFFE ID, or "" when refused
	}{
		{"allowed namespace", "team-a", "web", "spiffe://example.org/ns/team-a/sa/web"},
		{"allowed ServiceAccount", "ops", "agent", "spiffe://example.org/ns/ops/sa/agent"},
		{"other ServiceAccount of that namespace", "ops", "web", ""},
		{"namespace not allowed", "default", "web", ""},
		{"denied by default", "kube-system", "web", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id, err := adm.PodCertificateIdentity(req(tc.ns, tc.sa))
			if tc.want == "" {
				if !errors.Is(err, attestor.ErrPermissionDenied) {
					t.Fatalf("got %v, %v; want ErrPermissionDenied", id.ID, err)
				}
				return
			}
			if err != nil || id.ID.String() != tc.want {
				t.Fatalf("got %v, %v; want %s", id.ID, err, tc.want)
			}
			wantDetails := map[string]string{k8s.DetailPodName: "web-0", k8s.DetailPodUID: "p-uid", k8s.DetailServiceAccountUID: "sa-uid",
				k8s.DetailNode: "n1", k8s.DetailRequestName: "req-1", k8s.DetailRequestUID: "r-uid"}
			if id.Kind != k8s.KindPodCertificate || id.Subject != "system:node:n1" || !reflect.DeepEqual(id.Details, wantDetails) {
				t.Errorf("identity %+v", id)
			}
		})
	}
}
