package deploycheck

import (
	"bufio"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/meshca/meshca/internal/clock/clocktest"
	"github.com/meshca/meshca/internal/testproc"
)

var vmDir = filepath.Join(repo, "deploy", "vm")

// execStart returns the arguments of the unit's ExecStart after the binary.
func execStart(t *testing.T, unit string) []string {
	t.Helper()
	f, err := os.Open(unit) // #nosec G304 -- a file of the repository
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if cmd, ok := strings.CutPrefix(sc.Text(), "ExecStart="); ok {
			fields := strings.Fields(cmd)
			if fields[0] != "/usr/local/bin/meshca" {
				t.Fatalf("ExecStart runs %s, want /usr/local/bin/meshca", fields[0])
			}
			return fields[1:]
		}
	}
	t.Fatalf("%s: no ExecStart", unit)
	return nil
}

// TestSystemdUnit checks deploy/vm/meshca-agent.service with systemd's own
// tools when they are installed: `systemd-analyze verify` accepts it and
// `systemd-analyze security` rates its exposure 2.0 or lower ("OK").
func TestSystemdUnit(t *testing.T) {
	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze not installed: the unit is not verified")
	}
	bin, err := meshcaBinary()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(vmDir, "meshca-agent.service"))
	if err != nil {
		t.Fatal(err)
	}
	// verify wants the binary to exist: the one this test built.
	unit := filepath.Join(t.TempDir(), "meshca-agent.service")
	if err := os.WriteFile(unit, []byte(strings.ReplaceAll(string(b), "/usr/local/bin/meshca", bin)), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"verify", unit},
		{"security", "--offline=true", "--threshold=20", "--no-pager", unit},
	} {
		out, err := exec.Command(sa, args...).CombinedOutput() // #nosec G204 -- systemd's tool on our unit
		if err != nil || (args[0] == "verify" && len(strings.TrimSpace(string(out))) > 0) {
			t.Errorf("systemd-analyze %s: %v\n%s", args[0], err, out)
		}
		if args[0] == "security" {
			lines := strings.Split(strings.TrimSpace(string(out)), "\n")
			t.Log(lines[len(lines)-1])
		}
	}
}

// TestVMAgent runs the unit's command line (its ExecStart, with
// deploy/vm/agent.yaml and the join token as systemd hands them over)
// against a real `meshca server`: a join token made with `meshca token
// create` bootstraps the agent, which then holds its SVID (/readyz) and
// serves SDS on its socket.
func TestVMAgent(t *testing.T) {
	base, err := os.MkdirTemp("", "vm") // short: Unix socket paths are at most 107 bytes
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(base) })
	dataDir := filepath.Join(base, "ca")
	s := startServer(t, []string{"server", "--trust-domain=example.org", "--data-dir=" + dataDir,
		"--grpc-listen=127.0.0.1:0", "--https-listen=127.0.0.1:0", "--monitoring-listen=127.0.0.1:0",
		"--bundle-configmap=", "--log-format=text"}, dataDir)
	const id = "spiffe://example.org/vm/web-1" // agent.yaml's spiffe-id
	token := strings.TrimSpace(run(t, "token", "create", "--server", s.https, "--data-dir", dataDir, "--spiffe-id", id, "--ttl", "10m"))
	creds := filepath.Join(base, "credentials") // systemd's %d
	if err := os.Mkdir(creds, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(creds, "join-token"), []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var args []string
	for _, a := range execStart(t, filepath.Join(vmDir, "meshca-agent.service")) {
		a = strings.ReplaceAll(a, "%d", creds)
		if a == "/etc/meshca/agent.yaml" {
			a = filepath.Join(vmDir, "agent.yaml")
		}
		args = append(args, a)
	}
	port, err := testproc.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	monitor := "127.0.0.1:" + strconv.Itoa(port)
	sock := filepath.Join(base, "agent", "sds.sock")
	// What differs on this machine from the VM: where the CA is, its
	// bundle, the runtime directory, the monitoring port. Flags win over
	// agent.yaml.
	args = append(args, "--ca-addr="+s.grpc, "--ca-roots="+filepath.Join(dataDir, "bundle.pem"),
		"--sds-socket="+sock, "--workload-api-socket="+filepath.Join(base, "agent", "workload.sock"),
		"--monitoring-listen="+monitor, "--log-format=text")
	bin, err := meshcaBinary()
	if err != nil {
		t.Fatal(err)
	}
	agent := startProcess(t, bin, args...)
	clocktest.Eventually(t, "the agent holds its SVID (/readyz)", func() bool {
		if agent.exited() {
			t.Fatalf("meshca agent exited:\n%s", agent.logs.String())
		}
		resp, err := (&http.Client{Timeout: time.Second}).Get("http://" + monitor + "/readyz")
		if err != nil {
			return false
		}
		_ = resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	fi, err := os.Stat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o660 {
		t.Errorf("%s: mode %v, want a socket 0660", sock, fi.Mode())
	}
	t.Logf("agent bootstrapped with a join token as %s; SDS on %s", id, sock)
}
