// Package kube runs a real kube-apiserver with its etcd on 127.0.0.1 (the
// binaries `make testenv` builds), writes a kubeconfig the servers under
// test use, creates ServiceAccounts, mints their tokens through the
// TokenRequest API, and reads the API server's request counters.
//
// It is a compact equivalent of meshca's internal/kubeenv, which another
// module cannot import: same flags, an EC P-256 service-account key, a
// static admin token, RBAC, no controller-manager.
package kube

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/meshca/meshca/tools/bench/internal/proc"
)

// Issuer is the "iss" of the service-account tokens.
const Issuer = "https://kubernetes.default.svc.cluster.local"

const readyTimeout = 90 * time.Second

// Env is a running API server and its etcd.
type Env struct {
	// APIServer is the kube-apiserver process (its CPU is measured).
	APIServer *proc.Proc
	// Kubeconfig is a file authenticating as system:masters.
	Kubeconfig string
	// Client uses the same identity, with a high client-side rate limit.
	Client kubernetes.Interface
	// Config is Client's configuration.
	Config *rest.Config

	etcd *proc.Proc
}

// Start runs etcd and kube-apiserver from binDir with their files in dir.
func Start(binDir, dir string) (_ *Env, err error) {
	certDir := filepath.Join(dir, "certs")
	for _, d := range []string{filepath.Join(dir, "etcd"), certDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, err
		}
	}
	ports, err := proc.FreePorts(2)
	if err != nil {
		return nil, err
	}
	etcdURL := "http://127.0.0.1:" + strconv.Itoa(ports[0])
	host := "https://127.0.0.1:" + strconv.Itoa(ports[1])
	token, err := writeSecrets(dir)
	if err != nil {
		return nil, err
	}
	e := &Env{}
	defer func() {
		if err != nil {
			e.Stop()
		}
	}()
	e.etcd, err = proc.Start("etcd", filepath.Join(dir, "etcd.log"), nil, filepath.Join(binDir, "etcd"),
		"--data-dir="+filepath.Join(dir, "etcd"), "--listen-client-urls="+etcdURL,
		"--listen-peer-urls=http://127.0.0.1:0", "--unsafe-no-fsync", "--log-level=warn")
	if err != nil {
		return nil, err
	}
	if err := e.etcd.WaitReady(readyTimeout, func() bool { return etcdHealthy(etcdURL) }); err != nil {
		return nil, err
	}
	e.APIServer, err = proc.Start("kube-apiserver", filepath.Join(dir, "kube-apiserver.log"), nil,
		filepath.Join(binDir, "kube-apiserver"),
		"--etcd-servers="+etcdURL, "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
		"--secure-port="+strconv.Itoa(ports[1]), "--cert-dir="+certDir,
		"--token-auth-file="+filepath.Join(dir, "tokens.csv"), "--authorization-mode=RBAC",
		"--service-account-issuer="+Issuer,
		"--service-account-key-file="+filepath.Join(dir, "sa.pub"),
		"--service-account-signing-key-file="+filepath.Join(dir, "sa.key"),
		"--service-account-jwks-uri="+host+"/openid/v1/jwks", "--api-audiences="+Issuer,
		"--service-cluster-ip-range=10.96.0.0/16", "--endpoint-reconciler-type=none",
		"--enable-priority-and-fairness=false", "--disable-admission-plugins=ServiceAccount",
		"--profiling=false")
	if err != nil {
		return nil, err
	}
	// The apiserver writes its self-signed serving certificate before it
	// listens.
	crt := filepath.Join(certDir, "apiserver.crt")
	if err := e.APIServer.WaitReady(readyTimeout, func() bool { fi, err := os.Stat(crt); return err == nil && fi.Size() > 0 }); err != nil {
		return nil, err
	}
	time.Sleep(100 * time.Millisecond) // let the write finish
	caPEM, err := os.ReadFile(crt)
	if err != nil {
		return nil, err
	}
	e.Config = &rest.Config{Host: host, BearerToken: token, TLSClientConfig: rest.TLSClientConfig{CAData: caPEM},
		QPS: 2000, Burst: 4000, Timeout: 30 * time.Second}
	cs, err := kubernetes.NewForConfig(e.Config)
	if err != nil {
		return nil, err
	}
	e.Client = cs
	if err := e.APIServer.WaitReady(readyTimeout, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		var code int
		cs.Discovery().RESTClient().Get().AbsPath("/readyz").Do(ctx).StatusCode(&code)
		return code == http.StatusOK
	}); err != nil {
		return nil, err
	}
	e.Kubeconfig = filepath.Join(dir, "kubeconfig")
	return e, os.WriteFile(e.Kubeconfig, kubeconfig(host, caPEM, token), 0o600)
}

// Stop stops the API server, then etcd.
func (e *Env) Stop() {
	e.APIServer.Stop()
	e.etcd.Stop()
}

func kubeconfig(host string, caPEM []byte, token string) []byte {
	return fmt.Appendf(nil, `apiVersion: v1
kind: Config
clusters:
- name: bench
  cluster:
    server: %s
    certificate-authority-data: %s
users:
- name: admin
  user:
    token: %s
contexts:
- name: bench
  context: {cluster: bench, user: admin}
current-context: bench
`, host, base64.StdEncoding.EncodeToString(caPEM), token)
}

// writeSecrets writes the service-account key pair and the static token
// file into dir and returns the admin token.
func writeSecrets(dir string) (string, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", err
	}
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return "", err
	}
	pub, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return "", err
	}
	tok := make([]byte, 32)
	if _, err := rand.Read(tok); err != nil {
		return "", err
	}
	token := hex.EncodeToString(tok)
	for name, b := range map[string][]byte{
		"sa.key":     pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}),
		"sa.pub":     pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}),
		"tokens.csv": []byte(token + ",admin,admin-uid,system:masters\n"),
	} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			return "", err
		}
	}
	return token, nil
}

func etcdHealthy(base string) bool {
	c := http.Client{Timeout: time.Second}
	resp, err := c.Get(base + "/health")
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
	return resp.StatusCode == http.StatusOK && strings.Contains(string(b), `"health":"true"`)
}
