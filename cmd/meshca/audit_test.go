package main

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshca/meshca/attestor"
	"github.com/meshca/meshca/ca/client"
	"github.com/meshca/meshca/internal/audit"
	"github.com/meshca/meshca/internal/pki"
)

var update = flag.Bool("update", false, "rewrite golden files")

// golden compares got with testdata/audit/<name>, or rewrites it with -update.
func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", "audit", name)
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if string(want) != got {
		t.Errorf("%s differs (go test -update rewrites it)\n--- want\n%s\n--- got\n%s", name, want, got)
	}
}

func TestAuditCertGolden(t *testing.T) {
	svid, bundle := filepath.Join("testdata", "audit", "svid.pem"), filepath.Join("testdata", "audit", "bundle.pem")
	tests := []struct {
		name string
		args []string
	}{
		{"cert.table", []string{"--now", "2026-11-22T12:00:00Z"}},
		{"cert.json", []string{"--now", "2026-11-22T12:00:00Z", "-o", "json"}},
		{"cert.yaml", []string{"--now", "2026-11-22T12:00:00Z", "-o", "yaml"}},
		{"cert_past_renewal.table", []string{"--now", "2026-11-22T20:00:00Z"}},
		{"cert_expired.json", []string{"--now", "2026-11-24T00:00:00Z", "-o", "json"}},
		{"cert_short_policy.table", []string{"--now", "2026-11-22T12:00:00Z", "--max-lifetime", "1h"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"audit", "cert", svid, "--bundle", bundle}, tc.args...)
			code, stdout, stderr := runMeshca(t, args...)
			if code != 0 {
				t.Fatalf("exit %d: %s", code, stderr)
			}
			golden(t, tc.name+".golden", stdout)
		})
	}
}

func TestAuditUsageErrorsExit2(t *testing.T) {
	svid := filepath.Join("testdata", "audit", "svid.pem")
	for name, args := range map[string][]string{
		"no source":        {"audit", "cert"},
		"two sources":      {"audit", "cert", svid, "--sds", "/nonexistent.sock"},
		"bad output":       {"audit", "cert", svid, "-o", "xml"},
		"unknown flag":     {"audit", "cert", svid, "--colour"},
		"missing file":     {"audit", "cert", "/nonexistent.pem"},
		"not a cert":       {"audit", "cert", "audit_test.go"},
		"bad bundle":       {"audit", "cert", svid, "--bundle", "/nonexistent.pem"},
		"issued, no CA":    {"audit", "issued", "--data-dir", "/nonexistent"},
		"issued, too many": {"audit", "issued", "extra"},
	} {
		t.Run(name, func(t *testing.T) {
			code, _, stderr := runMeshca(t, args...)
			if code != 2 || !strings.Contains(stderr, "meshca: ") {
				t.Fatalf("exit %d, want 2; stderr %q", code, stderr)
			}
		})
	}
}

// TestAuditIssued reads the issuance log of a running CA.
func TestAuditIssued(t *testing.T) {
	dir := t.TempDir()
	args := []string{"--data-dir", dir, "--trust-domain", "example.org", "--grpc-listen", "127.0.0.1:0",
		"--https-listen", "127.0.0.1:0", "--monitoring-listen", ""}
	web := spiffeid.RequireFromString("spiffe://example.org/ns/web/sa/frontend")
	db := spiffeid.RequireFromString("spiffe://example.org/ns/db/sa/postgres")
	p := startPlane(t, args, attestor.NewStaticTokens(map[string]spiffeid.ID{"w": web, "d": db}))
	c, err := client.New(client.Config{Addr: p.Addr("grpc").String(), Roots: rootsPool(t, dir), ServerName: "localhost"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var lastWeb string
	for i, tok := range []string{"w", "w", "w", "d"} {
		key, _ := pki.GenerateKey(pki.KeyECDSAP256)
		id := web
		if tok == "d" {
			id = db
		}
		csr, _ := client.NewCSR(key, id)
		chain, err := c.Sign(context.Background(), csr, time.Hour, tok)
		if err != nil {
			t.Fatalf("issue %d: %v", i, err)
		}
		if tok == "w" {
			leaf, _ := pki.ParseCertificates([]byte(chain[0]))
			lastWeb = leaf[0].SerialNumber.Text(16)
		}
	}
	// Revoke through the admin API, spelled as OpenSSL prints serials.
	adminArgs := []string{"--server", p.Addr("https").String(), "--data-dir", dir}
	if code, out, errOut := runMeshca(t, append([]string{"revoke", "--serial", strings.ToUpper(lastWeb), "--reason", "test"}, adminArgs...)...); code != 0 || !strings.Contains(out, "revoked_at") {
		t.Fatalf("meshca revoke: exit %d\n%s%s", code, out, errOut)
	}
	for name, args := range map[string][]string{
		"both":        {"revoke", "--serial", "ab", "--spiffe-id", web.String()},
		"neither":     {"revoke"},
		"bad serial":  {"revoke", "--serial", "xyz"},
		"bad ID":      {"revoke", "--spiffe-id", "web"},
		"wrong token": {"revoke", "--serial", "ab", "--admin-token-file", filepath.Join(dir, "bundle.pem")},
	} {
		if code, _, errOut := runMeshca(t, append(args, adminArgs...)...); code != 1 || !strings.Contains(errOut, "admin API") {
			t.Errorf("revoke %s: exit %d, stderr %q", name, code, errOut)
		}
	}
	// audit issued takes its flags only: an agent's MESHCA_SPIFFE_ID in the
	// environment must not filter the report.
	t.Setenv("MESHCA_SPIFFE_ID", db.String())
	t.Setenv("MESHCA_SINCE", "bogus")
	code, stdout, stderr := runMeshca(t, "audit", "issued", "--server", p.Addr("https").String(), "--data-dir", dir, "-o", "json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	var rep audit.IssuedReport
	if err := json.Unmarshal([]byte(stdout), &rep); err != nil {
		t.Fatalf("output is not the JSON report: %v\n%s", err, stdout)
	}
	if len(rep.Identities) != 2 || rep.Identities[0].SPIFFEID != db.String() || rep.Identities[1].Issued != 3 ||
		rep.Identities[1].Live != 2 || rep.Identities[1].Revoked != 1 || len(rep.Revoked) != 1 || rep.Revoked[0].Serial != lastWeb {
		t.Fatalf("report %+v", rep)
	}
	code, stdout, _ = runMeshca(t, "audit", "issued", "--server", p.Addr("https").String(), "--data-dir", dir, "--spiffe-id", db.String())
	if code != 0 || !strings.Contains(stdout, db.String()) || strings.Contains(stdout, web.String()) {
		t.Fatalf("filtered table (exit %d):\n%s", code, stdout)
	}
}

func TestSummarizeFlagsHotIdentities(t *testing.T) {
	now := time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)
	var recs []audit.Issued
	for i := range 40 { // one holder, 24h certificates, 40 issued in a day: far more than ~3
		at := now.Add(-time.Duration(i) * 30 * time.Minute)
		recs = append(recs, audit.Issued{Serial: string(rune('a' + i)), SPIFFEID: "spiffe://x/hot", Peer: "10.0.0.1:40000", IssuedAt: at, NotBefore: at, NotAfter: at.Add(24 * time.Hour)})
	}
	for i := range 3 {
		at := now.Add(-time.Duration(i) * 12 * time.Hour)
		recs = append(recs, audit.Issued{Serial: "n" + string(rune('a'+i)), SPIFFEID: "spiffe://x/normal", Peer: "10.0.0.2:40000", IssuedAt: at, NotBefore: at, NotAfter: at.Add(24 * time.Hour)})
	}
	rep := audit.Summarize(recs, now, 24*time.Hour)
	if len(rep.Warnings) != 1 || !strings.Contains(rep.Warnings[0], "spiffe://x/hot") {
		t.Fatalf("warnings %q, want one about spiffe://x/hot", rep.Warnings)
	}
}

func rootsPool(t *testing.T, dir string) *x509.CertPool {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(readFile(t, filepath.Join(dir, "bundle.pem"))) {
		t.Fatal("no bundle")
	}
	return pool
}
