package plane

import (
	"context"
	"crypto/x509"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/ca/store"
	"github.com/meshca/meshca/internal/clock/clocktest"
	"github.com/meshca/meshca/internal/kubeenv"
	"github.com/meshca/meshca/internal/pki"
)

// docYAML returns the YAML block of docs/pod-certificates.md that holds
// "kind: <kind>", with meshca.io/spiffe replaced by signer.
func docYAML(t *testing.T, kind, signer string) []byte {
	t.Helper()
	doc, err := os.ReadFile(filepath.Join("..", "..", "docs", "pod-certificates.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, block := range strings.Split(string(doc), "```yaml\n")[1:] {
		block, _, _ = strings.Cut(block, "```")
		if strings.Contains(block, "\nkind: "+kind+"\n") {
			return []byte(strings.ReplaceAll(block, "meshca.io/spiffe", signer))
		}
	}
	t.Fatalf("docs/pod-certificates.md has no YAML block of kind %s", kind)
	return nil
}

// podCertRBAC is the ClusterRole docs/pod-certificates.md gives the pod
// certificate signer and its ClusterTrustBundle, for signer.
func podCertRBAC(t *testing.T, name, signer string) *rbacv1.ClusterRole {
	t.Helper()
	role := &rbacv1.ClusterRole{}
	if err := yaml.UnmarshalStrict(docYAML(t, "ClusterRole", signer), role); err != nil {
		t.Fatal(err)
	}
	role.Name = name
	return role
}

// TestPodCertificatesAgainstAPIServer: `meshca server
// --pod-certificate-signer`, as a ServiceAccount holding exactly the
// documented RBAC, answers a request a node makes for a pod on it, within
// moments, with a chain that verifies to the roots of the signer-linked
// ClusterTrustBundle it publishes (by default, for the same signer) with
// the pod's SPIFFE ID; during a root rotation the ClusterTrustBundle holds
// both roots.
func TestPodCertificatesAgainstAPIServer(t *testing.T) {
	env := kubeenv.Get(t)
	ctx := context.Background()
	run := "plane-podcert-" + strconv.FormatInt(time.Now().UnixNano()%(1<<30), 36)
	signer := "meshca.test/" + run
	env.CreateServiceAccount(t, run, "meshca")
	kubeconfig := kubeconfigAs(t, env, podCertRBAC(t, run, signer), run, "meshca")
	p, err := Start(ctx, Config{TrustDomain: td, DataDir: t.TempDir(), GRPCAddr: "127.0.0.1:0",
		Kubernetes:      Kubernetes{Kubeconfig: kubeconfig, Deny: []string{}},
		PodCertificates: PodCertificates{Signer: signer}})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Stop()

	node := env.CreateNode(t, kubeenv.NodeName)
	sa := env.CreateServiceAccount(t, run, "web")
	pod := env.CreatePod(t, run, "web-0", "web", node.Name)
	key, req, chain := env.IssuedPodCertificate(t, pod, sa, node, signer)

	ctbName := strings.ReplaceAll(signer, "/", ":") + ":" + td.Name()
	// ctbRoots are the roots of the ClusterTrustBundle, and how many; nil
	// until it is published.
	ctbRoots := func() (*x509.CertPool, int) {
		ctb, err := env.Client.CertificatesV1beta1().ClusterTrustBundles().Get(ctx, ctbName, metav1.GetOptions{})
		if err != nil || ctb.Spec.SignerName != signer {
			return nil, 0
		}
		certs, err := pki.ParseCertificates([]byte(ctb.Spec.TrustBundle))
		if err != nil {
			t.Fatal(err)
		}
		pool := x509.NewCertPool()
		for _, c := range certs {
			pool.AddCert(c)
		}
		return pool, len(certs)
	}
	clocktest.Eventually(t, "the ClusterTrustBundle published", func() bool { _, n := ctbRoots(); return n > 0 })
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	roots, _ := ctbRoots()
	if _, err := chain[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		t.Fatalf("the chain does not verify to the ClusterTrustBundle: %v", err)
	}
	if want := "spiffe://" + td.Name() + "/ns/" + run + "/sa/web"; len(chain[0].URIs) != 1 || chain[0].URIs[0].String() != want {
		t.Fatalf("URI SANs %v, want %s", chain[0].URIs, want)
	}
	if !key.PublicKey.Equal(chain[0].PublicKey) {
		t.Fatal("the certificate is not for the node's key")
	}
	recs, err := p.Authority().Issuances(ctx, store.IssuanceFilter{SPIFFEID: "spiffe://" + td.Name() + "/ns/" + run + "/sa/web"})
	if err != nil || len(recs) != 1 || recs[0].Details["request-uid"] != string(req.UID) {
		t.Fatalf("issuance log: %+v, %v", recs, err)
	}

	// The documented pod is valid.
	documented := &corev1.Pod{}
	if err := yaml.UnmarshalStrict(docYAML(t, "Pod", signer), documented); err != nil {
		t.Fatal(err)
	}
	if _, err := env.Client.CoreV1().Pods(run).Create(ctx, documented, metav1.CreateOptions{}); err != nil {
		t.Errorf("the documented pod: %v", err)
	}

	if _, err := p.Authority().RotateRoot(ctx, ca.RootRotationRequest{Action: ca.RootRotationStart}); err != nil {
		t.Fatal(err)
	}
	clocktest.Eventually(t, "the ClusterTrustBundle holds the old and the new root", func() bool {
		_, n := ctbRoots()
		return n == 2
	})
}
