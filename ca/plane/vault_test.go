package plane

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/meshca/meshca/attestor"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/ca/vault"
	"github.com/meshca/meshca/internal/clock/clocktest"
	"github.com/meshca/meshca/internal/pki"
	"github.com/meshca/meshca/internal/vaultenv"
)

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	r, err := http.Get(url) // #nosec G107 -- the test's own listener
	if err != nil {
		t.Fatal(err)
	}
	defer r.Body.Close()
	b, _ := io.ReadAll(r.Body)
	return r.StatusCode, string(b)
}

// TestVaultTransitServer runs a plane whose root key is a Vault Transit
// key, as `meshca server --vault-addr ... --vault-transit-key` does. Then
// Vault goes away: certificates are still issued, and once the next
// intermediate is due and cannot be prepared, /metrics and /readyz say so
// (readiness stays up: the active intermediate is valid).
func TestVaultTransitServer(t *testing.T) {
	env := vaultenv.Start(t)
	env.Mount(t, "transit", "transit")
	tokenFile := filepath.Join(t.TempDir(), "vault-token")
	if err := os.WriteFile(tokenFile, []byte(env.RootToken), 0o600); err != nil {
		t.Fatal(err)
	}
	web := spiffeid.RequireFromPath(td, "/ns/shop/sa/web")
	clk := clocktest.New(time.Now())
	p, err := Start(context.Background(), Config{TrustDomain: td, DataDir: t.TempDir(),
		GRPCAddr: "127.0.0.1:0", MonitorAddr: "127.0.0.1:0", Kubernetes: Kubernetes{Deny: []string{}},
		IntermediateTTL: 4 * time.Hour, DefaultTTL: time.Hour, MaxTTL: time.Hour, Clock: clk,
		Vault: vault.Config{Addr: env.Addr, CAFile: env.CAFile, TokenFile: tokenFile, TransitKey: "meshca-root", Timeout: 5 * time.Second},
		Extra: []attestor.Attestor{attestor.NewStaticTokens(map[string]spiffeid.ID{"web-token": web})}})
	if err != nil {
		t.Fatal(err)
	}
	stop := sync.OnceFunc(func() { p.Stop() })
	t.Cleanup(stop)
	root := p.Authority().Bundle().X509Authorities()[0]
	keys := env.Read(t, "transit/keys/meshca-root").Data["keys"].(map[string]any)
	block, _ := pem.Decode([]byte(keys["1"].(map[string]any)["public_key"].(string)))
	vaultPub, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil || !pki.SamePublicKey(root.PublicKey, vaultPub) {
		t.Fatalf("the root's public key is not the Transit key's (%v)", err)
	}
	if _, m := get(t, "http://"+p.Addr("monitor").String()+"/metrics"); !strings.Contains(m, `meshca_vault_requests_total{operation="transit-sign",result="ok"} 2`) {
		t.Error("/metrics does not count the two Transit signatures (root, intermediate)")
	}
	issue := func() {
		t.Helper()
		s, err := sign(t, p, web, "web-token", nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := x509svid.Verify(certsOf(t, s), p.Authority().Bundle(), x509svid.WithTime(clk.Now())); err != nil {
			t.Fatal(err)
		}
	}
	issue()

	env.Stop()
	clk.Set(ca.PrepareTime(p.Authority().SigningCertificate()).Add(time.Minute))
	clocktest.Eventually(t, "meshca_ca_rotation_failing 1", func() bool {
		_, m := get(t, "http://"+p.Addr("monitor").String()+"/metrics")
		return strings.Contains(m, "\nmeshca_ca_rotation_failing 1\n")
	})
	code, body := get(t, "http://"+p.Addr("monitor").String()+"/readyz")
	if code != http.StatusOK || !strings.Contains(body, "preparing the next intermediate") || !strings.Contains(body, "unreachable") {
		t.Fatalf("/readyz = %d %q, want 200 with the failing preparation", code, body)
	}
	issue()
}
