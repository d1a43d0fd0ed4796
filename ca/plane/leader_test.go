package plane

import (
	"context"
	"crypto/x509"
	"crypto/x509/pkix"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshca/meshca/ca/bundle"
	"github.com/meshca/meshca/ca/bundle/configmap"
	"github.com/meshca/meshca/internal/clock/clocktest"
	"github.com/meshca/meshca/internal/kubeenv"
	"github.com/meshca/meshca/internal/testca"
)

// leaseRBAC is the Role docs/configuration.md gives leader election, in
// the Lease's namespace.
func leaseRBAC(name, ns string) *rbacv1.Role {
	return &rbacv1.Role{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"}, Verbs: []string{"get", "create", "update"}},
		},
	}
}

// TestLeaderElectedPublisher: two planes with --leader-elect on one Lease,
// running as a ServiceAccount that holds exactly the documented RBAC (the
// bundle's ClusterRole, the Lease's Role). Each keeps its own data file,
// so each has a root of its own and the bundle ConfigMap says who wrote
// it: only the leader does, while the follower is ready and publishes
// nothing. When the leader stops, the other takes over and writes its own.
func TestLeaderElectedPublisher(t *testing.T) {
	env := kubeenv.Get(t)
	ctx := context.Background()
	run := "plane-leader-" + strconv.FormatInt(time.Now().UnixNano()%(1<<30), 36)
	ns1 := run + "-1"
	env.CreateServiceAccount(t, run, "meshca")
	env.CreateServiceAccount(t, ns1, "default")
	role, lease := bundleRBAC(run, "meshca.test/"+run), leaseRBAC(run, run)
	subjects := []rbacv1.Subject{{Kind: "ServiceAccount", Namespace: run, Name: "meshca"}}
	if _, err := env.Client.RbacV1().ClusterRoles().Create(ctx, role, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := env.Client.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: run},
		RoleRef: rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: run}, Subjects: subjects}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := env.Client.RbacV1().Roles(run).Create(ctx, lease, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := env.Client.RbacV1().RoleBindings(run).Create(ctx, &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: run, Namespace: run},
		RoleRef: rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: run}, Subjects: subjects}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	kc := kubeconfigToken(t, env, strings.TrimPrefix(env.Config.Host, "https://"), env.Token(t, run, "meshca", nil, 0))
	// A federated trust domain from a static file: only the leader reads it.
	fedConfig := federationFile(t)
	start := func(identity string) *Plane {
		t.Helper()
		p, err := Start(ctx, Config{TrustDomain: td, DataDir: t.TempDir(), GRPCAddr: "127.0.0.1:0", MonitorAddr: "127.0.0.1:0",
			Kubernetes: Kubernetes{Kubeconfig: kc, Deny: []string{}}, Federation: Federation{ConfigFile: fedConfig},
			Bundles: bundle.Config{ConfigMap: "leader-root-cert", ConfigMapNamespaces: []string{run + "-*"}},
			LeaderElection: LeaderElection{Enabled: true, Namespace: run, Identity: identity,
				LeaseDuration: 2 * time.Second, RenewDeadline: time.Second, RetryPeriod: 200 * time.Millisecond}})
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	published := func(p *Plane) bool {
		cm, err := env.Client.CoreV1().ConfigMaps(ns1).Get(ctx, "leader-root-cert", metav1.GetOptions{})
		return err == nil && cm.Data[configmap.Key] == string(p.Authority().RootsPEM())
	}

	a := start("a")
	stopA := sync.OnceValue(a.Stop)
	t.Cleanup(func() { stopA() })
	const fetched = `meshca_federation_last_success_timestamp_seconds{trust_domain="fed.test"}`
	clocktest.Eventually(t, "a leads, publishes and fetches", func() bool {
		m := monitor(t, a, "/metrics")
		return strings.Contains(m, "\nmeshca_leader 1\n") && published(a) && strings.Contains(m, fetched)
	})
	b := start("b")
	t.Cleanup(func() { b.Stop() })
	clocktest.Eventually(t, "b sees a as the leader", func() bool {
		return strings.Contains(monitor(t, b, "/metrics"), "\nmeshca_leader_transitions_total 1\n")
	})
	m := monitor(t, b, "/metrics")
	if !strings.Contains(m, "\nmeshca_leader 0\n") || strings.Contains(m, `meshca_bundle_last_publish_timestamp_seconds{target="configmap"}`) ||
		strings.Contains(m, fetched) {
		t.Errorf("the follower leads, publishes or fetches:\n%s", grepLines(m, "meshca_leader", "meshca_bundle", "meshca_federation"))
	}
	if code, body := readyz(t, b); code != http.StatusOK {
		t.Errorf("the follower's /readyz = %d %q, want ready: followers serve CSRs", code, body)
	}
	if !published(a) {
		t.Error("the ConfigMap no longer holds the leader's roots")
	}

	if err := stopA(); err != nil {
		t.Fatal(err)
	}
	clocktest.Eventually(t, "b takes over, publishes its roots and fetches", func() bool {
		m := monitor(t, b, "/metrics")
		return strings.Contains(m, "\nmeshca_leader 1\n") && published(b) && strings.Contains(m, fetched)
	})
}

// federationFile writes a --federation-config naming fed.test with a
// static bundle file, and returns its path.
func federationFile(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	key := testca.NewKey(t)
	fed := spiffeid.RequireTrustDomainFromString("fed.test")
	root := testca.Sign(t, &x509.Certificate{Subject: pkix.Name{CommonName: "fed.test root"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
		URIs: []*url.URL{fed.ID().URL()}}, nil, &key.PublicKey, key)
	doc, err := spiffebundle.FromX509Authorities(fed, []*x509.Certificate{root}).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	bundleFile, configFile := filepath.Join(dir, "fed.json"), filepath.Join(dir, "federation.yaml")
	if err := os.WriteFile(bundleFile, doc, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(configFile, []byte("trust_domains:\n- trust_domain: fed.test\n  bundle_file: "+bundleFile+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return configFile
}

// grepLines is the lines of s that start with one of prefixes.
func grepLines(s string, prefixes ...string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		for _, p := range prefixes {
			if strings.HasPrefix(l, p) {
				out = append(out, l)
				break
			}
		}
	}
	return strings.Join(out, "\n")
}
