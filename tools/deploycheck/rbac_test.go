package deploycheck

import (
	"context"
	"crypto/x509"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/meshca/meshca/internal/kubeenv"
)

// saUser is the user name of the chart's ServiceAccount.
const saUser = "system:serviceaccount:" + ReleaseNamespace + ":" + ReleaseName

// access is one request of the ServiceAccount, as a SubjectAccessReview
// asks about it.
type access struct {
	verb, group, resource, sub, ns, name string
	// path makes it a request for a non-resource URL.
	path string
}

func (a access) String() string {
	if a.path != "" {
		return a.verb + " " + a.path
	}
	s := a.verb + " " + a.resource
	if a.sub != "" {
		s += "/" + a.sub
	}
	if a.group != "" {
		s += "." + a.group
	}
	if a.name != "" {
		s += " " + a.name
	}
	if a.ns != "" {
		return s + " in " + a.ns
	}
	return s + " (cluster-wide)"
}

// allowed asks the API server whether the chart's ServiceAccount may do a.
func allowed(t *testing.T, client kubernetes.Interface, a access) bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	spec := authorizationv1.SubjectAccessReviewSpec{
		User:   saUser,
		Groups: []string{"system:serviceaccounts", "system:serviceaccounts:" + ReleaseNamespace, "system:authenticated"},
	}
	if a.path != "" {
		spec.NonResourceAttributes = &authorizationv1.NonResourceAttributes{Verb: a.verb, Path: a.path}
	} else {
		spec.ResourceAttributes = &authorizationv1.ResourceAttributes{Verb: a.verb, Group: a.group, Resource: a.resource,
			Subresource: a.sub, Namespace: a.ns, Name: a.name}
	}
	r, err := client.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authorizationv1.SubjectAccessReview{Spec: spec}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return r.Status.Allowed
}

// neverAllowed is what meshca must not be able to do whatever its values:
// read Secrets, mint tokens, change workloads, RBAC or nodes, write
// other ConfigMaps, Leases or ClusterTrustBundles, or vouch for another
// signer.
var neverAllowed = []access{
	{verb: "list", resource: "secrets"},
	{verb: "get", resource: "secrets", ns: ReleaseNamespace, name: "cacerts"},
	{verb: "watch", resource: "secrets", ns: "kube-system"},
	{verb: "create", resource: "serviceaccounts", sub: "token", ns: "app-a", name: "web"},
	{verb: "create", resource: "pods", ns: "app-a"},
	{verb: "delete", resource: "pods", ns: "app-a", name: "x"},
	{verb: "update", resource: "serviceaccounts", ns: "app-a", name: "web"},
	{verb: "get", resource: "nodes", name: "n1"},
	{verb: "create", resource: "namespaces"},
	{verb: "delete", resource: "configmaps", ns: "kube-system", name: "meshca-root-cert"},
	{verb: "update", resource: "configmaps", ns: "kube-system", name: "kube-root-ca.crt"},
	{verb: "get", resource: "configmaps", ns: "kube-system", name: "kube-root-ca.crt"},
	{verb: "list", resource: "configmaps", ns: "kube-system"},
	{verb: "update", group: "coordination.k8s.io", resource: "leases", ns: "kube-system", name: "kube-controller-manager"},
	{verb: "update", group: "coordination.k8s.io", resource: "leases", ns: ReleaseNamespace, name: "someone-else"},
	{verb: "create", group: "rbac.authorization.k8s.io", resource: "clusterrolebindings"},
	{verb: "escalate", group: "rbac.authorization.k8s.io", resource: "clusterroles", name: ReleaseName},
	{verb: "impersonate", resource: "users", name: "admin"},
	{verb: "impersonate", resource: "serviceaccounts", ns: "app-a", name: "web"},
	{verb: "update", group: "certificates.k8s.io", resource: "clustertrustbundles", name: "kubernetes.io:kube-apiserver-serving:x"},
	{verb: "attest", group: "certificates.k8s.io", resource: "signers", name: "kubernetes.io/kube-apiserver-client"},
	{verb: "sign", group: "certificates.k8s.io", resource: "signers", name: "kubernetes.io/kube-apiserver-client"},
	{verb: "approve", group: "certificates.k8s.io", resource: "signers", name: "meshca.io/spiffe"},
	{verb: "update", group: "certificates.k8s.io", resource: "certificatesigningrequests", sub: "status", name: "x"},
	{verb: "create", group: "certificates.k8s.io", resource: "podcertificaterequests", ns: "app-a"},
	{verb: "update", group: "certificates.k8s.io", resource: "podcertificaterequests", ns: "app-a", name: "x"},
	{verb: "delete", group: "certificates.k8s.io", resource: "podcertificaterequests", ns: "app-a", name: "x"},
}

// rbacCase is a set of chart values whose RBAC is checked.
type rbacCase struct {
	name string
	set  map[string]any
	// allow and deny are what the ServiceAccount must, and must not, be
	// allowed with these values (besides neverAllowed).
	allow, deny []access
	// run starts the real server under the RBAC and checks its work
	// (nil: SubjectAccessReviews only).
	run func(t *testing.T, env *kubeenv.Env, s *server)
	// needsFlag names a server flag the values render that the binary
	// may not have yet; without it the server is not run.
	needsFlag string
}

var (
	informerList = []access{
		{verb: "list", resource: "serviceaccounts"}, {verb: "watch", resource: "serviceaccounts"},
		{verb: "list", resource: "pods"}, {verb: "watch", resource: "pods"},
	}
	bundleConfigMap = []access{
		{verb: "list", resource: "namespaces"}, {verb: "watch", resource: "namespaces"},
		// The informer lists and watches with fieldSelector metadata.name=meshca-root-cert.
		{verb: "list", resource: "configmaps", name: "meshca-root-cert"},
		{verb: "watch", resource: "configmaps", name: "meshca-root-cert"},
		{verb: "update", resource: "configmaps", ns: "app-a", name: "meshca-root-cert"},
	}
)

var rbacCases = []rbacCase{
	{
		name: "informer and bundle ConfigMaps (default values)",
		allow: append(append([]access{
			{verb: "get", path: "/openid/v1/jwks"},
			{verb: "create", resource: "configmaps", ns: "app-a"},
			{verb: "create", resource: "configmaps", ns: "kube-system"}, // create cannot name its object
		}, informerList...), bundleConfigMap...),
		deny: []access{
			{verb: "create", group: "authentication.k8s.io", resource: "tokenreviews"},
			{verb: "get", resource: "serviceaccounts", ns: "app-a", name: "web"},
			{verb: "get", resource: "pods", ns: "app-a", name: "x"},
			{verb: "list", resource: "configmaps"}, // without the name
			{verb: "update", resource: "configmaps", ns: "app-a", name: "other"},
			{verb: "get", group: "coordination.k8s.io", resource: "leases", ns: ReleaseNamespace, name: "meshca-leader"},
			{verb: "create", group: "certificates.k8s.io", resource: "clustertrustbundles"},
			{verb: "attest", group: "certificates.k8s.io", resource: "signers", name: "meshca.io/spiffe"},
			{verb: "list", group: "certificates.k8s.io", resource: "podcertificaterequests"},
		},
		run: runInformer,
	},
	{
		name: "tokenreview, leader election, ClusterTrustBundle, ConfigMaps in two namespaces",
		set: map[string]any{
			"kubernetes":     map[string]any{"attestation": "tokenreview"},
			"leaderElection": map[string]any{"enabled": true},
			"bundle":         map[string]any{"clusterTrustBundleSigner": "meshca.io/spiffe", "configMapNamespaces": []any{"app-b", "default"}},
		},
		allow: append([]access{
			{verb: "create", group: "authentication.k8s.io", resource: "tokenreviews"},
			{verb: "get", resource: "serviceaccounts", ns: "app-a", name: "web"},
			{verb: "create", group: "coordination.k8s.io", resource: "leases", ns: ReleaseNamespace},
			{verb: "get", group: "coordination.k8s.io", resource: "leases", ns: ReleaseNamespace, name: "meshca-leader"},
			{verb: "update", group: "coordination.k8s.io", resource: "leases", ns: ReleaseNamespace, name: "meshca-leader"},
			{verb: "create", resource: "configmaps", ns: "app-b"},
			{verb: "create", resource: "configmaps", ns: "default"},
			{verb: "list", group: "certificates.k8s.io", resource: "clustertrustbundles", name: "meshca.io:spiffe:cluster.local"},
			{verb: "watch", group: "certificates.k8s.io", resource: "clustertrustbundles", name: "meshca.io:spiffe:cluster.local"},
			{verb: "update", group: "certificates.k8s.io", resource: "clustertrustbundles", name: "meshca.io:spiffe:cluster.local"},
			{verb: "create", group: "certificates.k8s.io", resource: "clustertrustbundles"},
			{verb: "attest", group: "certificates.k8s.io", resource: "signers", name: "meshca.io/spiffe"},
		}, bundleConfigMap...),
		deny: []access{
			{verb: "list", resource: "pods"},
			{verb: "watch", resource: "serviceaccounts"},
			{verb: "create", resource: "configmaps", ns: "app-a"},
			{verb: "create", resource: "configmaps", ns: "kube-system"},
			{verb: "create", group: "coordination.k8s.io", resource: "leases", ns: "kube-system"},
			// Reading every ClusterTrustBundle, and the JWKS, the API server's
			// default bindings grant every ServiceAccount; writing is the chart's.
			{verb: "update", group: "certificates.k8s.io", resource: "clustertrustbundles", name: "meshca.io:other:cluster.local"},
			{verb: "attest", group: "certificates.k8s.io", resource: "signers", name: "meshca.io/other"},
		},
		run: runTokenReviewLeader,
	},
	{
		name: "jwks",
		set:  map[string]any{"kubernetes": map[string]any{"attestation": "jwks"}, "bundle": map[string]any{"configMap": ""}},
		allow: []access{
			{verb: "get", resource: "serviceaccounts", ns: "app-a", name: "web"},
			{verb: "get", path: "/openid/v1/jwks"},
		},
		deny: []access{
			{verb: "list", resource: "pods"},
			{verb: "create", group: "authentication.k8s.io", resource: "tokenreviews"},
			{verb: "list", resource: "namespaces"},
			{verb: "create", resource: "configmaps", ns: "app-a"},
			{verb: "watch", resource: "configmaps", name: "meshca-root-cert"},
		},
	},
	{
		// meshca's --pod-certificate-signer: the server runs when its
		// binary has the flag.
		name: "pod certificates",
		set:  map[string]any{"podCertificates": map[string]any{"enabled": true}},
		allow: append(append([]access{
			{verb: "list", group: "certificates.k8s.io", resource: "podcertificaterequests"},
			{verb: "watch", group: "certificates.k8s.io", resource: "podcertificaterequests"},
			{verb: "update", group: "certificates.k8s.io", resource: "podcertificaterequests", sub: "status", ns: "app-a", name: "x"},
			{verb: "sign", group: "certificates.k8s.io", resource: "signers", name: "meshca.io/spiffe"},
			{verb: "attest", group: "certificates.k8s.io", resource: "signers", name: "meshca.io/spiffe"},
			{verb: "update", group: "certificates.k8s.io", resource: "clustertrustbundles", name: "meshca.io:spiffe:cluster.local"},
		}, informerList...), bundleConfigMap...),
		deny: []access{
			{verb: "get", group: "certificates.k8s.io", resource: "podcertificaterequests", ns: "app-a", name: "x"},
			{verb: "sign", group: "certificates.k8s.io", resource: "signers", name: "meshca.io/other"},
			{verb: "sign", group: "certificates.k8s.io", resource: "signers", name: "meshca.io/*"},
		},
		needsFlag: "--pod-certificate-signer",
		run:       runPodCertificates,
	},
}

// TestRBAC applies the chart's ServiceAccount, ClusterRole, Role and their
// bindings for each case, asks the API server what the ServiceAccount may
// do, and runs the real `meshca server` with the arguments the chart
// renders under exactly that RBAC: what it needs works, and the server
// logs no refusal.
func TestRBAC(t *testing.T) {
	env := kubeenv.Get(t)
	for _, ns := range []string{"app-a", "app-b"} {
		env.CreateServiceAccount(t, ns, "web")
	}
	a := newApplier(t, env.Config)
	for _, tc := range rbacCases {
		t.Run(tc.name, func(t *testing.T) {
			out, err := Render(chartDir, Variant{Name: "rbac", Set: Merge(plain, tc.set)})
			if err != nil {
				t.Fatal(err)
			}
			objs, err := decode([]byte(out))
			if err != nil {
				t.Fatal(err)
			}
			applyRBAC(t, a, objs)
			// The authorizer reads RBAC from its informers: give them a moment.
			var missing []access
			for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
				missing = missing[:0]
				for _, acc := range tc.allow {
					if !allowed(t, env.Client, acc) {
						missing = append(missing, acc)
					}
				}
				if len(missing) == 0 || time.Now().After(deadline) {
					break
				}
			}
			for _, acc := range missing {
				t.Errorf("the chart does not allow %s", acc)
			}
			for _, acc := range append(tc.deny, neverAllowed...) {
				if allowed(t, env.Client, acc) {
					t.Errorf("the chart allows %s", acc)
				}
			}
			if tc.run == nil || t.Failed() {
				return
			}
			if tc.needsFlag != "" && !strings.Contains(run(t, "server", "--help"), tc.needsFlag+" ") {
				t.Logf("meshca server has no %s yet: these values are checked by SubjectAccessReviews only", tc.needsFlag)
				return
			}
			kubeconfig := impersonatingKubeconfig(t, env, saUser)
			checkImpersonation(t, kubeconfig)
			dataDir := t.TempDir()
			s := startServer(t, outsidePod(t, serverArgs(t, objs), dataDir, kubeconfig), dataDir)
			tc.run(t, env, s)
			if logs := s.logs.String(); strings.Contains(strings.ToLower(logs), "forbidden") {
				t.Errorf("the API server refused meshca something:\n%s", logs)
			}
		})
	}
}

// applyRBAC applies, for real, the Namespace, ServiceAccount and RBAC
// objects of objs, and deletes the RBAC objects when t ends.
func applyRBAC(t *testing.T, a *applier, objs []*unstructured.Unstructured) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	kinds := map[string]bool{"Namespace": true, "ServiceAccount": true, "ClusterRole": true, "ClusterRoleBinding": true, "Role": true, "RoleBinding": true}
	for _, o := range objs {
		if !kinds[o.GetKind()] {
			continue
		}
		if err := a.apply(ctx, o, false); err != nil {
			t.Fatal(err)
		}
		if o.GetKind() == "Namespace" || o.GetKind() == "ServiceAccount" {
			continue
		}
		t.Cleanup(func() {
			gvk := o.GroupVersionKind()
			m, err := a.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
			if err != nil {
				t.Error(err)
				return
			}
			err = a.client.Resource(m.Resource).Namespace(o.GetNamespace()).Delete(context.Background(), o.GetName(), metav1.DeleteOptions{})
			if err != nil && !apierrors.IsNotFound(err) {
				t.Error(err)
			}
		})
	}
}

// checkImpersonation shows the kubeconfig meshca gets holds only the
// ServiceAccount's rights: a request outside them is refused.
func checkImpersonation(t *testing.T, kubeconfig string) {
	t.Helper()
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := client.CoreV1().Secrets("").List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("listing Secrets as %s: %v, want Forbidden", saUser, err)
	}
	if _, err := client.CoreV1().Pods("app-a").Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "x"}}, metav1.CreateOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("creating a Pod as %s: %v, want Forbidden", saUser, err)
	}
}

// runInformer: a token is attested against the informer caches, a deleted
// ServiceAccount is refused once its watch event arrives, and the bundle
// ConfigMap appears in the workloads' namespaces.
func runInformer(t *testing.T, env *kubeenv.Env, s *server) {
	sa := env.CreateServiceAccount(t, "app-a", "informer-sa")
	token := env.Token(t, "app-a", "informer-sa", []string{"meshca"}, 10*time.Minute)
	id := "spiffe://cluster.local/ns/app-a/sa/informer-sa"
	if code, _ := s.sign(t, id, token, nil); code != http.StatusOK {
		t.Fatalf("CSR with a ServiceAccount token: HTTP %d", code)
	}
	waitForBundleConfigMaps(t, env, s, "app-a", "app-b", "default")
	// An edited ConfigMap is put back (an update).
	cm, err := env.Client.CoreV1().ConfigMaps("app-a").Get(context.Background(), "meshca-root-cert", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cm.Data["root-cert.pem"] = "edited"
	if _, err := env.Client.CoreV1().ConfigMaps("app-a").Update(context.Background(), cm, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitForBundleConfigMaps(t, env, s, "app-a")
	if err := env.Client.CoreV1().ServiceAccounts("app-a").Delete(context.Background(), sa.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a token of a deleted ServiceAccount refused", func(context.Context) bool {
		code, _ := s.sign(t, id, token, nil)
		return code == http.StatusUnauthorized
	})
	t.Logf("informer mode: %s issued; refused once its ServiceAccount was deleted; bundle ConfigMaps written, and put back when edited", id)
}

// runTokenReviewLeader: a token is attested by a TokenReview, a renewal
// over mTLS looks the ServiceAccount up, the replica takes the Lease, and
// as leader writes the ClusterTrustBundle and the ConfigMaps of the two
// namespaces it may create them in.
func runTokenReviewLeader(t *testing.T, env *kubeenv.Env, s *server) {
	token := env.Token(t, "app-a", "web", []string{"meshca"}, 10*time.Minute)
	id := "spiffe://cluster.local/ns/app-a/sa/web"
	code, first := s.sign(t, id, token, nil)
	if code != http.StatusOK {
		t.Fatalf("CSR with a ServiceAccount token: HTTP %d", code)
	}
	if n := s.metric(t, `meshca_k8s_tokenreviews_total{result="ok"}`); n < 1 {
		t.Errorf("meshca_k8s_tokenreviews_total{result=\"ok\"} = %v, want a TokenReview", n)
	}
	if code, _ := s.sign(t, id, "", first); code != http.StatusOK {
		t.Fatalf("renewal over mTLS: HTTP %d", code)
	}
	if n := s.metric(t, `meshca_k8s_serviceaccount_lookups_total{result="found"}`); n < 1 {
		t.Errorf("meshca_k8s_serviceaccount_lookups_total{result=\"found\"} = %v, want a lookup", n)
	}
	var renewed *metav1.MicroTime
	waitFor(t, "meshca holds the Lease", func(ctx context.Context) bool {
		l, err := env.Client.CoordinationV1().Leases(ReleaseNamespace).Get(ctx, "meshca-leader", metav1.GetOptions{})
		if err != nil || l.Spec.HolderIdentity == nil || *l.Spec.HolderIdentity == "" || s.metric(t, "meshca_leader") != 1 {
			return false
		}
		renewed = l.Spec.RenewTime
		return true
	})
	waitFor(t, "meshca renews the Lease (an update)", func(ctx context.Context) bool {
		l, err := env.Client.CoordinationV1().Leases(ReleaseNamespace).Get(ctx, "meshca-leader", metav1.GetOptions{})
		return err == nil && l.Spec.RenewTime != nil && renewed != nil && l.Spec.RenewTime.After(renewed.Time)
	})
	bundle := strings.TrimSpace(string(s.bundle(t)))
	waitFor(t, "the ClusterTrustBundle holds the bundle", func(ctx context.Context) bool {
		ctb, err := env.Client.CertificatesV1beta1().ClusterTrustBundles().Get(ctx, "meshca.io:spiffe:cluster.local", metav1.GetOptions{})
		return err == nil && ctb.Spec.SignerName == "meshca.io/spiffe" && strings.TrimSpace(ctb.Spec.TrustBundle) == bundle
	})
	// A ClusterTrustBundle that lost meshca's label is overwritten (an update).
	ctbs := env.Client.CertificatesV1beta1().ClusterTrustBundles()
	ctb, err := ctbs.Get(context.Background(), "meshca.io:spiffe:cluster.local", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	delete(ctb.Labels, "app.kubernetes.io/managed-by")
	if _, err := ctbs.Update(context.Background(), ctb, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the ClusterTrustBundle labelled meshca's again", func(ctx context.Context) bool {
		ctb, err := ctbs.Get(ctx, "meshca.io:spiffe:cluster.local", metav1.GetOptions{})
		return err == nil && ctb.Labels["app.kubernetes.io/managed-by"] == "meshca"
	})
	waitForBundleConfigMaps(t, env, s, "app-b", "default")
	t.Logf("tokenreview mode: %s issued (TokenReview) and renewed over mTLS (ServiceAccount lookup); Lease taken and renewed; ClusterTrustBundle written and put back; ConfigMaps of app-b and default written", id)
}

// waitForBundleConfigMaps waits until meshca-root-cert in each namespace
// holds the server's bundle.
func waitForBundleConfigMaps(t *testing.T, env *kubeenv.Env, s *server, namespaces ...string) {
	t.Helper()
	bundle := strings.TrimSpace(string(s.bundle(t)))
	for _, ns := range namespaces {
		waitFor(t, "the bundle ConfigMap in "+ns, func(ctx context.Context) bool {
			cm, err := env.Client.CoreV1().ConfigMaps(ns).Get(ctx, "meshca-root-cert", metav1.GetOptions{})
			return err == nil && strings.TrimSpace(cm.Data["root-cert.pem"]) == bundle
		})
	}
}

// runPodCertificates: the signer answers a PodCertificateRequest that a
// node makes for one of its pods, as a kubelet makes it (the API server
// accepts the answer only from who holds "sign" on the signer, and writes
// it through podcertificaterequests/status), with the pod's SVID chained to
// the bundle; and the signer-linked ClusterTrustBundle of its signer is
// published.
func runPodCertificates(t *testing.T, env *kubeenv.Env, s *server) {
	const signer = "meshca.io/spiffe"
	bundle := strings.TrimSpace(string(s.bundle(t)))
	waitFor(t, "the pod signer's ClusterTrustBundle holds the bundle", func(ctx context.Context) bool {
		ctb, err := env.Client.CertificatesV1beta1().ClusterTrustBundles().Get(ctx, "meshca.io:spiffe:cluster.local", metav1.GetOptions{})
		return err == nil && strings.TrimSpace(ctb.Spec.TrustBundle) == bundle
	})
	node := env.CreateNode(t, kubeenv.NodeName)
	sa := env.CreateServiceAccount(t, "app-a", "web")
	pod := env.CreatePod(t, "app-a", "podcert-"+strconv.FormatInt(time.Now().UnixNano()%(1<<30), 36), sa.Name, node.Name)
	_, _, chain := env.IssuedPodCertificate(t, pod, sa, node, signer)
	const id = "spiffe://cluster.local/ns/app-a/sa/web"
	leaf := chain[0]
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != id {
		t.Errorf("the pod's certificate names %v, want %s", leaf.URIs, id)
	}
	roots, inters := x509.NewCertPool(), x509.NewCertPool()
	roots.AppendCertsFromPEM([]byte(bundle))
	for _, c := range chain[1:] {
		inters.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inters, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		t.Errorf("the pod's certificate does not chain to the bundle: %v", err)
	}
	t.Logf("pod certificates: %s issued to pod %s/%s through its PodCertificateRequest, under the chart's RBAC; ClusterTrustBundle published", id, pod.Namespace, pod.Name)
}
