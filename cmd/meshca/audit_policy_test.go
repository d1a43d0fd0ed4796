package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/meshca/meshca/policy"
)

func TestAuditAuthzAndMTLSGolden(t *testing.T) {
	pols := filepath.Join("testdata", "audit", "policies")
	req := filepath.Join("testdata", "audit", "request-allowed.json")
	base := []string{"--policies", pols, "--namespace", "shop", "--labels", "app=checkout"}
	tests := []struct {
		name string
		args []string
		code int
	}{
		{"authz_allowed.json", []string{"audit", "authz", "--policies", pols, "--request", req, "-o", "json"}, 0},
		{"authz_allowed.table", []string{"audit", "authz", "--policies", pols, "--request", req}, 0},
		{"authz_admin_denied.json", append(append([]string{"audit", "authz"}, base...), "--source-principal", "cluster.local/ns/web/sa/frontend", "--method", "GET", "--path", "/admin/users", "-o", "json"), 1},
		{"authz_no_allow_matched.json", append(append([]string{"audit", "authz"}, base...), "--source-principal", "cluster.local/ns/web/sa/other", "--method", "GET", "--path", "/api/x", "-o", "json"), 1},
		{"authz_plaintext.yaml", append(append([]string{"audit", "authz"}, base...), "--method", "GET", "--path", "/api/x", "-o", "yaml"), 1},
		{"mtls_mesh.json", []string{"audit", "mtls", "--policies", pols, "--namespace", "web", "-o", "json"}, 0},
		{"mtls_port.json", []string{"audit", "mtls", "--policies", pols, "--namespace", "shop", "--labels", "app=checkout", "--port", "8081", "-o", "json"}, 0},
		{"mtls_inherited.table", []string{"audit", "mtls", "--policies", pols, "--namespace", "shop", "--labels", "app=checkout", "--port", "8080"}, 0},
		{"lint_clean.table", []string{"audit", "lint", "--policies", pols}, 0},
		{"lint_findings.table", []string{"audit", "lint", "--policies", filepath.Join("testdata", "audit", "lint")}, 1},
		{"lint_findings.json", []string{"audit", "lint", "--policies", filepath.Join("testdata", "audit", "lint"), "-o", "json"}, 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, stdout, stderr := runMeshca(t, tc.args...)
			if code != tc.code {
				t.Fatalf("exit %d, want %d\n%s%s", code, tc.code, stdout, stderr)
			}
			golden(t, tc.name+".golden", stdout)
		})
	}
}

// TestAuditAuthzJSONContract: the output has exactly the fields.
func TestAuditAuthzJSONContract(t *testing.T) {
	_, stdout, _ := runMeshca(t, "audit", "authz", "--policies", filepath.Join("testdata", "audit", "policies"),
		"--request", filepath.Join("testdata", "audit", "request-allowed.json"), "-o", "json")
	var got map[string]any
	if err := json.Unmarshal([]byte(stdout), &got); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"decision", "action", "policy", "rule", "reason"} {
		if _, ok := got[k]; !ok {
			t.Errorf("output lacks %q", k)
		}
	}
	if len(got) != 5 {
		t.Errorf("output has fields %v, want exactly decision, action, policy, rule, reason", got)
	}
	var d policy.Decision
	json.Unmarshal([]byte(stdout), &d)
	if d.Decision != "ALLOW" || d.Policy != "shop/allow-frontend" || d.Rule != 0 {
		t.Errorf("decision %+v", d)
	}
}

// TestAuditIstioSemantics: path normalization, filter metadata and trust
// domain aliasing through the CLI flags and the request JSON.
func TestAuditIstioSemantics(t *testing.T) {
	pols := filepath.Join("testdata", "audit", "policies")
	mysql := []string{"audit", "authz", "--policies", filepath.Join("testdata", "audit", "istio"), "--request", filepath.Join("testdata", "audit", "request-mysql.json"), "-o", "json"}
	dotdot := []string{"audit", "authz", "--policies", pols, "--namespace", "shop", "--labels", "app=checkout",
		"--source-principal", "cluster.local/ns/web/sa/frontend", "--method", "GET", "--path", "/api/../admin/users", "-o", "json"}
	tests := []struct {
		name string
		args []string
		code int
	}{
		{"authz_dotdot_base.json", dotdot, 1},
		{"authz_dotdot_none.json", append(dotdot, "--path-normalization", "NONE"), 0},
		{"authz_mysql_allowed.json", mysql, 0},
		{"authz_mysql_renamed_td.json", append(mysql, "--trust-domain", "example.org"), 1},
		{"authz_mysql_td_alias.json", append(mysql, "--trust-domain", "example.org", "--trust-domain-alias", "cluster.local"), 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, stdout, stderr := runMeshca(t, tc.args...)
			if code != tc.code {
				t.Fatalf("exit %d, want %d\n%s%s", code, tc.code, stdout, stderr)
			}
			golden(t, tc.name+".golden", stdout)
		})
	}
}

func TestAuditPolicyUsageErrorsExit2(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: x, namespace: shop}\nspec:\n  rulez: []\n"), 0o644)
	badReq := filepath.Join(dir, "req.json")
	os.WriteFile(badReq, []byte(`{"workload":{"namespace":"a"},"sauce":{}}`), 0o644)
	pols := filepath.Join("testdata", "audit", "policies")
	badVerdict := filepath.Join(dir, "verdict.json")
	os.WriteFile(badVerdict, []byte(`{"workload":{"namespace":"shop"},"custom_verdicts":{"ext":"maybe"}}`), 0o644)
	for name, args := range map[string][]string{
		"no policies":       {"audit", "authz", "--namespace", "x"},
		"misspelled field":  {"audit", "authz", "--policies", bad, "--namespace", "x"},
		"no request":        {"audit", "authz", "--policies", pols},
		"unknown req field": {"audit", "authz", "--policies", pols, "--request", badReq},
		"bad protocol":      {"audit", "authz", "--policies", pols, "--namespace", "x", "--protocol", "UDP"},
		"mtls no namespace": {"audit", "mtls", "--policies", pols},
		"bad source IP":     {"audit", "authz", "--policies", pols, "--namespace", "x", "--source-ip", "10.0.0.1:1234"},
		"bad verdict":       {"audit", "authz", "--policies", pols, "--request", badVerdict},
		"missing path":      {"audit", "mtls", "--policies", "/nonexistent", "--namespace", "x"},
		"bad normalization": {"audit", "authz", "--policies", pols, "--namespace", "x", "--path-normalization", "RFC"},
	} {
		t.Run(name, func(t *testing.T) {
			code, _, stderr := runMeshca(t, args...)
			if code != 2 {
				t.Fatalf("exit %d, want 2: %s", code, stderr)
			}
			if name == "misspelled field" && !strings.Contains(stderr, "rulez") {
				t.Errorf("error does not name the field: %s", stderr)
			}
		})
	}
}

// TestREADMEAuditExamples runs the README's `meshca audit authz|mtls|lint`
// lines word for word (from the repository root, on
// deploy/examples/policies), so the quickstart cannot drift from the code:
// authz allows (exit 0), mtls says STRICT, lint finds nothing.
func TestREADMEAuditExamples(t *testing.T) {
	readme, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	// Join continued lines, drop comments.
	text := strings.ReplaceAll(string(readme), "\\\n", " ")
	want := map[string]string{"authz": "DECISION  ALLOW", "mtls": "MODE    STRICT", "lint": "no findings"}
	seen := 0
	for _, line := range strings.Split(text, "\n") {
		line, _, _ = strings.Cut(line, "#")
		args := strings.Fields(line)
		if len(args) < 3 || args[0] != "bin/meshca" || args[1] != "audit" || want[args[2]] == "" {
			continue
		}
		for i, a := range args {
			if i > 0 && args[i-1] == "--policies" {
				args[i] = filepath.Join("..", "..", a) // the README runs from the repository root
			}
		}
		var out, errOut strings.Builder
		if code := run(args[1:], &out, &errOut); code != 0 || !strings.Contains(out.String(), want[args[2]]) {
			t.Errorf("README: %s\nexit %d, stdout:\n%s%s\nwant exit 0 and %q", line, code, out.String(), errOut.String(), want[args[2]])
		}
		seen++
	}
	if seen != 3 {
		t.Fatalf("found %d README audit authz/mtls/lint lines, want 3", seen)
	}
}
