package deploycheck

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/meshca/meshca/internal/clock/clocktest"
	"github.com/meshca/meshca/internal/kubeenv"
	"github.com/meshca/meshca/internal/testlog"
)

// meshcaBinary builds cmd/meshca from this repository once per test run,
// or returns the binary named by $DEPLOYCHECK_MESHCA (a release's, or
// another branch's).
var meshcaBinary = sync.OnceValues(func() (string, error) {
	if bin := os.Getenv("DEPLOYCHECK_MESHCA"); bin != "" {
		return filepath.Abs(bin)
	}
	dir, err := os.MkdirTemp("", "deploycheck-meshca-")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "meshca")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/meshca") // #nosec G204 -- a fixed command
	cmd.Dir = repo
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/meshca: %v\n%s", err, out)
	}
	return bin, nil
})

// serverArgs returns the arguments the chart renders for the meshca
// container of objs' Deployment.
func serverArgs(t *testing.T, objs []*unstructured.Unstructured) []string {
	t.Helper()
	for _, o := range objs {
		if o.GetKind() != "Deployment" {
			continue
		}
		containers, _, _ := unstructured.NestedSlice(o.Object, "spec", "template", "spec", "containers")
		for _, c := range containers {
			c := c.(map[string]any)
			if c["name"] != "meshca" {
				continue
			}
			var args []string
			for _, a := range c["args"].([]any) {
				args = append(args, a.(string))
			}
			return args
		}
	}
	t.Fatal("no meshca container in the rendered Deployment")
	return nil
}

// outsidePod rewrites the chart's arguments for a process on this machine:
// its own data directory, listeners on 127.0.0.1, text logs, and the
// API server through kubeconfig. Any other argument naming a file in the
// pod (a Secret volume) is an error: the test does not fake mounts.
func outsidePod(t *testing.T, args []string, dataDir, kubeconfig string) []string {
	t.Helper()
	replace := map[string]string{
		"--data-dir":          dataDir,
		"--grpc-listen":       "127.0.0.1:0",
		"--https-listen":      "127.0.0.1:0",
		"--monitoring-listen": "127.0.0.1:0",
		"--log-format":        "text",
	}
	var out []string
	for _, a := range args {
		name, val, _ := strings.Cut(a, "=")
		if r, ok := replace[name]; ok {
			a = name + "=" + r
		} else if strings.HasPrefix(val, "/") {
			t.Fatalf("the chart passes %s, a file of the pod this test does not provide", a)
		}
		out = append(out, a)
	}
	return append(out, "--kubeconfig="+kubeconfig)
}

// impersonatingKubeconfig writes a kubeconfig that authenticates as the
// test's admin and impersonates user (a ServiceAccount's user name, for
// which the API server adds the ServiceAccount groups): whoever uses it
// holds exactly the RBAC of that ServiceAccount.
func impersonatingKubeconfig(t *testing.T, env *kubeenv.Env, user string) string {
	t.Helper()
	cfg := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: test
  cluster:
    server: %s
    certificate-authority-data: %s
users:
- name: impersonated
  user:
    token: %s
    as: %s
contexts:
- name: test
  context: {cluster: test, user: impersonated}
current-context: test
`, env.Config.Host, base64.StdEncoding.EncodeToString(env.Config.CAData), env.Config.BearerToken, user)
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// process is a running meshca process, stopped when its test ends.
type process struct {
	logs testlog.Buffer
	done chan struct{}
}

// startProcess runs bin with args until t ends (SIGINT, then SIGKILL after
// 10 s) and prints its output if t failed.
func startProcess(t *testing.T, bin string, args ...string) *process {
	t.Helper()
	p := &process{done: make(chan struct{})}
	cmd := exec.Command(bin, args...) // #nosec G204 -- the binary this test built
	cmd.Stdout, cmd.Stderr = &p.logs, &p.logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			t.Logf("%s %s output:\n%s", filepath.Base(bin), args[0], p.logs.String())
		}
	})
	return p
}

// exited reports whether the process has ended.
func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// server is a running `meshca server` process.
type server struct {
	*process
	dataDir string
	grpc    string
	https   string
	monitor string
	client  *http.Client
}

var listeningRE = regexp.MustCompile(`msg=listening api=(\w+) addr=(\S+)`)

// startServer runs the built meshca with args until t ends, and waits for
// its listeners and for /readyz (the CA is ready, the informer caches have
// synced).
func startServer(t *testing.T, args []string, dataDir string) *server {
	t.Helper()
	bin, err := meshcaBinary()
	if err != nil {
		t.Fatal(err)
	}
	s := &server{process: startProcess(t, bin, args...), dataDir: dataDir}
	clocktest.Eventually(t, "meshca listens", func() bool {
		if s.exited() {
			t.Fatalf("meshca server exited:\n%s", s.logs.String())
		}
		for _, m := range listeningRE.FindAllStringSubmatch(s.logs.String(), -1) {
			switch m[1] {
			case "grpc":
				s.grpc = m[2]
			case "https":
				s.https = m[2]
			case "monitor":
				s.monitor = m[2]
			}
		}
		return s.https != "" && s.monitor != ""
	})
	clocktest.Eventually(t, "meshca is ready", func() bool {
		resp, err := http.Get("http://" + s.monitor + "/readyz")
		if err != nil {
			return false
		}
		_ = resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	// bundle.pem is written just after the listeners open.
	clocktest.Eventually(t, "meshca writes bundle.pem", func() bool {
		_, err := os.Stat(filepath.Join(dataDir, "bundle.pem"))
		return err == nil
	})
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(s.bundle(t)) {
		t.Fatal("no certificate in bundle.pem")
	}
	s.client = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}}}
	return s
}

// bundle is the trust bundle meshca writes beside its data.
func (s *server) bundle(t *testing.T) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(s.dataDir, "bundle.pem"))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// svid is a key and the certificate chain meshca issued for it.
type svid struct {
	key   *ecdsa.PrivateKey
	chain [][]byte
}

// sign sends a CSR for id to POST /v1/sign, with bearer token (none: with
// the SVID prev as the TLS client certificate, a renewal), and returns the
// HTTP status and, on 200, the new SVID.
func (s *server) sign(t *testing.T, id, token string, prev *svid) (int, *svid) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(id)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{u}}, key)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := json.Marshal(map[string]string{"csr": string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))})
	req, err := http.NewRequest(http.MethodPost, "https://"+s.https+"/v1/sign", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	client := s.client
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	} else {
		tr := s.client.Transport.(*http.Transport).Clone()
		tr.TLSClientConfig.Certificates = []tls.Certificate{{Certificate: prev.chain, PrivateKey: prev.key}}
		client = &http.Client{Timeout: s.client.Timeout, Transport: tr}
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return resp.StatusCode, nil
	}
	var out struct {
		SPIFFEID  string   `json:"spiffe_id"`
		CertChain []string `json:"cert_chain"`
	}
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatal(err)
	}
	if out.SPIFFEID != id {
		t.Fatalf("issued %s, asked for %s", out.SPIFFEID, id)
	}
	got := &svid{key: key}
	for _, p := range out.CertChain {
		for rest := []byte(p); ; {
			var blk *pem.Block
			if blk, rest = pem.Decode(rest); blk == nil {
				break
			}
			got.chain = append(got.chain, blk.Bytes)
		}
	}
	return resp.StatusCode, got
}

// metric returns the value of the sample of /metrics whose name and labels
// read exactly series (`meshca_leader`, `meshca_k8s_tokenreviews_total{result="ok"}`), or -1.
func (s *server) metric(t *testing.T, series string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + s.monitor + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				t.Fatalf("%s: %v", line, err)
			}
			return f
		}
	}
	return -1
}

// waitFor polls cond (for what the server does in the background) with a
// bound of its own, for the caller's context.
func waitFor(t *testing.T, what string, cond func(ctx context.Context) bool) {
	t.Helper()
	clocktest.Eventually(t, what, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return cond(ctx)
	})
}

// run runs the built meshca with args to its end and returns its output.
func run(t *testing.T, args ...string) string {
	t.Helper()
	bin, err := meshcaBinary()
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bin, args...).CombinedOutput() // #nosec G204 -- the binary this test built
	if err != nil {
		t.Fatalf("meshca %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}
