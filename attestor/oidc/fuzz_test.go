package oidc_test

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/meshca/meshca/attestor/oidc"
)

// FuzzLoadFile reads arbitrary bytes as an --oidc-config file and checks
// that LoadFile never panics and that what it accepts round-trips: the
// issuers written back as YAML load again to the same issuers, so nothing
// in an accepted file was half read or silently dropped.
func FuzzLoadFile(f *testing.F) {
	f.Add([]byte(`issuers:
- issuer: https://token.actions.githubusercontent.com
  jwks_url: https://token.actions.githubusercontent.com/.well-known/jwks
  audiences: [meshca]
  spiffe_id: "spiffe://{{td}}/gh/{{.repository}}"
  required_claims: {repository_owner: acme}
`))
	f.Add([]byte(`{"issuers":[{"issuer":"https://i","jwks_file":"/k.json","audiences":["a","b"],"spiffe_id":"spiffe://x/y"}]}`))
	f.Add([]byte("issuers:\n- issuer: x\n  audience: [a]\n"))
	f.Add([]byte("issuers: &a [*a]\n"))
	f.Add([]byte("issuers:\n- required_claims: {a: 1, b: [x], c: null}\n"))
	f.Add([]byte(""))
	f.Fuzz(func(t *testing.T, data []byte) {
		dir := t.TempDir()
		path := filepath.Join(dir, "oidc.yaml")
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		issuers, err := oidc.LoadFile(path)
		if err != nil {
			return
		}
		out, err := yaml.Marshal(oidc.File{Issuers: issuers})
		if err != nil {
			t.Fatalf("accepted issuers do not marshal: %v", err)
		}
		again := filepath.Join(dir, "again.yaml")
		if err := os.WriteFile(again, out, 0o600); err != nil {
			t.Fatal(err)
		}
		reread, err := oidc.LoadFile(again)
		if err != nil {
			t.Fatalf("re-reading %q: %v", out, err)
		}
		if !reflect.DeepEqual(normalize(issuers), normalize(reread)) {
			t.Fatalf("round trip changed the issuers:\n%#v\n%#v", issuers, reread)
		}
	})
}

// normalize makes empty and nil lists and maps compare equal: omitempty
// writes neither.
func normalize(in []oidc.IssuerConfig) []oidc.IssuerConfig {
	var out []oidc.IssuerConfig
	for _, c := range in {
		if len(c.Audiences) == 0 {
			c.Audiences = nil
		}
		if len(c.RequiredClaims) == 0 {
			c.RequiredClaims = nil
		}
		out = append(out, c)
	}
	return out
}
