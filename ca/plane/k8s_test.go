package plane

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/meshca/meshca/internal/kubeenv"
)

// These tests run against a real kube-apiserver and etcd (make testenv),
// which serves ClusterTrustBundles for the bundle's publishers and
// PodCertificateRequests for the pod certificate signer.
func TestMain(m *testing.M) { kubeenv.Main(m, kubeenv.PodCertificates()) }

// kubeconfig writes a kubeconfig for env's API server reached at addr.
func kubeconfig(t *testing.T, env *kubeenv.Env, addr string) string {
	t.Helper()
	return kubeconfigToken(t, env, addr, env.Config.BearerToken)
}

// kubeconfigAs creates role, binds it to the ServiceAccount ns/sa (which
// must exist) with a ClusterRoleBinding, and returns a kubeconfig that
// authenticates as that ServiceAccount.
func kubeconfigAs(t *testing.T, env *kubeenv.Env, role *rbacv1.ClusterRole, ns, sa string) string {
	t.Helper()
	ctx := context.Background()
	if _, err := env.Client.RbacV1().ClusterRoles().Create(ctx, role, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := env.Client.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: role.Name},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: role.Name},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Namespace: ns, Name: sa}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	host, err := url.Parse(env.Config.Host)
	if err != nil {
		t.Fatal(err)
	}
	return kubeconfigToken(t, env, host.Host, env.Token(t, ns, sa, nil, 0))
}

// kubeconfigToken is kubeconfig authenticating with token.
func kubeconfigToken(t *testing.T, env *kubeenv.Env, addr, token string) string {
	t.Helper()
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["test"] = &clientcmdapi.Cluster{Server: "https://" + addr, CertificateAuthorityData: env.Config.CAData}
	cfg.AuthInfos["test"] = &clientcmdapi.AuthInfo{Token: token}
	cfg.Contexts["test"] = &clientcmdapi.Context{Cluster: "test", AuthInfo: "test"}
	cfg.CurrentContext = "test"
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestRenewalAdmissionAgainstAPIServer (finding 2, and the failure drill
// "the apiserver down: renewals over mTLS go on"): with TokenReview
// attestation against a real API server, renewal over mTLS is refused once
// the ServiceAccount is deleted; while the API server is unreachable, an
// SVID whose ServiceAccount the CA has seen renews, and one it has never
// seen is told to retry (Unavailable), never admitted blind.
func TestRenewalAdmissionAgainstAPIServer(t *testing.T) {
	env := kubeenv.Get(t)
	ctx := context.Background()
	const ns = "renewal"
	for _, sa := range []string{"kept", "gone", "unseen"} {
		env.CreateServiceAccount(t, ns, sa)
	}
	fw := env.Forward(t)
	p, _ := startTest(t, t.TempDir(), Kubernetes{Mode: K8sTokenReview, Kubeconfig: kubeconfig(t, env, fw.Addr()), Deny: []string{}})

	issue := func(sa string) (spiffeid.ID, *svid) {
		t.Helper()
		id := spiffeid.RequireFromPath(td, "/ns/"+ns+"/sa/"+sa)
		cert, err := sign(t, p, id, env.Token(t, ns, sa, []string{"meshca"}, time.Hour), nil)
		if err != nil {
			t.Fatalf("first issuance for %s: %v", sa, err)
		}
		return id, cert
	}
	kept, keptSVID := issue("kept")
	gone, goneSVID := issue("gone")
	unseen, unseenSVID := issue("unseen")

	keptSVID, err := sign(t, p, kept, "", keptSVID)
	if err != nil {
		t.Fatalf("renewal of an existing ServiceAccount: %v", err)
	}

	if err := env.Client.CoreV1().ServiceAccounts(ns).Delete(ctx, "gone", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	_, err = sign(t, p, gone, "", goneSVID)
	wantCode(t, "renewal after the ServiceAccount was deleted", err, codes.PermissionDenied, "ServiceAccount renewal/gone no longer exists")

	fw.Stop() // the API server is unreachable from now on
	if _, err := sign(t, p, kept, "", keptSVID); err != nil {
		t.Fatalf("renewal while the API server is unreachable, ServiceAccount seen before: %v", err)
	}
	_, err = sign(t, p, unseen, "", unseenSVID)
	wantCode(t, "renewal while the API server is unreachable, ServiceAccount never seen", err, codes.Unavailable, "retry later")
	if errors.Is(err, context.DeadlineExceeded) {
		t.Fatal("the lookup hung instead of failing")
	}
}

// readyz returns /readyz's status and body.
func readyz(t *testing.T, p *Plane) (int, string) {
	t.Helper()
	r, err := http.Get("http://" + p.Addr("monitor").String() + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	defer r.Body.Close()
	b, _ := io.ReadAll(r.Body)
	return r.StatusCode, string(b)
}

// TestInformerModeAgainstAPIServer: `meshca server --k8s-attestation
// informer` against a real API server. While the API server has not
// answered, /readyz is 503 saying the informers have not synced, and a
// CSR with a valid token gets Unavailable (retry), not Unauthenticated.
// Once synced it is ready and issues; when the ServiceAccount is deleted,
// its token and the renewal of its SVID are refused.
func TestInformerModeAgainstAPIServer(t *testing.T) {
	env := kubeenv.Get(t)
	ctx := context.Background()
	const ns = "plane-informer"
	env.CreateServiceAccount(t, ns, "bar")
	token := env.Token(t, ns, "bar", []string{"meshca"}, time.Hour)
	id := spiffeid.RequireFromPath(td, "/ns/"+ns+"/sa/bar")
	fw := env.ForwardHeld(t)
	p, err := Start(ctx, Config{TrustDomain: td, DataDir: t.TempDir(), GRPCAddr: "127.0.0.1:0", MonitorAddr: "127.0.0.1:0",
		Kubernetes: Kubernetes{Mode: K8sInformer, Kubeconfig: kubeconfig(t, env, fw.Addr())}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Stop() })

	if code, body := readyz(t, p); code != http.StatusServiceUnavailable || !strings.Contains(body, "informer caches not synced") {
		t.Fatalf("/readyz before the informers synced = %d %q, want 503 saying so", code, body)
	}
	_, err = sign(t, p, id, token, nil)
	wantCode(t, "CSR before the informers synced", err, codes.Unavailable, "retry later")

	fw.Release()
	deadline := time.Now().Add(20 * time.Second)
	for code, body := readyz(t, p); code != http.StatusOK; code, body = readyz(t, p) {
		if time.Now().After(deadline) {
			t.Fatalf("/readyz after the API server answered = %d %q, want 200", code, body)
		}
		time.Sleep(20 * time.Millisecond)
	}
	cert, err := sign(t, p, id, token, nil)
	if err != nil {
		t.Fatalf("CSR once synced: %v", err)
	}
	if _, err := sign(t, p, id, "", cert); err != nil {
		t.Fatalf("renewal while the ServiceAccount exists: %v", err)
	}

	if err := env.Client.CoreV1().ServiceAccounts(ns).Delete(ctx, "bar", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		_, err = sign(t, p, id, token, nil)
		if status.Code(err) == codes.Unauthenticated || time.Now().After(deadline) {
			break
		}
	}
	wantCode(t, "CSR with the token of a deleted ServiceAccount", err, codes.Unauthenticated, "has been invalidated")
	_, err = sign(t, p, id, "", cert)
	wantCode(t, "renewal after the ServiceAccount was deleted", err, codes.PermissionDenied, "no longer exists")
}
