package archtest

import (
	"os/exec"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/meshca/meshca"

// rules says which project packages a package (by prefix) must not import.
var rules = []struct {
	pkg       string
	forbidden []string
	why       string
	// exempt packages (exactly these) may import what is forbidden.
	exempt []string
}{
	{"", []string{"/cmd/"}, "nothing imports cmd", nil},
	{"", testHelpers, "test helpers are imported by _test.go files only (and by each other)", testHelpers},
	{"/ca", []string{"/sds"}, "the CA never imports the agent", nil},
	{"/ca/bundle", []string{"/ca=", "/ca/server", "/ca/store", "/ca/plane", "/ca/client", "/ca/adminclient", "/attestor"}, "the bundle's publishers read the CA through bundle.Source only", nil},
	{"/attestor", []string{"/ca", "/sds", "/policy"}, "attestors are imported by the CA, not the other way (an attestor declares what it needs of the store, as jointoken.Store)", nil},
	{"/policy", []string{"/ca", "/sds", "/attestor", "/internal"}, "policy imports no other project package", nil},
	{"/sds", []string{"/ca=", "/ca/server", "/ca/store", "/ca/plane", "/ca/adminclient", "/attestor", "/policy"}, "the agent reaches the CA only through its API client, ca/client", nil},
}

// testHelpers are the packages only tests use.
var testHelpers = []string{"/internal/testca", "/internal/storetest", "/internal/kubeenv", "/internal/pgenv", "/internal/vaultenv",
	"/internal/testproc", "/internal/testlog", "/internal/clock/clocktest", "/ca/bundle/internal/bundletest"}

func TestImportDirection(t *testing.T) {
	out, err := exec.Command("go", "list", "-f", `{{.ImportPath}}{{range .Imports}} {{.}}{{end}}`, module+"/...").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	checked := 0
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		fields := strings.Fields(line)
		pkg, imports := strings.TrimPrefix(fields[0], module), fields[1:]
		for _, r := range rules {
			if !hasPrefixPath(pkg, r.pkg) || slices.Contains(r.exempt, pkg) {
				continue
			}
			for _, imp := range imports {
				if !strings.HasPrefix(imp, module) {
					continue
				}
				rel := strings.TrimPrefix(imp, module)
				for _, f := range r.forbidden {
					// "/x=" forbids exactly /x; "/x" forbids /x and below.
					exact, isExact := strings.CutSuffix(f, "=")
					if (isExact && rel == exact) || (!isExact && hasPrefixPath(rel, strings.TrimSuffix(f, "/"))) {
						t.Errorf("%s imports %s: %s", fields[0], imp, r.why)
					}
				}
			}
			checked++
		}
	}
	if checked == 0 {
		t.Fatal("no packages checked")
	}
}

// hasPrefixPath reports whether p is prefix or below it ("" matches all).
func hasPrefixPath(p, prefix string) bool {
	return prefix == "" || p == prefix || strings.HasPrefix(p, prefix+"/")
}
