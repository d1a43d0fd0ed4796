package plane

import (
	"context"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/federation"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshca/meshca/ca/bundle"
	"github.com/meshca/meshca/ca/bundle/configmap"
	"github.com/meshca/meshca/ca/store"
	"github.com/meshca/meshca/internal/clock/clocktest"
	"github.com/meshca/meshca/internal/kubeenv"
)

// bundleRBAC is the ClusterRole docs/configuration.md gives the ConfigMap
// and ClusterTrustBundle publishers, for signer.
func bundleRBAC(name, signer string) *rbacv1.ClusterRole {
	return &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{""}, Resources: []string{"namespaces"}, Verbs: []string{"list", "watch"}},
			{APIGroups: []string{""}, Resources: []string{"configmaps"}, Verbs: []string{"list", "watch", "create", "update"}},
			{APIGroups: []string{"certificates.k8s.io"}, Resources: []string{"clustertrustbundles"}, Verbs: []string{"list", "watch", "create", "update"}},
			{APIGroups: []string{"certificates.k8s.io"}, Resources: []string{"signers"}, ResourceNames: []string{signer}, Verbs: []string{"attest"}},
		},
	}
}

// TestBundlesEverywhere: a plane running as a ServiceAccount that holds
// exactly the documented RBAC publishes its roots in the ConfigMaps of the
// selected namespaces and in its signer-linked ClusterTrustBundle, and
// serves them at its SPIFFE bundle endpoint (https_spiffe, with an SVID it
// issued itself and recorded), which go-spiffe's federation client reads.
func TestBundlesEverywhere(t *testing.T) {
	env := kubeenv.Get(t)
	ctx := context.Background()
	// A name of its own per run: the shared API server keeps objects across
	// go test -count=N, and never finishes deleting a namespace.
	run := "plane-bundle-" + strconv.FormatInt(time.Now().UnixNano()%(1<<30), 36)
	signer := "meshca.test/" + run
	ns1, ns2 := run+"-1", run+"-2"
	env.CreateServiceAccount(t, run, "meshca")
	for _, ns := range []string{ns1, ns2} {
		env.CreateServiceAccount(t, ns, "default")
	}
	kubeconfig := kubeconfigAs(t, env, bundleRBAC(run, signer), run, "meshca")
	p, err := Start(ctx, Config{TrustDomain: td, DataDir: t.TempDir(), GRPCAddr: "127.0.0.1:0", MonitorAddr: "127.0.0.1:0",
		Kubernetes: Kubernetes{Kubeconfig: kubeconfig, Deny: []string{}},
		Bundles: bundle.Config{ConfigMap: "plane-root-cert", ConfigMapNamespaces: []string{run + "-*"},
			ClusterTrustBundleSigner: signer, EndpointAddr: "127.0.0.1:0"}})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Stop()
	roots := string(p.Authority().RootsPEM())

	clocktest.Eventually(t, "ConfigMaps and ClusterTrustBundle hold the roots", func() bool {
		for _, ns := range []string{ns1, ns2} {
			cm, err := env.Client.CoreV1().ConfigMaps(ns).Get(ctx, "plane-root-cert", metav1.GetOptions{})
			if err != nil || cm.Data[configmap.Key] != roots {
				return false
			}
		}
		ctb, err := env.Client.CertificatesV1beta1().ClusterTrustBundles().Get(ctx, strings.ReplaceAll(signer, "/", ":")+":example.org", metav1.GetOptions{})
		return err == nil && ctb.Spec.TrustBundle == roots && ctb.Spec.SignerName == signer
	})
	if _, err := env.Client.CoreV1().ConfigMaps("default").Get(ctx, "plane-root-cert", metav1.GetOptions{}); err == nil {
		t.Error("a namespace outside --bundle-configmap-namespaces got the ConfigMap")
	}

	endpointID := spiffeid.RequireFromPath(td, "/meshca/bundle-endpoint")
	b, err := federation.FetchBundle(ctx, td, "https://"+p.Addr("bundle-endpoint").String()+"/",
		federation.WithSPIFFEAuth(p.Authority().Bundle(), endpointID))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := b.X509Authorities(), p.Authority().Bundle().X509Authorities(); len(got) != len(want) || !got[0].Equal(want[0]) {
		t.Errorf("endpoint serves %d authorities, want the CA's %d", len(got), len(want))
	}
	recs, err := p.Authority().Issuances(ctx, store.IssuanceFilter{SPIFFEID: endpointID.String()})
	if err != nil || len(recs) != 1 || recs[0].CredentialKind != "self" {
		t.Errorf("the endpoint's SVID in the issuance log: %+v, %v", recs, err)
	}

	resp, err := http.Get("http://" + p.Addr("monitor").String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{
		`meshca_bundle_last_publish_timestamp_seconds{target="configmap"}`,
		`meshca_bundle_last_publish_timestamp_seconds{target="clustertrustbundle"}`,
		`meshca_bundle_endpoint_sequence `,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}
