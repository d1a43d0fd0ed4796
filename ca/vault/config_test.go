package vault

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestConfigRefused(t *testing.T) {
	dir := t.TempDir()
	idFile := filepath.Join(dir, "id")
	if err := os.WriteFile(idFile, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"http without opt-in", Config{Addr: "http://127.0.0.1:8200"}, "is not TLS"},
		{"no scheme", Config{Addr: "127.0.0.1:8200"}, "want https://host:port"},
		{"no host", Config{Addr: "https://"}, "has no host"},
		{"other scheme", Config{Addr: "ftp://v:8200"}, "want https://host:port"},
		{"negative timeout", Config{Addr: "https://v:8200", Timeout: -time.Second}, "timeout must be positive"},
		{"unknown auth", Config{Addr: "https://v:8200", Auth: "ldap"}, "want token, approle or kubernetes"},
		{"approle without secret id", Config{Addr: "https://v:8200", Auth: AuthAppRole, RoleIDFile: idFile}, "--vault-approle-secret-id-file"},
		{"kubernetes without role", Config{Addr: "https://v:8200", Auth: AuthKubernetes}, "--vault-kubernetes-role"},
		{"ed25519 transit key type", Config{Addr: "https://v:8200", TransitKeyType: "ed25519"}, "cannot sign a root"},
		{"empty token file", Config{Addr: "https://127.0.0.1:1", TokenFile: filepath.Join(dir, "none")}, "--vault-token-file"},
		{"ca file without PEM", Config{Addr: "https://127.0.0.1:1", CAFile: idFile}, "holds no PEM certificate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("VAULT_TOKEN", "")
			_, err := New(context.Background(), tc.cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New: %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestParseRef(t *testing.T) {
	for _, tc := range []struct {
		ref, mount, name string
		version          int
		ok               bool
	}{
		{"transit/keys/root:v3", "transit", "root", 3, true},
		{"team/transit/keys/meshca-root:v12", "team/transit", "meshca-root", 12, true},
		{"transit/keys/root", "", "", 0, false},
		{"transit/keys/root:v0", "", "", 0, false},
		{"transit/keys/root:vx", "", "", 0, false},
		{"keys/root:v1", "", "", 0, false},
		{"transit/keys/:v1", "", "", 0, false},
		{"transit/keys/a/b:v1", "", "", 0, false},
	} {
		t.Run(tc.ref, func(t *testing.T) {
			mount, name, version, err := parseRef(tc.ref)
			if (err == nil) != tc.ok || mount != tc.mount || name != tc.name || version != tc.version {
				t.Fatalf("parseRef = %q %q %d %v", mount, name, version, err)
			}
			if tc.ok && formatRef(mount, name, version) != tc.ref {
				t.Fatalf("formatRef = %q, want %q", formatRef(mount, name, version), tc.ref)
			}
		})
	}
}

func TestIssuerPath(t *testing.T) {
	for _, tc := range []struct{ path, want string }{
		{"pki/root/sign-intermediate", "pki/issuer/default"},
		{"/pki/root/sign-intermediate/", "pki/issuer/default"},
		{"pki/prod/root/sign-intermediate", "pki/prod/issuer/default"},
		{"pki/issuer/next/sign-intermediate", "pki/issuer/next"},
		{"pki/sign/workloads", "pki/issuer/default"},
		{"pki", ""},
		{"secret/data/x", ""},
	} {
		t.Run(tc.path, func(t *testing.T) {
			got, err := issuerPath(tc.path)
			if got != tc.want || (err == nil) != (tc.want != "") {
				t.Fatalf("issuerPath = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}
