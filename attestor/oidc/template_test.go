package oidc

import (
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// FuzzIDTemplate checks, for any claim values, that an ID the template
// accepts has exactly the template's segments, each claim filling its own
// segment with its value unchanged, and never the Kubernetes shape.
func FuzzIDTemplate(f *testing.F) {
	td := spiffeid.RequireTrustDomainFromString("example.org")
	tmpl, err := parseIDTemplate(td, "spiffe://{{td}}/ci/{{.owner}}/run-{{.ref}}/{{.repo}}", []string{"repo"})
	if err != nil {
		f.Fatal(err)
	}
	for _, seed := range [][3]string{
		{"acme", "main", "acme/web"},
		{"ns", "x", "sa/y"},
		{"acme", "feature/ns/prod/sa/payments", "a/b"},
		{"..", ".", "a/../b"},
		{"", "", ""},
		{"a%2Fb", "NS", "Sa/x"},
		{"acme", "main", "ns/prod/sa/payments"},
	} {
		f.Add(seed[0], seed[1], seed[2])
	}
	f.Fuzz(func(t *testing.T, owner, ref, repo string) {
		id, err := tmpl.execute(map[string]any{"owner": owner, "ref": ref, "repo": repo})
		if err != nil {
			return
		}
		want := "/ci/" + owner + "/run-" + ref + "/" + repo
		if id.Path() != want || strings.Contains(owner+ref, "/") {
			t.Fatalf("execute(%q, %q, %q) = %s, want path %s from single-segment values", owner, ref, repo, id, want)
		}
		segs := strings.Split(id.Path(), "/")[1:]
		for i := 0; i+3 < len(segs); i++ {
			if strings.EqualFold(segs[i], "ns") && strings.EqualFold(segs[i+2], "sa") {
				t.Fatalf("execute(%q, %q, %q) = %s, which has the Kubernetes shape", owner, ref, repo, id)
			}
		}
	})
}
