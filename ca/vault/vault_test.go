package vault_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"net/url"
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
	"github.com/meshca/meshca/ca/store"
	"github.com/meshca/meshca/ca/vault"
	"github.com/meshca/meshca/internal/clock/clocktest"
	"github.com/meshca/meshca/internal/pki"
	"github.com/meshca/meshca/internal/storetest"
	"github.com/meshca/meshca/internal/vaultenv"
)

var (
	td    = spiffeid.RequireTrustDomainFromString("example.org")
	webID = spiffeid.RequireFromString("spiffe://example.org/ns/default/sa/web")
)

// calls counts the client's calls to Vault by operation and result.
type calls struct {
	mu sync.Mutex
	n  map[string]int
}

func (c *calls) Request(op, result string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n == nil {
		c.n = map[string]int{}
	}
	c.n[op+"/"+result]++
}

func (c *calls) TokenExpiry(time.Time) {}

func (c *calls) get(key string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[key]
}

func writeFile(t testing.TB, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// newClient logs in to env with its root token (from a file) unless mod
// says otherwise.
func newClient(t testing.TB, env *vaultenv.Env, m vault.Metrics, mod func(*vault.Config)) (*vault.Client, error) {
	t.Helper()
	cfg := vault.Config{Addr: env.Addr, CAFile: env.CAFile, TokenFile: writeFile(t, "token", env.RootToken+"\n"), Metrics: m}
	if mod != nil {
		mod(&cfg)
	}
	return vault.New(context.Background(), cfg)
}

func mustClient(t testing.TB, env *vaultenv.Env, m vault.Metrics, mod func(*vault.Config)) *vault.Client {
	t.Helper()
	c, err := newClient(t, env, m, mod)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func transitKeys(t testing.TB, c *vault.Client) *vault.TransitKeys {
	t.Helper()
	k, err := c.Transit()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func newAuthority(t testing.TB, st store.Store, clk *clocktest.Fake, mod func(*ca.Config)) (*ca.Authority, error) {
	t.Helper()
	cfg := ca.Config{TrustDomain: td, Store: st, Clock: clk}
	mod(&cfg)
	return ca.New(context.Background(), cfg)
}

// issue signs a leaf for webID and verifies its chain against the
// authority's bundle, as a peer would.
func issue(t testing.TB, a *ca.Authority, clk *clocktest.Fake) []*x509.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{webID.URL()}}, key)
	if err != nil {
		t.Fatal(err)
	}
	iss, err := a.Sign(context.Background(), ca.SignRequest{
		CSR:      pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}),
		Identity: attestor.Identity{ID: webID, Kind: "test", Subject: "vault-test"},
	})
	if err != nil {
		t.Fatalf("Sign: %v", err)
	}
	var chain []*x509.Certificate
	for _, p := range iss.ChainPEM[:len(iss.ChainPEM)-1] { // the last element is the bundle
		c, err := pki.ParseCertificate(p)
		if err != nil {
			t.Fatal(err)
		}
		chain = append(chain, c)
	}
	if _, _, err := x509svid.Verify(chain, a.Bundle(), x509svid.WithTime(clk.Now())); err != nil {
		t.Fatalf("the leaf does not verify against the bundle: %v", err)
	}
	return chain
}

func transitPublicKey(t testing.TB, env *vaultenv.Env, name string, version string) crypto.PublicKey {
	t.Helper()
	s := env.Read(t, "transit/keys/"+name)
	keys := s.Data["keys"].(map[string]any)
	p := keys[version].(map[string]any)["public_key"].(string)
	b, _ := pem.Decode([]byte(p))
	pub, err := x509.ParsePKIXPublicKey(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return pub
}

func TestTransitRoot(t *testing.T) {
	env := vaultenv.Start(t)
	env.Mount(t, "transit", "transit")
	var m calls
	c := mustClient(t, env, &m, func(c *vault.Config) { c.TransitKey = "meshca-root" })
	clk := clocktest.New(time.Now())
	a, err := newAuthority(t, storetest.NewMem(), clk, func(cfg *ca.Config) { cfg.RootKeys = transitKeys(t, c) })
	if err != nil {
		t.Fatal(err)
	}
	roots := a.Bundle().X509Authorities()
	if len(roots) != 1 || !pki.SamePublicKey(roots[0].PublicKey, transitPublicKey(t, env, "meshca-root", "1")) {
		t.Fatalf("the root's public key is not the Transit key's")
	}
	if _, ok := roots[0].PublicKey.(*ecdsa.PublicKey); !ok {
		t.Fatalf("root key %T, want ECDSA P-256 (the default)", roots[0].PublicKey)
	}
	if st, err := a.Status(context.Background()); err != nil || st.Roots[0].Key != "vault-transit:transit/keys/meshca-root:v1" {
		t.Fatalf("status of the root: %+v, %v; want its key in Transit", st.Roots, err)
	}
	if k := env.Read(t, "transit/keys/meshca-root"); k.Data["exportable"] != false {
		t.Fatalf("meshca created an exportable key: %v", k.Data["exportable"])
	}
	for range 20 {
		chain := issue(t, a, clk)
		if err := chain[1].CheckSignatureFrom(roots[0]); err != nil {
			t.Fatalf("the intermediate is not signed by the Transit root: %v", err)
		}
	}
	// The root's self-signature and the intermediate's: never one per leaf.
	if n := m.get("transit-sign/ok"); n != 2 {
		t.Fatalf("%d Transit signatures for a root, an intermediate and 20 leaves, want 2", n)
	}
}

func TestTransitKeyRefused(t *testing.T) {
	env := vaultenv.Start(t)
	env.Mount(t, "transit", "transit")
	env.Write(t, "transit/keys/ed", map[string]any{"type": "ed25519"})
	env.Write(t, "transit/keys/exportable", map[string]any{"type": "ecdsa-p256", "exportable": true})
	env.Write(t, "transit/keys/aes", map[string]any{"type": "aes256-gcm96"})
	for _, tc := range []struct{ key, want string }{
		{"ed", `is of type "ed25519", which cannot sign a root`},
		{"aes", `is of type "aes256-gcm96", which cannot sign a root`},
		{"exportable", "is exportable: the root key must never leave Vault"},
	} {
		t.Run(tc.key, func(t *testing.T) {
			c := mustClient(t, env, nil, func(c *vault.Config) { c.TransitKey = tc.key })
			_, err := newAuthority(t, storetest.NewMem(), clocktest.New(time.Now()), func(cfg *ca.Config) { cfg.RootKeys = transitKeys(t, c) })
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("ca.New: %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

// Vault stopped: leaves are still signed, the next intermediate's
// preparation fails and says so, and a CA restarted while Vault is down
// starts from its store and signs.
func TestTransitVaultDown(t *testing.T) {
	env := vaultenv.Start(t)
	env.Mount(t, "transit", "transit")
	mod := func(c *vault.Config) { c.TransitKey = "meshca-root"; c.Timeout = 5 * time.Second }
	c := mustClient(t, env, nil, mod)
	clk := clocktest.New(time.Now())
	st := storetest.NewMem()
	a, err := newAuthority(t, st, clk, func(cfg *ca.Config) { cfg.RootKeys = transitKeys(t, c) })
	if err != nil {
		t.Fatal(err)
	}
	issue(t, a, clk)
	env.Stop()

	clk.Set(ca.PrepareTime(a.SigningCertificate()).Add(time.Minute))
	err = a.Rotate(context.Background())
	if !errors.Is(err, vault.ErrUnreachable) {
		t.Fatalf("Rotate with Vault down: %v, want ErrUnreachable", err)
	}
	issue(t, a, clk)
	if w := strings.Join(a.Warnings(), "\n"); !strings.Contains(w, "preparing the next intermediate") || !strings.Contains(w, "unreachable") {
		t.Fatalf("Warnings do not say the next intermediate cannot be prepared:\n%s", w)
	}
	if err := a.Ready(context.Background()); err != nil {
		t.Fatalf("not ready while the intermediate is valid: %v", err)
	}

	// A restart with Vault still down.
	c2, err := newClient(t, env, nil, mod)
	if err != nil {
		t.Fatalf("vault.New with Vault down: %v (want a client that keeps trying)", err)
	}
	a2, err := newAuthority(t, st, clk, func(cfg *ca.Config) { cfg.RootKeys = transitKeys(t, c2) })
	if err != nil {
		t.Fatalf("restart with Vault down: %v", err)
	}
	issue(t, a2, clk)
}

func TestTransitRootRotation(t *testing.T) {
	env := vaultenv.Start(t)
	env.Mount(t, "transit", "transit")
	c := mustClient(t, env, nil, func(c *vault.Config) { c.TransitKey = "meshca-root" })
	clk := clocktest.New(time.Now())
	a, err := newAuthority(t, storetest.NewMem(), clk, func(cfg *ca.Config) {
		cfg.RootKeys, cfg.RootRotationCrossSign = transitKeys(t, c), true
	})
	if err != nil {
		t.Fatal(err)
	}
	old := a.Bundle().X509Authorities()[0]
	ctx := context.Background()
	if _, err := a.RotateRoot(ctx, ca.RootRotationRequest{Action: ca.RootRotationStart}); err != nil {
		t.Fatal(err)
	}
	roots := a.Bundle().X509Authorities()
	if len(roots) != 2 || !pki.SamePublicKey(roots[1].PublicKey, transitPublicKey(t, env, "meshca-root", "2")) {
		t.Fatalf("prepared: want the old root and a new one on Transit key version 2")
	}
	if _, err := a.RotateRoot(ctx, ca.RootRotationRequest{Action: ca.RootRotationAdvance, Phase: store.PhasePrepared}); err != nil {
		t.Fatal(err)
	}
	chain := issue(t, a, clk)
	if err := chain[1].CheckSignatureFrom(roots[1]); err != nil || chain[1].CheckSignatureFrom(old) == nil {
		t.Fatalf("switched: the intermediate is not signed by the new Transit root (%v)", err)
	}
	// Cross-signing: the old root (Transit key version 1) certified the
	// same intermediate too.
	if len(chain) != 3 || chain[2].CheckSignatureFrom(old) != nil {
		t.Fatalf("switched: %d certificates, want the intermediate cross-signed by the old Transit root last", len(chain))
	}
}

// pkiRoot mounts a PKI engine at mount with a generated root.
func pkiRoot(t testing.TB, env *vaultenv.Env, mount, cn string) *x509.Certificate {
	t.Helper()
	env.Mount(t, mount, "pki")
	s := env.Write(t, mount+"/root/generate/internal", map[string]any{"common_name": cn, "ttl": "87600h", "key_type": "ec", "key_bits": 256})
	c, err := pki.ParseCertificate(s.Data["certificate"].(string))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestPKIParent(t *testing.T) {
	env := vaultenv.Start(t)
	root := pkiRoot(t, env, "pki", "vault root")
	var m calls
	c := mustClient(t, env, &m, nil)
	clk := clocktest.New(time.Now())
	p, err := c.PKIParent(context.Background(), vault.DefaultPKIPath, filepath.Join(t.TempDir(), "chain.pem"), clk.Now())
	if err != nil {
		t.Fatal(err)
	}
	a, err := newAuthority(t, storetest.NewMem(), clk, func(cfg *ca.Config) { cfg.Parent = p })
	if err != nil {
		t.Fatal(err)
	}
	if roots := a.Bundle().X509Authorities(); len(roots) != 1 || !roots[0].Equal(root) {
		t.Fatal("the bundle is not Vault's PKI root")
	}
	for range 20 {
		chain := issue(t, a, clk)
		if err := chain[1].CheckSignatureFrom(root); err != nil {
			t.Fatalf("the intermediate is not signed by Vault's root: %v", err)
		}
		if !chain[1].IsCA || chain[1].MaxPathLen != 0 || !chain[1].MaxPathLenZero {
			t.Fatalf("intermediate: IsCA %v, pathlen %d", chain[1].IsCA, chain[1].MaxPathLen)
		}
	}
	if n := m.get("pki-sign-intermediate/ok"); n != 1 {
		t.Fatalf("%d PKI signatures for an intermediate and 20 leaves, want 1", n)
	}
}

func TestPKIRefused(t *testing.T) {
	env := vaultenv.Start(t)
	root := pkiRoot(t, env, "pki", "vault root")
	env.Write(t, "pki/roles/leaves", map[string]any{"allow_any_name": true, "allowed_uri_sans": "spiffe://*", "key_type": "any", "enforce_hostnames": false, "allowed_serial_numbers": "*", "ttl": "24h"})
	// An intermediate mount whose issuer was imported without the root.
	env.Mount(t, "pki_int", "pki")
	csr := env.Write(t, "pki_int/intermediate/generate/internal", map[string]any{"common_name": "vault intermediate", "key_type": "ec", "key_bits": 256})
	signed := env.Write(t, "pki/root/sign-intermediate", map[string]any{"csr": csr.Data["csr"], "common_name": "vault intermediate", "ttl": "8760h", "format": "pem"})
	env.Write(t, "pki_int/intermediate/set-signed", map[string]any{"certificate": signed.Data["certificate"]})
	_ = root
	for _, tc := range []struct{ name, path, want string }{
		{"a role that signs leaves", "pki/sign/leaves", "not a CA"},
		{"a chain without its root", "pki_int/root/sign-intermediate", "which is not a root"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := mustClient(t, env, nil, nil)
			clk := clocktest.New(time.Now())
			p, err := c.PKIParent(context.Background(), tc.path, "", clk.Now())
			if err == nil {
				_, err = newAuthority(t, storetest.NewMem(), clk, func(cfg *ca.Config) { cfg.Parent = p })
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("start: %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

// With Vault down at a restart, the PKI parent comes from the cached chain
// and the stored intermediate signs.
func TestPKIVaultDownRestart(t *testing.T) {
	env := vaultenv.Start(t)
	pkiRoot(t, env, "pki", "vault root")
	cache := filepath.Join(t.TempDir(), "chain.pem")
	clk := clocktest.New(time.Now())
	st := storetest.NewMem()
	start := func() (*ca.Authority, error) {
		c, err := newClient(t, env, nil, func(c *vault.Config) { c.Timeout = 5 * time.Second })
		if err != nil {
			return nil, err
		}
		p, err := c.PKIParent(context.Background(), vault.DefaultPKIPath, cache, clk.Now())
		if err != nil {
			return nil, err
		}
		return newAuthority(t, st, clk, func(cfg *ca.Config) { cfg.Parent = p })
	}
	a, err := start()
	if err != nil {
		t.Fatal(err)
	}
	first := issue(t, a, clk)
	env.Stop()
	a, err = start()
	if err != nil {
		t.Fatalf("restart with Vault down: %v", err)
	}
	if chain := issue(t, a, clk); !chain[1].Equal(first[1]) {
		t.Fatal("the restarted CA does not sign with its stored intermediate")
	}
}

func TestPKIRootRotation(t *testing.T) {
	env := vaultenv.Start(t)
	oldRoot := pkiRoot(t, env, "pki", "vault root 1")
	newRoot := pkiRoot(t, env, "pki2", "vault root 2")
	c := mustClient(t, env, nil, nil)
	clk := clocktest.New(time.Now())
	p, err := c.PKIParent(context.Background(), vault.DefaultPKIPath, "", clk.Now())
	if err != nil {
		t.Fatal(err)
	}
	a, err := newAuthority(t, storetest.NewMem(), clk, func(cfg *ca.Config) {
		cfg.Parent = p
		cfg.NextParent = func(ctx context.Context, now time.Time) (ca.Parent, error) {
			return c.PKIParent(ctx, "pki2/root/sign-intermediate", "", now)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	before := issue(t, a, clk)
	ctx := context.Background()
	if _, err := a.RotateRoot(ctx, ca.RootRotationRequest{Action: ca.RootRotationStart}); err != nil {
		t.Fatal(err)
	}
	if roots := a.Bundle().X509Authorities(); len(roots) != 2 || !roots[0].Equal(oldRoot) || !roots[1].Equal(newRoot) {
		t.Fatal("prepared: the bundle is not both Vault roots")
	}
	if _, err := a.RotateRoot(ctx, ca.RootRotationRequest{Action: ca.RootRotationAdvance, Phase: store.PhasePrepared}); err != nil {
		t.Fatal(err)
	}
	after := issue(t, a, clk)
	if err := after[1].CheckSignatureFrom(newRoot); err != nil {
		t.Fatalf("switched: the intermediate is not signed by the new PKI root: %v", err)
	}
	// A workload renewed before the switch still verifies (both roots
	// are trusted until the rotation completes).
	if _, _, err := x509svid.Verify(before, a.Bundle(), x509svid.WithTime(clk.Now())); err != nil {
		t.Fatalf("a leaf from before the switch: %v", err)
	}
}

// TestTransitSignerHonoursContext: a Transit signature bound to a context
// ends with it (a rotation stopped at shutdown or on a lost lease), and
// the signer satisfies ca.ContextSigner.
func TestTransitSignerHonoursContext(t *testing.T) {
	env := vaultenv.Start(t)
	env.Mount(t, "transit", "transit")
	c := mustClient(t, env, nil, func(c *vault.Config) { c.TransitKey = "meshca-root" })
	key, _, err := transitKeys(t, c).Current(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	cs, ok := key.(ca.ContextSigner)
	if !ok {
		t.Fatal("the Transit signer is not a ca.ContextSigner")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	digest := make([]byte, 32)
	if _, err := cs.WithContext(ctx).Sign(rand.Reader, digest, crypto.SHA256); !errors.Is(err, context.Canceled) {
		t.Fatalf("Sign with a cancelled context: %v, want context.Canceled", err)
	}
	if _, err := cs.Sign(rand.Reader, digest, crypto.SHA256); err != nil {
		t.Fatalf("Sign: %v", err)
	}
}
