package istiopeer

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"istio.io/istio/pkg/security"
	"istio.io/istio/security/pkg/nodeagent/cache"
	"istio.io/istio/security/pkg/nodeagent/caclient/providers/citadel"
	"istio.io/istio/security/pkg/pki/util"
)

// istioCACerts makes a cacerts directory with Istio's own tooling: the
// Makefile.selfsigned.mk of the istio.io/istio module this test builds with
// (`make -f .../tools/certs/Makefile.selfsigned.mk root-ca cluster1-cacerts`,
// openssl underneath), so ca-cert.pem has pathlen:0 and cert-chain.pem is
// ca-cert then root, exactly as an Istio operator's files. It returns the
// cluster1 directory.
func istioCACerts(t *testing.T) string {
	t.Helper()
	for _, tool := range []string{"make", "openssl"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("Istio's cert tooling needs %s: %v", tool, err)
		}
	}
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "istio.io/istio").Output()
	if err != nil {
		t.Fatalf("locate the istio.io/istio module: %v", err)
	}
	mk := filepath.Join(strings.TrimSpace(string(out)), "tools", "certs", "Makefile.selfsigned.mk")
	dir := t.TempDir()
	make := exec.Command("make", "-f", mk, "root-ca", "cluster1-cacerts")
	make.Dir = dir
	if out, err := make.CombinedOutput(); err != nil {
		t.Fatalf("Istio's %s: %v\n%s", mk, err, out)
	}
	caCert := readCerts(t, filepath.Join(dir, "cluster1", "ca-cert.pem"))[0]
	if !caCert.IsCA || caCert.MaxPathLen != 0 || !caCert.MaxPathLenZero {
		t.Fatalf("Istio's tooling made ca-cert.pem with pathlen %d (zero %v), want 0", caCert.MaxPathLen, caCert.MaxPathLenZero)
	}
	return filepath.Join(dir, "cluster1")
}

// startServer starts `meshca server --cacerts-dir cacerts` on free
// 127.0.0.1 ports and returns its data dir and listener addresses by API
// name (from its "listening" log lines).
func startServer(t *testing.T, bin, cacerts string) (data string, addrs map[string]string) {
	t.Helper()
	data = filepath.Join(t.TempDir(), "data")
	cmd := exec.Command(bin, "server", "--cacerts-dir", cacerts, "--data-dir", data,
		"--grpc-listen", "127.0.0.1:0", "--https-listen", "127.0.0.1:0", "--monitoring-listen", "127.0.0.1:0")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(os.Interrupt)
		cmd.Wait()
	})
	re := regexp.MustCompile(`msg=listening api=(\w+) addr=(\S+)`)
	found := make(chan [2]string)
	lines := make(chan string, 100)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			select {
			case lines <- sc.Text():
			default:
			}
			if m := re.FindStringSubmatch(sc.Text()); m != nil {
				found <- [2]string{m[1], m[2]}
			}
		}
		io.Copy(io.Discard, stderr)
		close(found)
	}()
	addrs = map[string]string{}
	timeout := time.After(60 * time.Second)
	for len(addrs) < 3 {
		select {
		case m, ok := <-found:
			if !ok {
				t.Fatalf("meshca server exited before listening:\n%s", drain(lines))
			}
			addrs[m[0]] = m[1]
		case <-timeout:
			t.Fatalf("meshca server did not report its listeners:\n%s", drain(lines))
		}
	}
	return data, addrs
}

func drain(lines chan string) string {
	var b strings.Builder
	for {
		select {
		case l := <-lines:
			b.WriteString(l + "\n")
		default:
			return b.String()
		}
	}
}

func readCerts(t *testing.T, path string) []*x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return parsePEM(t, b)
}

func parsePEM(t *testing.T, b []byte) []*x509.Certificate {
	t.Helper()
	var out []*x509.Certificate
	for {
		var blk *pem.Block
		if blk, b = pem.Decode(b); blk == nil {
			return out
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, c)
	}
}

// TestIstioCAClientWithIstioCACerts: `meshca server --cacerts-dir` on the
// files Istio's own tooling makes serves istio-agent's own certificate
// manager (security/pkg/nodeagent/cache over the citadel CA client, the
// code istio-agent runs for Envoy's "default" and "ROOTCA" secrets). Each
// workload's certificate is signed by ca-cert.pem itself, as istiod signs
// it; the chain is leaf, ca-cert, root as istiod returns it; Istio's
// util.VerifyCertificate accepts it against the root istio-agent takes from
// the response; and two workloads complete a mutual TLS handshake with
// what istio-agent would give their Envoys.
func TestIstioCAClientWithIstioCACerts(t *testing.T) {
	cacerts := istioCACerts(t)
	caCert := readCerts(t, filepath.Join(cacerts, "ca-cert.pem"))[0]
	root := readCerts(t, filepath.Join(cacerts, "root-cert.pem"))[0]
	bin := buildMeshca(t, t.TempDir())
	data, addrs := startServer(t, bin, cacerts)

	type workload struct {
		ns, sa string
		secret *security.SecretItem
		roots  []byte
	}
	workloads := []*workload{{ns: "shop", sa: "web"}, {ns: "shop", sa: "db"}}
	for _, w := range workloads {
		id := "spiffe://cluster.local/ns/" + w.ns + "/sa/" + w.sa
		// A join token for the identity, through the admin API.
		tok, err := exec.Command(bin, "token", "create", "--server", addrs["https"], "--data-dir", data, "--spiffe-id", id).Output()
		if err != nil {
			t.Fatalf("meshca token create: %v", err)
		}
		opts := &security.Options{
			CAEndpoint: addrs["grpc"], CAEndpointSAN: "localhost", ClusterID: "Kubernetes",
			CredFetcher: staticCred(strings.TrimSpace(string(tok))),
			TrustDomain: "cluster.local", WorkloadNamespace: w.ns, ServiceAccount: w.sa,
			SecretTTL: 24 * time.Hour, SecretRotationGracePeriodRatio: 0.5, Pkcs8Keys: true, ECCSigAlg: "ECDSA",
		}
		caClient, err := citadel.NewCitadelClient(opts, &citadel.TLSOptions{RootCert: filepath.Join(data, "bundle.pem")})
		if err != nil {
			t.Fatal(err)
		}
		sm, err := cache.NewSecretManagerClient(caClient, opts)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(sm.Close)
		if w.secret, err = sm.GenerateSecret(security.WorkloadKeyCertResourceName); err != nil {
			t.Fatalf("istio-agent's secret manager, %q: %v", security.WorkloadKeyCertResourceName, err)
		}
		rootSecret, err := sm.GenerateSecret(security.RootCertReqResourceName)
		if err != nil {
			t.Fatalf("istio-agent's secret manager, %q: %v", security.RootCertReqResourceName, err)
		}
		w.roots = rootSecret.RootCert

		chain := parsePEM(t, w.secret.CertificateChain)
		if len(chain) != 3 || !chain[1].Equal(caCert) || !chain[2].Equal(root) {
			t.Fatalf("%s: chain of %d certificates, want leaf, ca-cert.pem, root-cert.pem (as istiod returns it)", id, len(chain))
		}
		if err := chain[0].CheckSignatureFrom(caCert); err != nil {
			t.Fatalf("%s: leaf not signed by ca-cert.pem itself: %v", id, err)
		}
		if left := time.Until(w.secret.ExpireTime); left < 23*time.Hour || left > 24*time.Hour {
			t.Errorf("%s: istio-agent sees %s left, want the 24 h SecretTTL", id, left)
		}
		if got := parsePEM(t, w.roots); len(got) != 1 || !got[0].Equal(root) {
			t.Fatalf("%s: ROOTCA is not root-cert.pem", id)
		}
		if err := util.VerifyCertificate(w.secret.PrivateKey, w.secret.CertificateChain, w.roots, &util.VerifyFields{
			Host: id, KeyUsage: x509.KeyUsageDigitalSignature,
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		}); err != nil {
			t.Fatalf("%s: Istio's VerifyCertificate: %v", id, err)
		}
	}

	// web calls db with mutual TLS, each verifying the other's chain
	// against its ROOTCA and matching the SPIFFE URI SAN, as Envoy does.
	tlsCert := func(w *workload) tls.Certificate {
		c, err := tls.X509KeyPair(w.secret.CertificateChain, w.secret.PrivateKey)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	verifyPeer := func(w *workload, want string, usage x509.ExtKeyUsage) func(tls.ConnectionState) error {
		roots := x509.NewCertPool()
		roots.AppendCertsFromPEM(w.roots)
		return func(cs tls.ConnectionState) error {
			inter := x509.NewCertPool()
			for _, c := range cs.PeerCertificates[1:] {
				inter.AddCert(c)
			}
			leaf := cs.PeerCertificates[0]
			if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
				return err
			}
			if len(leaf.URIs) != 1 || leaf.URIs[0].String() != want {
				return fmt.Errorf("peer is %v, want %s", leaf.URIs, want)
			}
			return nil
		}
	}
	web, db := workloads[0], workloads[1]
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		Certificates: []tls.Certificate{tlsCert(db)}, ClientAuth: tls.RequireAnyClientCert, MinVersion: tls.VersionTLS12,
		VerifyConnection: verifyPeer(db, "spiffe://cluster.local/ns/shop/sa/web", x509.ExtKeyUsageClientAuth),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	served := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			err = c.(*tls.Conn).Handshake()
			c.Close()
		}
		served <- err
	}()
	conn, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{
		Certificates: []tls.Certificate{tlsCert(web)}, MinVersion: tls.VersionTLS12,
		InsecureSkipVerify: true, // no host name: VerifyConnection checks the chain and the SPIFFE ID
		VerifyConnection:   verifyPeer(web, "spiffe://cluster.local/ns/shop/sa/db", x509.ExtKeyUsageServerAuth),
	})
	if err != nil {
		t.Fatalf("web → db handshake: %v", err)
	}
	conn.Close()
	if err := <-served; err != nil {
		t.Fatalf("db's side of the handshake: %v", err)
	}
}
