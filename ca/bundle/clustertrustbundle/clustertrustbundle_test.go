package clustertrustbundle_test

import (
	"context"
	"strings"
	"testing"
	"time"

	certificatesv1beta1 "k8s.io/api/certificates/v1beta1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/rest"

	"github.com/meshca/meshca/ca/bundle"
	"github.com/meshca/meshca/ca/bundle/clustertrustbundle"
	"github.com/meshca/meshca/ca/bundle/internal/bundletest"
	"github.com/meshca/meshca/internal/clock/clocktest"
	"github.com/meshca/meshca/internal/kubeenv"
)

// These tests run against a real kube-apiserver with ClusterTrustBundles
// served (make testenv). They share it, so each uses a signer of its own.
func TestMain(m *testing.M) { kubeenv.Main(m, kubeenv.ClusterTrustBundles()) }

type publisher struct {
	*clustertrustbundle.Publisher
	src     *bundletest.Source
	clk     *clocktest.Fake
	metrics *bundletest.Metrics
	logs    *bundletest.Logs
}

func start(t *testing.T, client kubernetes.Interface, signer string, pem []byte) *publisher {
	t.Helper()
	p := &publisher{src: bundletest.NewSource(pem), clk: clocktest.New(time.Now()), metrics: &bundletest.Metrics{}}
	logger, logs := bundletest.Logger()
	p.logs = logs
	var err error
	p.Publisher, err = clustertrustbundle.New(clustertrustbundle.Config{Client: client, Source: p.src, SignerName: signer,
		Suffix: "cluster.local", Clock: p.clk, Logger: logger, Metrics: p.metrics})
	if err != nil {
		t.Fatal(err)
	}
	bundletest.Run(t, p.Run)
	return p
}

func get(t *testing.T, client kubernetes.Interface, name string) *certificatesv1beta1.ClusterTrustBundle {
	t.Helper()
	ctb, err := client.CertificatesV1beta1().ClusterTrustBundles().Get(context.Background(), name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	return ctb
}

func waitHolds(t *testing.T, client kubernetes.Interface, name, signer string, pem []byte) {
	t.Helper()
	clocktest.Eventually(t, "ClusterTrustBundle "+name+" holds the bundle", func() bool {
		ctb := get(t, client, name)
		return ctb != nil && ctb.Spec.TrustBundle == string(pem) && ctb.Spec.SignerName == signer &&
			ctb.Labels[bundle.ManagedByLabel] == bundle.ManagedBy
	})
}

// TestPublish: the signer-linked ClusterTrustBundle is created, repaired
// when edited (its label removed too), recreated when deleted, and follows
// a bundle change.
func TestPublish(t *testing.T) {
	env := kubeenv.Get(t)
	c := env.Client
	ctx := context.Background()
	signer := "meshca.test/" + bundletest.Unique("publish")
	pem1, _ := bundletest.Root(t, "root 1")
	p := start(t, c, signer, pem1)
	name := p.ObjectName()
	if name != strings.ReplaceAll(signer, "/", ":")+":cluster.local" {
		t.Fatalf("name %q", name)
	}
	waitHolds(t, c, name, signer, pem1)
	// The publisher records the time once its write has returned, which
	// may be after the object is seen.
	clocktest.Eventually(t, "a publish time recorded", func() bool {
		return !p.metrics.LastPublished(bundle.TargetClusterTrustBundle).IsZero()
	})

	other, _ := bundletest.Root(t, "someone else's root")
	ctb := get(t, c, name)
	ctb.Spec.TrustBundle = string(other)
	delete(ctb.Labels, bundle.ManagedByLabel)
	if _, err := c.CertificatesV1beta1().ClusterTrustBundles().Update(ctx, ctb, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitHolds(t, c, name, signer, pem1)
	if !strings.Contains(p.logs.String(), "without meshca's label: overwriting it") {
		t.Errorf("the overwrite was not logged:\n%s", p.logs)
	}

	if err := c.CertificatesV1beta1().ClusterTrustBundles().Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitHolds(t, c, name, signer, pem1)

	_, root2 := bundletest.Root(t, "root 2")
	pem2 := append(append([]byte{}, pem1...), bundletest.PEM(root2)...)
	p.src.Set(pem2)
	clocktest.Eventually(t, "poll waiting", func() bool { return p.clk.Waiters() > 0 })
	p.clk.Advance(bundle.DefaultSyncInterval)
	waitHolds(t, c, name, signer, pem2)
}

// TestAttestRequired: a writer without "attest" on the signer is refused
// by the API server; the failure is counted and retried, and succeeds once
// the permission is granted. The ClusterRole is the one
// docs/configuration.md documents.
func TestAttestRequired(t *testing.T) {
	env := kubeenv.Get(t)
	admin := env.Client
	ctx := context.Background()
	run := bundletest.Unique("attest")
	signer := "meshca.test/" + run
	env.CreateServiceAccount(t, run, "meshca")
	cfg := rest.AnonymousClientConfig(env.Config)
	cfg.BearerToken = env.Token(t, run, "meshca", nil, 0)
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	role := &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: run},
		Rules: []rbacv1.PolicyRule{{
			APIGroups: []string{"certificates.k8s.io"}, Resources: []string{"clustertrustbundles"},
			Verbs: []string{"get", "list", "watch", "create", "update"},
		}},
	}
	if _, err := admin.RbacV1().ClusterRoles().Create(ctx, role, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	binding := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: run},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: role.Name},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Namespace: run, Name: "meshca"}},
	}
	if _, err := admin.RbacV1().ClusterRoleBindings().Create(ctx, binding, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	pem, _ := bundletest.Root(t, "root")
	p := start(t, client, signer, pem)
	clocktest.Eventually(t, "a refused write counted", func() bool { return p.metrics.Failures(bundle.TargetClusterTrustBundle) > 0 })
	if get(t, admin, p.ObjectName()) != nil {
		t.Fatal("written without attest permission")
	}
	if !strings.Contains(p.logs.String(), "not permitted to attest") {
		t.Errorf("the refusal was not logged:\n%s", p.logs)
	}

	role, err = admin.RbacV1().ClusterRoles().Get(ctx, role.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	role.Rules = append(role.Rules, rbacv1.PolicyRule{
		APIGroups: []string{"certificates.k8s.io"}, Resources: []string{"signers"}, ResourceNames: []string{signer}, Verbs: []string{"attest"},
	})
	if _, err := admin.RbacV1().ClusterRoles().Update(ctx, role, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitHolds(t, admin, p.ObjectName(), signer, pem)
}

// TestName: the API server's naming rules for signer-linked bundles.
func TestName(t *testing.T) {
	for _, tc := range []struct {
		signer, suffix string
		want           string // a name, or part of the error
	}{
		{"meshca.io/spiffe", "cluster.local", "meshca.io:spiffe:cluster.local"},
		{"example.com/foo.bar", "td", "example.com:foo.bar:td"},
		{"meshca/spiffe", "td", "at least two labels"},
		{"meshca.io", "td", "not <domain>/<path>"},
		{"meshca.io/a/b", "td", "not <domain>/<path>"},
		{"meshca.io/", "td", "not <domain>/<path>"},
		{"Meshca.io/spiffe", "td", "at least two labels"},
		{"meshca.io/Spiffe", "td", "path"},
		{"meshca.io/spiffe", "under_score.org", `suffix "under_score.org"`},
		{"meshca.io/spiffe", strings.Repeat("a", 254), `suffix "aaaa`},
		{"meshca.io/spiffe", strings.Repeat("a.", 120) + "a", "longer than 253"},
	} {
		t.Run(tc.signer+" "+tc.suffix[:min(len(tc.suffix), 20)], func(t *testing.T) {
			got, err := clustertrustbundle.Name(tc.signer, tc.suffix)
			if strings.Contains(tc.want, ":") && !strings.Contains(tc.want, " ") {
				if err != nil || got != tc.want {
					t.Fatalf("Name = %q, %v; want %q", got, err, tc.want)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Name = %q, %v; want an error with %q", got, err, tc.want)
			}
		})
	}
}

// FuzzName checks that every name Name accepts has the prefix the API
// server requires and a valid length.
func FuzzName(f *testing.F) {
	f.Add("meshca.io/spiffe", "cluster.local")
	f.Add("a.b/c", "d")
	f.Fuzz(func(t *testing.T, signer, suffix string) {
		name, err := clustertrustbundle.Name(signer, suffix)
		if err != nil {
			return
		}
		if !strings.HasPrefix(name, strings.ReplaceAll(signer, "/", ":")+":") || len(name) > 253 || strings.Count(signer, "/") != 1 {
			t.Fatalf("Name(%q, %q) = %q", signer, suffix, name)
		}
	})
}

// TestNew: a missing client or a bad signer name is refused.
func TestNew(t *testing.T) {
	src := bundletest.NewSource(nil)
	if _, err := clustertrustbundle.New(clustertrustbundle.Config{Source: src, SignerName: "a.b/c", Suffix: "d"}); err == nil {
		t.Error("no client accepted")
	}
	if _, err := clustertrustbundle.New(clustertrustbundle.Config{Client: fake.NewClientset(), Source: src, SignerName: "ab/c", Suffix: "d"}); err == nil {
		t.Error("a bad signer name accepted")
	}
}
