package istiopeer

import (
	"bufio"

	"crypto/x509"
	"encoding/pem"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"istio.io/istio/pkg/security"
	"istio.io/istio/security/pkg/nodeagent/caclient/providers/citadel"
	"istio.io/istio/security/pkg/pki/util"
)

// staticCred is an Istio CredFetcher that returns a fixed token, as
// istio-agent's does with the projected ServiceAccount token.
type staticCred string

func (s staticCred) GetPlatformCredential() (string, error) { return string(s), nil }
func (staticCred) GetIdentityProvider() string              { return "" }
func (staticCred) Stop()                                    {}

// buildMeshca builds the meshca binary into dir.
func buildMeshca(t *testing.T, dir string) string {
	t.Helper()
	bin := filepath.Join(dir, "meshca")
	build := exec.Command("go", "build", "-o", bin, "./cmd/meshca")
	build.Dir = "../.."
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build meshca: %v\n%s", err, out)
	}
	return bin
}

// startMeshca builds and starts `meshca dev` on free 127.0.0.1 ports and
// returns its gRPC address and data dir.
func startMeshca(t *testing.T) (addr, dir string) {
	t.Helper()
	dir = t.TempDir()
	bin := buildMeshca(t, dir)
	cmd := exec.Command(bin, "dev", "--data-dir", filepath.Join(dir, "data"),
		"--grpc-listen", "127.0.0.1:0", "--https-listen", "", "--monitoring-listen", "")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(os.Interrupt)
		cmd.Wait()
	})
	re := regexp.MustCompile(`gRPC CSR API:\s+(127\.0\.0\.1:\d+)`)
	found := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if m := re.FindStringSubmatch(sc.Text()); m != nil {
				found <- m[1]
			}
		}
		io.Copy(io.Discard, stdout)
	}()
	select {
	case addr = <-found:
	case <-time.After(60 * time.Second):
		t.Fatal("meshca dev did not report its gRPC address")
	}
	return addr, filepath.Join(dir, "data")
}

func TestIstioCAClient(t *testing.T) {
	addr, data := startMeshca(t)
	token, err := os.ReadFile(filepath.Join(data, "dev-token"))
	if err != nil {
		t.Fatal(err)
	}
	const id = "spiffe://cluster.local/ns/default/sa/demo"
	newClient := func(tok string) *citadel.CitadelClient {
		c, err := citadel.NewCitadelClient(&security.Options{
			CAEndpoint:    addr,
			CAEndpointSAN: "localhost",
			ClusterID:     "Kubernetes",
			CredFetcher:   staticCred(tok),
		}, &citadel.TLSOptions{RootCert: filepath.Join(data, "bundle.pem")})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(c.Close)
		return c
	}
	// The CSR exactly as istio-agent makes it.
	csr, _, err := util.GenCSR(util.CertOptions{Host: id, ECSigAlg: util.EcdsaSigAlg, PKCS8Key: true})
	if err != nil {
		t.Fatal(err)
	}

	chain, err := newClient(strings.TrimSpace(string(token))).CSRSign(csr, 3600)
	if err != nil {
		t.Fatalf("Istio's CA client: %v", err)
	}
	var certs []*x509.Certificate
	for _, s := range chain {
		b, _ := pem.Decode([]byte(s))
		if b == nil {
			t.Fatalf("chain entry is not PEM: %q", s)
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		certs = append(certs, c)
	}
	leaf, root := certs[0], certs[len(certs)-1]
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != id {
		t.Fatalf("leaf identities %v, want %s", leaf.URIs, id)
	}
	if d := leaf.NotAfter.Sub(leaf.NotBefore); d < time.Hour || d > time.Hour+2*time.Minute {
		t.Errorf("requested 3600 s, got %s", d)
	}
	bundle, _ := os.ReadFile(filepath.Join(data, "bundle.pem"))
	if b, _ := pem.Decode(bundle); b == nil || string(b.Bytes) != string(root.Raw) {
		t.Error("last certificate of the chain is not the trust bundle's root (istio-agent takes the root from there)")
	}
	pool, inter := x509.NewCertPool(), x509.NewCertPool()
	pool.AddCert(root)
	for _, c := range certs[1 : len(certs)-1] {
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatalf("chain does not verify: %v", err)
	}

	// A wrong token is refused with a clear status.
	if _, err := newClient("not-a-token").CSRSign(csr, 3600); err == nil || !strings.Contains(err.Error(), "Unauthenticated") {
		t.Fatalf("wrong token: %v", err)
	}

}
