package main

import (
	"bytes"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/pki"
	"github.com/meshca/meshca/internal/testca"
)

// TestCACommandsAgainstServer runs the server plane on Istio cacerts with
// a second directory staged, and drives a root rotation with `meshca ca`:
// status as a table and as JSON, rotate-root, its refusals, and the bundle
// file following the trusted roots.
func TestCACommandsAgainstServer(t *testing.T) {
	dir, cur, next := t.TempDir(), t.TempDir(), t.TempDir()
	testca.NewIstioCACerts(t, testca.IstioOptions{}).Write(t, cur)
	staged := testca.NewIstioCACerts(t, testca.IstioOptions{})
	staged.Write(t, next)
	p := startPlane(t, []string{"--data-dir", dir, "--trust-domain", "example.org", "--grpc-listen", "", "--https-listen", "127.0.0.1:0",
		"--monitoring-listen", "", "--cacerts-dir", cur, "--cacerts-next-dir", next, "--root-rotation-overlap", "1h"})
	admin := []string{"--server", p.Addr("https").String(), "--data-dir", dir}
	meshca := func(args ...string) (string, int) {
		var out, errOut bytes.Buffer
		code := run(append(args, admin...), &out, &errOut)
		return out.String() + errOut.String(), code
	}

	out, code := meshca("ca", "status")
	if code != 0 || !strings.Contains(out, "MODE") || !strings.Contains(out, "direct") || !strings.Contains(out, "ROOT ROTATION  none") {
		t.Fatalf("ca status: %d\n%s", code, out)
	}
	out, code = meshca("ca", "rotate-root")
	if code != 0 || !strings.HasPrefix(out, "prepared: ") || !strings.Contains(out, "next") {
		t.Fatalf("ca rotate-root: %d\n%s", code, out)
	}
	out, code = meshca("ca", "status", "-o", "json")
	var st ca.Status
	if err := json.Unmarshal([]byte(out), &st); code != 0 || err != nil {
		t.Fatalf("ca status -o json: %d %v\n%s", code, err, out)
	}
	if st.RootRotation == nil || st.RootRotation.Phase != "prepared" || len(st.Roots) != 2 || st.Roots[1].FingerprintSHA256 != ca.Fingerprint(staged.Root) {
		t.Fatalf("status after rotate-root: %+v", st)
	}
	if got := st.RootRotation.SwitchAfter.Sub(st.RootRotation.PreparedAt); got != time.Hour {
		t.Errorf("switch after %s, want the --root-rotation-overlap of 1h", got)
	}
	// The bundle file follows the roots (rewritten in the background).
	deadline := time.Now().Add(10 * time.Second)
	for {
		roots, err := pki.ReadCertificates(filepath.Join(dir, "bundle.pem"))
		if err == nil && len(roots) == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("bundle.pem not rewritten with both roots: %d, %v", len(roots), err)
		}
		time.Sleep(10 * time.Millisecond)
	}

	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"ca", "rotate-root", "--advance", "switched"}, "409 Conflict: rotation refused: the root rotation is in phase prepared, not switched"},
		{[]string{"ca", "rotate-root", "--advance", "prepared", "--abort"}, "--advance and --abort: choose one"},
		{[]string{"ca", "rotate-intermediate"}, "give --now"},
		{[]string{"ca", "rotate-intermediate", "--now"}, "direct mode"},
	} {
		if out, code := meshca(tc.args...); code == 0 || !strings.Contains(out, tc.want) {
			t.Errorf("%v: %d %q, want an error saying %q", tc.args, code, out, tc.want)
		}
	}
	out, code = meshca("ca", "rotate-root", "--abort")
	if code != 0 || !strings.HasPrefix(out, "aborted") {
		t.Fatalf("ca rotate-root --abort: %d\n%s", code, out)
	}
}

// TestDevOnceDuringRootRotation: the README's sequence, `make run`, then
// `meshca ca rotate-root` against it, then `make run` again: the second
// start issues and verifies its demo SVID although the CA now hands out
// two roots in the chain's last element, and prints both.
func TestDevOnceDuringRootRotation(t *testing.T) {
	clearMeshcaEnv(t)
	dir := filepath.Join(t.TempDir(), "data")
	if code, stdout, stderr := devOnce(t, dir); code != 0 {
		t.Fatalf("first dev --once: %d\n%s%s", code, stdout, stderr)
	}
	p := startPlane(t, []string{"--data-dir", dir, "--grpc-listen", "", "--https-listen", "127.0.0.1:0", "--monitoring-listen", ""})
	var out, errOut bytes.Buffer
	if code := run([]string{"ca", "rotate-root", "--server", p.Addr("https").String(), "--data-dir", dir}, &out, &errOut); code != 0 {
		t.Fatalf("ca rotate-root: %d\n%s%s", code, out.String(), errOut.String())
	}
	p.Stop()
	code, stdout, stderr := devOnce(t, dir)
	if code != 0 {
		t.Fatalf("dev --once during the root rotation: %d\n%s%s", code, stdout, stderr)
	}
	if n := strings.Count(stdout, "meshca root"); n != 2 {
		t.Errorf("%d roots printed, want the old and the new:\n%s", n, stdout)
	}
}
