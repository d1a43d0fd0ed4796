package main

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshca/meshca/internal/testlog"

	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/meshca/meshca/ca/adminclient"
	"github.com/meshca/meshca/ca/client"
	"github.com/meshca/meshca/ca/plane"
	"github.com/meshca/meshca/ca/server"
	"github.com/meshca/meshca/internal/clock/clocktest"
	"github.com/meshca/meshca/internal/pki"
	"github.com/meshca/meshca/sds/agent"
)

// TestLogsHoldNoSecrets runs the server and an agent at debug level through
// a join-token bootstrap, a renewal over mTLS, SDS and Workload API reads,
// a replayed join token, a wrong bearer token and a wrong admin token, and
// checks that the logs hold no private key, no bearer token, no join token
// and no admin token, in any encoding the code could print them.
func TestLogsHoldNoSecrets(t *testing.T) {
	clearMeshcaEnv(t)
	dir, err := os.MkdirTemp("", "secrets") // short: Unix socket paths are limited to 108 bytes
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	logs := &testlog.Buffer{}
	kek := bytes.Repeat([]byte{5}, 32)
	t.Setenv("MESHCA_KEK", hex.EncodeToString(kek))

	var o serverOptions
	cmd := &cobra.Command{}
	cmd.SetErr(logs)
	o.addFlags(cmd.Flags())
	if err := cmd.Flags().Parse([]string{"--data-dir", filepath.Join(dir, "ca"), "--trust-domain", "example.org",
		"--grpc-listen", "127.0.0.1:0", "--https-listen", "127.0.0.1:0", "--monitoring-listen", "127.0.0.1:0",
		"--log-level", "debug", "--log-format", "json"}); err != nil {
		t.Fatal(err)
	}
	cfg, err := o.planeConfig(cmd)
	if err != nil {
		t.Fatal(err)
	}
	p, err := plane.Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Stop()
	adminToken := strings.TrimSpace(string(readFile(t, cfg.AdminTokenPath())))

	// A join token through the admin API, used by an agent, then replayed.
	admin, err := adminclient.New(adminclient.Config{Addr: p.Addr("https").String(), DataDir: cfg.DataDir})
	if err != nil {
		t.Fatal(err)
	}
	jt, err := admin.CreateJoinToken(context.Background(), server.JoinTokenRequest{SPIFFEID: "spiffe://example.org/vm/db-1", TTL: "1h"})
	if err != nil {
		t.Fatal(err)
	}
	clk := clocktest.New(time.Now()) // drives the agent's renewal
	jtFile := filepath.Join(dir, "jt")
	os.WriteFile(jtFile, []byte(jt.Token), 0o600)
	a, err := agent.Start(context.Background(), agent.Config{
		ID: mustSPIFFE(t, jt.SPIFFEID), CAAddr: p.Addr("grpc").String(), CARootsFile: cfg.BundlePath(), JoinTokenFile: jtFile,
		WorkloadSocket: filepath.Join(dir, "wl.sock"), Clock: clk, FederationRefresh: -1, // no federation wait on clk
		Logger: slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	src, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(workloadapi.WithAddr("unix://"+filepath.Join(dir, "wl.sock"))))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	first, _ := src.GetX509SVID()
	// Past the renewal time (half of 24h ± 10 %) but within the SVID's
	// life, so the agent renews over mTLS with it and that path logs too.
	// The JWT bundle's refresh always waits on clk: the renewal is the
	// second waiter.
	for deadline := time.Now().Add(20 * time.Second); clk.Waiters() < 2; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the agent never waited for its renewal")
		}
	}
	clk.Advance(15 * time.Hour)
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if cur, _ := src.GetX509SVID(); cur.Certificates[0].SerialNumber.Cmp(first.Certificates[0].SerialNumber) != 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no renewal over mTLS")
		}
	}
	svid, _ := src.GetX509SVID()

	// Hostile calls that get logged: a replay, a wrong token, a wrong admin token.
	c, err := client.New(client.Config{Addr: p.Addr("grpc").String(), LoadRoots: func() ([]byte, error) { return os.ReadFile(cfg.BundlePath()) }, ServerName: "localhost"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	key, _ := pki.GenerateKey(pki.KeyECDSAP256)
	csr, _ := client.NewCSR(key, mustSPIFFE(t, jt.SPIFFEID))
	const wrongToken = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2VjcmV0LXNpZ25hdHVyZQ"
	for _, tok := range []string{jt.Token, wrongToken} {
		if _, err := c.Sign(ctx, csr, 0, tok); err == nil {
			t.Fatalf("token %d was accepted", len(tok))
		}
	}
	badAdmin, _ := adminclient.New(adminclient.Config{Addr: p.Addr("https").String(), DataDir: cfg.DataDir, TokenFile: writeTemp(t, dir, "wrong-admin-token-value")})
	if _, err := badAdmin.Issuances(ctx, "", 0); err == nil {
		t.Fatal("a wrong admin token was accepted")
	}

	out := logs.String()
	if !strings.Contains(out, `"level":"DEBUG"`) || !strings.Contains(out, "join token replayed") {
		t.Fatalf("the run did not log at debug level or did not log the replay; logs:\n%s", out)
	}
	secrets := map[string]string{"join token": jt.Token, "wrong bearer token": wrongToken, "admin token": adminToken,
		"wrong admin token": "wrong-admin-token-value", "KEK (hex)": hex.EncodeToString(kek), "KEK (base64)": base64.StdEncoding.EncodeToString(kek)}
	for i, k := range []any{svid.PrivateKey, key} {
		der, err := x509.MarshalPKCS8PrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		b64 := base64.StdEncoding.EncodeToString(der)
		secrets["private key "+string(rune('A'+i))+" (base64)"] = b64[len(b64)/2:]
		secrets["private key "+string(rune('A'+i))+" (hex)"] = hex.EncodeToString(der)[40:]
	}
	for what, s := range secrets {
		if strings.Contains(out, s) {
			t.Errorf("the logs contain the %s", what)
		}
	}
	for _, marker := range []string{"PRIVATE KEY", "Bearer "} {
		if strings.Contains(out, marker) {
			t.Errorf("the logs contain %q", marker)
		}
	}
	var lines int
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(l), &m) == nil {
			lines++
		}
	}
	t.Logf("%d log lines checked, %d secrets", lines, len(secrets))
	if testing.Verbose() {
		t.Log(out)
	}
}

func writeTemp(t *testing.T, dir, content string) string {
	t.Helper()
	f := filepath.Join(dir, "tmp-"+content[:5])
	if err := os.WriteFile(f, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

func mustSPIFFE(t *testing.T, s string) spiffeid.ID {
	t.Helper()
	id, err := spiffeid.FromString(s)
	if err != nil {
		t.Fatal(err)
	}
	return id
}
