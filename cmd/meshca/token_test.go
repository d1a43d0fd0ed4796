package main

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/meshca/meshca/ca/adminclient"
	"github.com/meshca/meshca/ca/client"
	"github.com/meshca/meshca/ca/server"
	"github.com/meshca/meshca/internal/pki"
)

// TestTokenCreateAgainstServer runs the real server plane, creates a join
// token with `meshca token create`, and bootstraps a machine with it.
func TestTokenCreateAgainstServer(t *testing.T) {
	dir := t.TempDir()
	args := []string{"--data-dir", dir, "--trust-domain", "example.org", "--grpc-listen", "127.0.0.1:0",
		"--https-listen", "127.0.0.1:0", "--monitoring-listen", ""}
	p := startPlane(t, args)
	checkMode(t, filepath.Join(dir, "admin-token"), 0o600)

	var out bytes.Buffer
	admin := adminclient.Config{Addr: p.Addr("https").String(), DataDir: dir}
	req := server.JoinTokenRequest{SPIFFEID: "spiffe://example.org/vm/db-1", TTL: time.Hour.String()}
	if err := createToken(context.Background(), admin, req, "json", &out); err != nil {
		t.Fatalf("token create: %v", err)
	}
	var jt server.JoinTokenResponse
	if err := json.Unmarshal(out.Bytes(), &jt); err != nil || jt.SPIFFEID != req.SPIFFEID {
		t.Fatalf("output %q: %v", out.String(), err)
	}

	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(readFile(t, filepath.Join(dir, "bundle.pem")))
	c, err := client.New(client.Config{Addr: p.Addr("grpc").String(), Roots: roots, ServerName: "localhost"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	key, _ := pki.GenerateKey(pki.KeyECDSAP256)
	id := spiffeid.RequireFromString(req.SPIFFEID)
	csr, _ := client.NewCSR(key, id)
	chain, err := c.Sign(context.Background(), csr, 0, jt.Token)
	if err != nil {
		t.Fatalf("bootstrap with join token: %v", err)
	}
	svid, err := x509svid.Parse([]byte(strings.Join(chain[:len(chain)-1], "")), pemKey(t, key))
	if err != nil {
		t.Fatal(err)
	}
	if svid.ID != id {
		t.Fatalf("certificate for %s, want %s", svid.ID, id)
	}
	if _, _, err := x509svid.Verify(svid.Certificates, p.Authority().Bundle()); err != nil {
		t.Fatalf("verify: %v", err)
	}
	if _, err := c.Sign(context.Background(), csr, 0, jt.Token); err == nil || !strings.Contains(err.Error(), "already used") {
		t.Fatalf("replay = %v", err)
	}

	// Wrong admin token: refused with the server's message.
	os.WriteFile(filepath.Join(dir, "wrong-admin"), []byte("nope"), 0o600)
	admin.TokenFile = filepath.Join(dir, "wrong-admin")
	if err := createToken(context.Background(), admin, req, "json", &out); err == nil || !strings.Contains(err.Error(), "admin token") {
		t.Fatalf("wrong admin token = %v", err)
	}
	// Missing --spiffe-id.
	if err := createToken(context.Background(), adminclient.Config{DataDir: dir}, server.JoinTokenRequest{}, "text", &out); err == nil || !strings.Contains(err.Error(), "--spiffe-id") {
		t.Fatalf("missing --spiffe-id = %v", err)
	}
}

func pemKey(t *testing.T, key any) []byte {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}
