package vault_test

import (
	"context"
	"strings"
	"testing"
	"time"

	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshca/meshca/ca/vault"
	"github.com/meshca/meshca/internal/clock/clocktest"
	"github.com/meshca/meshca/internal/kubeenv"
	"github.com/meshca/meshca/internal/vaultenv"
)

// transitPolicy lets meshca create, read, rotate and sign with Transit keys.
const transitPolicy = `path "transit/*" { capabilities = ["create", "read", "update"] }`

// appRole enables AppRole with a role whose tokens live ttl (at most
// maxTTL) and returns files holding its role and secret IDs.
func appRole(t testing.TB, env *vaultenv.Env, ttl, maxTTL string) (roleIDFile, secretIDFile string) {
	t.Helper()
	env.Mount(t, "transit", "transit")
	env.Write(t, "sys/policies/acl/meshca", map[string]any{"policy": transitPolicy})
	env.EnableAuth(t, "approle", "approle")
	env.Write(t, "auth/approle/role/meshca", map[string]any{"token_policies": "meshca", "token_ttl": ttl, "token_max_ttl": maxTTL})
	roleID := env.Read(t, "auth/approle/role/meshca/role-id").Data["role_id"].(string)
	secretID := env.Write(t, "auth/approle/role/meshca/secret-id", nil).Data["secret_id"].(string)
	return writeFile(t, "role-id", roleID), writeFile(t, "secret-id", secretID)
}

func appRoleConfig(roleID, secretID string) func(*vault.Config) {
	return func(c *vault.Config) {
		c.Auth, c.RoleIDFile, c.SecretIDFile, c.TokenFile = vault.AuthAppRole, roleID, secretID, ""
		c.TransitKey = "meshca-root"
	}
}

// A token that expired between renewals (here: no renewals at all) is
// replaced when Vault refuses it, and the call goes through.
func TestTokenExpiredLogsInAgain(t *testing.T) {
	env := vaultenv.Start(t)
	roleID, secretID := appRole(t, env, "1s", "2s")
	var m calls
	c := mustClient(t, env, &m, appRoleConfig(roleID, secretID))
	keys := transitKeys(t, c)
	if _, _, err := keys.Current(context.Background()); err != nil {
		t.Fatal(err)
	}
	// Vault's token TTL runs on Vault's clock: wait it out for real.
	time.Sleep(2500 * time.Millisecond)
	if _, _, err := keys.Current(context.Background()); err != nil {
		t.Fatalf("a call after the token expired: %v", err)
	}
	if n := m.get("login/ok"); n != 2 {
		t.Fatalf("%d logins, want 2 (the first, and one after the token expired)", n)
	}
}

// Run renews the token, and logs in again when the max TTL stops renewals.
func TestRunRenewsAndLogsInAgain(t *testing.T) {
	env := vaultenv.Start(t)
	roleID, secretID := appRole(t, env, "2s", "4s")
	var m calls
	c := mustClient(t, env, &m, appRoleConfig(roleID, secretID))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	clocktest.Eventually(t, "a renewal and a second login", func() bool { return m.get("renew/ok") >= 1 && m.get("login/ok") >= 2 })
	cancel()
	<-done
	if _, _, err := transitKeys(t, c).Current(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n := m.get("transit-read/error"); n != 0 {
		t.Fatalf("%d refused calls: Run should have kept the token valid", n)
	}
}

func TestLoginRefused(t *testing.T) {
	env := vaultenv.Start(t)
	roleID, _ := appRole(t, env, "1h", "2h")
	for _, tc := range []struct {
		name string
		mod  func(*vault.Config)
		want string
	}{
		{"wrong secret id", appRoleConfig(roleID, writeFile(t, "bad", "not-the-secret")), "login refused"},
		{"revoked token", func(c *vault.Config) { c.TokenFile = writeFile(t, "t", "hvs.not-a-token") }, "login refused"},
		{"unknown CA", func(c *vault.Config) { c.CAFile = ""; c.TransitKey = "k" }, "unreachable"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := newClient(t, env, nil, tc.mod)
			if err == nil && tc.want == "unreachable" {
				// Not a refusal: the client keeps trying, its calls fail.
				_, _, err = transitKeys(t, c).Current(context.Background())
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("%v, want an error containing %q", err, tc.want)
			}
		})
	}
}

// Kubernetes auth with the server's own ServiceAccount token, which Vault
// checks with a TokenReview at the real kube-apiserver.
func TestKubernetesAuth(t *testing.T) {
	kube := kubeenv.Start(t)
	env := vaultenv.Start(t)
	env.Mount(t, "transit", "transit")
	env.Write(t, "sys/policies/acl/meshca", map[string]any{"policy": transitPolicy})
	kube.CreateServiceAccount(t, "meshca-system", "meshca")
	// Vault's reviewer: a ServiceAccount allowed to create TokenReviews
	// (system:auth-delegator), as a Vault outside the cluster is set up.
	kube.CreateServiceAccount(t, "vault", "reviewer")
	_, err := kube.Client.RbacV1().ClusterRoleBindings().Create(context.Background(), &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "vault-reviewer-auth-delegator"},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "system:auth-delegator"},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Namespace: "vault", Name: "reviewer"}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	env.EnableAuth(t, "kubernetes", "kubernetes")
	env.Write(t, "auth/kubernetes/config", map[string]any{
		"kubernetes_host": kube.Config.Host, "kubernetes_ca_cert": string(kube.Config.CAData), "disable_local_ca_jwt": true,
		"token_reviewer_jwt": kube.Token(t, "vault", "reviewer", nil, time.Hour),
	})
	env.Write(t, "auth/kubernetes/role/meshca", map[string]any{
		"bound_service_account_names": "meshca", "bound_service_account_namespaces": "meshca-system",
		"audience": "vault", "token_policies": "meshca", "token_ttl": "1h",
	})
	good := writeFile(t, "token", kube.Token(t, "meshca-system", "meshca", []string{"vault"}, time.Hour))
	other := writeFile(t, "other", kube.Token(t, "meshca-system", "meshca", []string{"not-vault"}, time.Hour))
	k8sAuth := func(file string) func(*vault.Config) {
		return func(c *vault.Config) {
			c.Auth, c.KubernetesRole, c.KubernetesTokenFile, c.TokenFile, c.TransitKey = vault.AuthKubernetes, "meshca", file, "", "meshca-root"
		}
	}
	var m calls
	c := mustClient(t, env, &m, k8sAuth(good))
	if _, _, err := transitKeys(t, c).Current(context.Background()); err != nil {
		t.Fatalf("Transit with a Kubernetes-auth token: %v", err)
	}
	if _, err := newClient(t, env, nil, k8sAuth(other)); err == nil || !strings.Contains(err.Error(), "login refused") {
		t.Fatalf("a token for another audience: %v, want login refused", err)
	}
}
