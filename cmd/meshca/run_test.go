package main

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/meshca/meshca/internal/testca"
)

// runMeshca runs the command line in-process and returns its exit code and
// output.
func runMeshca(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code = run(args, &out, &errOut)
	return code, out.String(), errOut.String()
}

// loopback are the listener flags every test uses: ephemeral ports on
// 127.0.0.1 only.
var loopback = []string{
	"--grpc-listen", "127.0.0.1:0",
	"--https-listen", "127.0.0.1:0",
	"--monitoring-listen", "127.0.0.1:0",
}

// devOnce runs `meshca dev --once` on dir.
func devOnce(t *testing.T, dir string, extra ...string) (int, string, string) {
	t.Helper()
	args := append([]string{"dev", "--once", "--data-dir", dir}, loopback...)
	return runMeshca(t, append(args, extra...)...)
}

// serverArgs are the flags of a `meshca server` that is expected to fail
// before serving. The monitoring port is out of range so that, should the
// check under test ever stop failing, startup fails at listen time instead
// of serving until interrupted and hanging the test.
func serverArgs(dir string, extra ...string) []string {
	args := []string{"server", "--data-dir", dir,
		"--grpc-listen", "127.0.0.1:0",
		"--https-listen", "127.0.0.1:0",
		"--monitoring-listen", "127.0.0.1:65536",
	}
	return append(args, extra...)
}

var serialRE = regexp.MustCompile(`(?m)^\s+serial:\s+([0-9a-f]+)$`)

func demoSerial(t *testing.T, stdout string) string {
	t.Helper()
	m := serialRE.FindStringSubmatch(stdout)
	if m == nil {
		t.Fatalf("no serial line in output:\n%s", stdout)
	}
	return m[1]
}

func checkMode(t *testing.T, path string, want os.FileMode) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Errorf("%v", err)
		return
	}
	if got := fi.Mode().Perm(); got != want {
		t.Errorf("%s has mode %v, want %v", path, got, want)
	}
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// checkNoSecrets fails if the output shows a private key or the dev token.
func checkNoSecrets(t *testing.T, dir, stdout, stderr string) {
	t.Helper()
	keyPEM := readFile(t, filepath.Join(dir, "demo", "svid-key.pem"))
	block, _ := pem.Decode(keyPEM)
	if block == nil {
		t.Fatal("svid-key.pem is not PEM")
	}
	keyB64 := base64.StdEncoding.EncodeToString(block.Bytes)
	token := strings.TrimSpace(string(readFile(t, filepath.Join(dir, "dev-token"))))
	for name, out := range map[string]string{"stdout": stdout, "stderr": stderr} {
		for what, secret := range map[string]string{
			"PEM private key header": "PRIVATE KEY",
			"demo key (base64)":      keyB64[:40],
			"demo key (hex)":         hex.EncodeToString(block.Bytes)[:40],
			"dev token":              token,
		} {
			if strings.Contains(out, secret) {
				t.Errorf("%s shows the %s", name, what)
			}
		}
	}
}

func TestDevOnce(t *testing.T) {
	clearMeshcaEnv(t)
	dir := filepath.Join(t.TempDir(), "data") // created by dev
	code, stdout, stderr := devOnce(t, dir)
	if code != 0 {
		t.Fatalf("dev --once exited %d\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
	for _, want := range []string{
		"SPIFFE ID:  spiffe://cluster.local/ns/default/sa/demo",
		"verified against the trust bundle",
		"trust bundle:  " + filepath.Join(dir, "bundle.pem"),
		"gRPC CSR API:  127.0.0.1:",
	} {
		if !strings.Contains(stdout, want) {
			t.Errorf("stdout does not contain %q:\n%s", want, stdout)
		}
	}
	checkMode(t, dir, 0o700)
	checkMode(t, filepath.Join(dir, "meshca.db"), 0o600)
	checkMode(t, filepath.Join(dir, "dev-token"), 0o600)
	checkMode(t, filepath.Join(dir, "demo", "svid-key.pem"), 0o600)
	for _, f := range []string{"bundle.pem", "demo/svid.pem", "demo/bundle.pem"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Errorf("%s: %v", f, err)
		}
	}
	if keyPEM := readFile(t, filepath.Join(dir, "demo", "svid-key.pem")); !bytes.Contains(keyPEM, []byte("PRIVATE KEY")) {
		t.Errorf("svid-key.pem holds no private key")
	}
	checkNoSecrets(t, dir, stdout, stderr)

	bundle := readFile(t, filepath.Join(dir, "bundle.pem"))
	if b, _ := pem.Decode(bundle); b == nil || b.Type != "CERTIFICATE" {
		t.Fatalf("bundle.pem is not a PEM certificate:\n%s", bundle)
	}
	if demoBundle := readFile(t, filepath.Join(dir, "demo", "bundle.pem")); !bytes.Equal(demoBundle, bundle) {
		t.Errorf("demo/bundle.pem differs from bundle.pem")
	}
	token := readFile(t, filepath.Join(dir, "dev-token"))
	serial := demoSerial(t, stdout)

	// A second run reuses the root and the token, and issues a new SVID.
	code, stdout2, stderr2 := devOnce(t, dir)
	if code != 0 {
		t.Fatalf("second dev --once exited %d\nstdout:\n%s\nstderr:\n%s", code, stdout2, stderr2)
	}
	if bundle2 := readFile(t, filepath.Join(dir, "bundle.pem")); !bytes.Equal(bundle2, bundle) {
		t.Errorf("bundle.pem changed on the second run: the root was not reused")
	}
	if token2 := readFile(t, filepath.Join(dir, "dev-token")); !bytes.Equal(token2, token) {
		t.Errorf("dev-token changed on the second run")
	}
	if serial2 := demoSerial(t, stdout2); serial2 == serial {
		t.Errorf("second run issued the same serial %s", serial)
	}
	checkNoSecrets(t, dir, stdout2, stderr2)
}

// TestDevOnceIstioCACerts: `meshca dev` starts on a cacerts directory as
// Istio's tooling makes it (pathlen 0) and issues the demo SVID signed by
// ca-cert.pem itself.
func TestDevOnceIstioCACerts(t *testing.T) {
	clearMeshcaEnv(t)
	cacerts := t.TempDir()
	testca.NewIstioCACerts(t, testca.IstioOptions{}).Write(t, cacerts)
	code, stdout, stderr := devOnce(t, filepath.Join(t.TempDir(), "data"), "--cacerts-dir", cacerts)
	if code != 0 {
		t.Fatalf("dev --once exited %d\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
	for _, want := range []string{"[1] Intermediate CA", "[2] Root CA", "verified against the trust bundle"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("stdout does not contain %q:\n%s", want, stdout)
		}
	}
	if strings.Contains(stdout, "[3]") {
		t.Errorf("a meshca intermediate in the chain:\n%s", stdout)
	}
}

// The demo identity and the listeners come from the environment and the
// config file as for `server`.
func TestDevOnceConfigured(t *testing.T) {
	clearMeshcaEnv(t)
	dir := t.TempDir()
	cfg := writeConfig(t, "data-dir: "+dir+"\n"+
		"grpc-listen: 127.0.0.1:0\nhttps-listen: \"\"\nmonitoring-listen: \"\"\n"+
		"trust-domain: file.example\ndemo-namespace: team\n")
	t.Setenv("MESHCA_CONFIG", cfg)
	t.Setenv("MESHCA_TRUST_DOMAIN", "env.example")
	code, stdout, stderr := runMeshca(t, "dev", "--once", "--demo-service-account", "web")
	if code != 0 {
		t.Fatalf("dev --once exited %d\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
	if want := "SPIFFE ID:  spiffe://env.example/ns/team/sa/web"; !strings.Contains(stdout, want) {
		t.Errorf("stdout does not contain %q:\n%s", want, stdout)
	}
	for _, unwanted := range []string{"HTTPS API:", "monitoring:"} {
		if strings.Contains(stdout, unwanted) {
			t.Errorf("stdout lists %q although it was disabled:\n%s", unwanted, stdout)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "bundle.pem")); err != nil {
		t.Error(err)
	}
}

func TestVersion(t *testing.T) {
	code, stdout, stderr := runMeshca(t, "version")
	if code != 0 {
		t.Fatalf("version exited %d: %s", code, stderr)
	}
	if !strings.HasPrefix(stdout, "meshca ") {
		t.Errorf("version printed %q, want it to start with \"meshca \"", stdout)
	}
}

func TestRunErrors(t *testing.T) {
	kekDir := t.TempDir()
	writeKEK := func(name string, mode os.FileMode) string {
		p := filepath.Join(kekDir, name)
		if err := os.WriteFile(p, bytes.Repeat([]byte{7}, 32), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil { // not subject to the umask
			t.Fatal(err)
		}
		return p
	}
	worldReadable := writeKEK("world", 0o644)
	groupReadable := writeKEK("group", 0o640)

	tests := []struct {
		name    string
		args    func(dir string) []string
		env     map[string]string
		wantMsg []string
	}{
		{
			name:    "server bad trust domain",
			args:    func(dir string) []string { return serverArgs(dir, "--trust-domain", "bad domain!") },
			wantMsg: []string{"trust-domain"},
		},
		{
			name:    "server bad trust domain from env",
			args:    func(dir string) []string { return serverArgs(dir) },
			env:     map[string]string{"MESHCA_TRUST_DOMAIN": "bad domain!"},
			wantMsg: []string{"trust-domain"},
		},
		{
			name: "dev bad trust domain",
			args: func(dir string) []string {
				return append([]string{"dev", "--once", "--data-dir", dir, "--trust-domain", "bad domain!"}, loopback...)
			},
			wantMsg: []string{"trust-domain"},
		},
		{
			name:    "server kek file readable by others",
			args:    func(dir string) []string { return serverArgs(dir, "--kek-file", worldReadable) },
			wantMsg: []string{"--kek-file", worldReadable, "chmod 600"},
		},
		{
			// Group-readable is allowed (Secret volumes with an fsGroup);
			// this one fails later, at the listen, as the check passed.
			name:    "server kek file readable by group is accepted",
			args:    func(dir string) []string { return serverArgs(dir, "--kek-file", groupReadable) },
			wantMsg: []string{"listen monitor"},
		},
		{
			name:    "server kek file and MESHCA_KEK both set",
			args:    func(dir string) []string { return serverArgs(dir, "--kek-file", groupReadable) },
			env:     map[string]string{"MESHCA_KEK": "x"},
			wantMsg: []string{"choose one"},
		},
		{
			name:    "server kek file missing",
			args:    func(dir string) []string { return serverArgs(dir, "--kek-file", filepath.Join(kekDir, "absent")) },
			wantMsg: []string{"--kek-file", "absent"},
		},
		{
			name:    "server malformed MESHCA_KEK",
			args:    func(dir string) []string { return serverArgs(dir) },
			env:     map[string]string{"MESHCA_KEK": "too-short"},
			wantMsg: []string{"key-encryption key must be 32 bytes"},
		},
		{
			name:    "server vault address without TLS",
			args:    func(dir string) []string { return serverArgs(dir, "--vault-addr", "http://127.0.0.1:8200") },
			wantMsg: []string{"--vault-addr http://127.0.0.1:8200 is not TLS", "--vault-allow-insecure-http"},
		},
		{
			name: "server vault and cacerts",
			args: func(dir string) []string {
				return serverArgs(dir, "--vault-addr", "https://127.0.0.1:8200", "--cacerts-next-dir", dir)
			},
			wantMsg: []string{"--vault-addr and --cacerts-dir (or --cacerts-next-dir)", "choose one"},
		},
		{
			name: "server vault transit key of an unsupported type",
			args: func(dir string) []string {
				return serverArgs(dir, "--vault-addr", "https://127.0.0.1:8200", "--vault-transit-key-type", "ed25519")
			},
			wantMsg: []string{`Transit key type "ed25519" cannot sign a root`},
		},
		{
			name:    "server bad key type",
			args:    func(dir string) []string { return serverArgs(dir, "--key-type", "dsa-1024") },
			wantMsg: []string{"--key-type"},
		},
		{
			name:    "server bad log format",
			args:    func(dir string) []string { return serverArgs(dir, "--log-format", "xml") },
			wantMsg: []string{"--log-format"},
		},
		{
			name:    "server unknown config key",
			args:    func(dir string) []string { return serverArgs(dir) },
			env:     map[string]string{"MESHCA_CONFIG": writeConfig(t, "grpc-port: 1\n")},
			wantMsg: []string{"unknown key", "grpc-port"},
		},
		{
			name:    "server empty Kubernetes attestation mode",
			args:    func(dir string) []string { return serverArgs(dir) },
			env:     map[string]string{"MESHCA_K8S_ATTESTATION": ""},
			wantMsg: []string{"--k8s-attestation must be off, informer, tokenreview or jwks"},
		},
		{
			name: "server JWKS URL and file",
			args: func(dir string) []string {
				return serverArgs(dir, "--k8s-attestation", "jwks", "--k8s-jwks-url", "https://x", "--k8s-jwks-file", "f")
			},
			wantMsg: []string{"--k8s-jwks-url and --k8s-jwks-file: choose one"},
		},
		{
			name:    "server cacerts-sign-directly without cacerts-dir",
			args:    func(dir string) []string { return serverArgs(dir, "--cacerts-sign-directly") },
			wantMsg: []string{"--cacerts-sign-directly needs --cacerts-dir"},
		},
		{
			name: "server cacerts key of another CA",
			args: func(dir string) []string {
				c := testca.NewIstioCACerts(t, testca.IstioOptions{})
				c.CAKey = testca.NewKey(t)
				c.Write(t, dir)
				return serverArgs(dir, "--cacerts-dir", dir)
			},
			wantMsg: []string{"ca-key.pem does not match ca-cert.pem"},
		},
		{
			name:    "server positional argument",
			args:    func(dir string) []string { return serverArgs(dir, "extra") },
			wantMsg: []string{"extra"},
		},
		{
			name:    "unknown command",
			args:    func(string) []string { return []string{"serve"} },
			wantMsg: []string{"serve"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			clearMeshcaEnv(t)
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			code, stdout, stderr := runMeshca(t, tc.args(t.TempDir())...)
			if code != 1 {
				t.Fatalf("exit code %d, want 1\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
			}
			if !strings.Contains(stderr, "meshca: ") {
				t.Errorf("stderr has no \"meshca: \" error line:\n%s", stderr)
			}
			for _, want := range tc.wantMsg {
				if !strings.Contains(stderr, want) {
					t.Errorf("stderr does not mention %q:\n%s", want, stderr)
				}
			}
			if strings.Contains(stderr, "65536") && !slices.Contains(tc.wantMsg, "listen monitor") {
				t.Errorf("the server got as far as listening; the check under test did not fail:\n%s", stderr)
			}
		})
	}
}

func randomKEK(t *testing.T) []byte {
	t.Helper()
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		t.Fatal(err)
	}
	return k
}

func TestDevKEK(t *testing.T) {
	clearMeshcaEnv(t)
	dir := t.TempDir()
	kek := randomKEK(t)
	kekB64 := base64.StdEncoding.EncodeToString(kek)

	t.Setenv("MESHCA_KEK", kekB64)
	code, stdout, stderr := devOnce(t, dir)
	if code != 0 {
		t.Fatalf("dev --once with MESHCA_KEK exited %d\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
	if strings.Contains(stdout+stderr, kekB64) {
		t.Errorf("the key-encryption key appears in the output")
	}
	if db := readFile(t, filepath.Join(dir, "meshca.db")); bytes.Contains(db, []byte("PRIVATE KEY")) {
		t.Errorf("meshca.db holds a PEM private key in clear")
	}
	bundle := readFile(t, filepath.Join(dir, "bundle.pem"))

	tests := []struct {
		name string
		// kek sets MESHCA_KEK when kekFile is empty; nil unsets it.
		kek     []byte
		encode  func([]byte) string
		kekFile bool // pass the key through a 0600 --kek-file instead
		wantOK  bool
		wantMsg string
	}{
		{name: "same key, hex", kek: kek, encode: hex.EncodeToString, wantOK: true},
		{name: "same key, URL base64", kek: kek, encode: base64.RawURLEncoding.EncodeToString, wantOK: true},
		{name: "same key, raw --kek-file", kek: kek, kekFile: true, wantOK: true},
		{name: "different key", kek: randomKEK(t), encode: base64.StdEncoding.EncodeToString, wantMsg: "different key-encryption key"},
		{name: "different key, --kek-file", kek: randomKEK(t), kekFile: true, wantMsg: "different key-encryption key"},
		{name: "no key", kek: nil, wantMsg: "configure the key-encryption key"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			clearMeshcaEnv(t)
			var extra []string
			switch {
			case tc.kekFile:
				p := filepath.Join(t.TempDir(), "kek")
				if err := os.WriteFile(p, tc.kek, 0o600); err != nil {
					t.Fatal(err)
				}
				extra = []string{"--kek-file", p}
			case tc.kek != nil:
				t.Setenv("MESHCA_KEK", tc.encode(tc.kek))
			}
			code, stdout, stderr := devOnce(t, dir, extra...)
			if !tc.wantOK {
				if code != 1 {
					t.Fatalf("exit code %d, want 1\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
				}
				if !strings.Contains(stderr, tc.wantMsg) {
					t.Errorf("stderr does not mention %q:\n%s", tc.wantMsg, stderr)
				}
				return
			}
			if code != 0 {
				t.Fatalf("exit code %d, want 0\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
			}
			if got := readFile(t, filepath.Join(dir, "bundle.pem")); !bytes.Equal(got, bundle) {
				t.Errorf("bundle.pem changed: the root was not reused")
			}
		})
	}
}

// TestCASealClearStore: a data file with keys in clear is refused once a
// KEK is configured, until `meshca ca seal` seals them; then the same root
// serves. (Before the redesign the server sealed them silently at start,
// so a key planted in the data file was adopted.)
func TestCASealClearStore(t *testing.T) {
	clearMeshcaEnv(t)
	dir := t.TempDir()
	if code, stdout, stderr := devOnce(t, dir); code != 0 {
		t.Fatalf("dev --once exited %d\n%s%s", code, stdout, stderr)
	}
	bundle := readFile(t, filepath.Join(dir, "bundle.pem"))
	t.Setenv("MESHCA_KEK", base64.StdEncoding.EncodeToString(randomKEK(t)))
	code, stdout, stderr := devOnce(t, dir)
	if code != 1 || !strings.Contains(stderr, "meshca ca seal") {
		t.Fatalf("dev --once with a KEK over clear keys: exit %d, want 1 naming meshca ca seal\n%s%s", code, stdout, stderr)
	}
	code, stdout, stderr = runMeshca(t, "ca", "seal", "--data-dir", dir)
	if code != 0 || !strings.Contains(stdout, "sealed 3 CA key(s)") {
		t.Fatalf("ca seal: exit %d\n%s%s", code, stdout, stderr)
	}
	if code, stdout, stderr := devOnce(t, dir); code != 0 {
		t.Fatalf("dev --once after ca seal exited %d\n%s%s", code, stdout, stderr)
	}
	if got := readFile(t, filepath.Join(dir, "bundle.pem")); !bytes.Equal(got, bundle) {
		t.Error("the root changed: sealing must keep the CA's keys")
	}
	t.Setenv("MESHCA_KEK", "")
	os.Unsetenv("MESHCA_KEK")
	if code, _, stderr := runMeshca(t, "ca", "seal", "--data-dir", dir); code != 1 || !strings.Contains(stderr, "--kek-file or MESHCA_KEK") {
		t.Fatalf("ca seal without a KEK: exit %d\n%s", code, stderr)
	}
}
