// Package kubeenv runs a real kube-apiserver, backed by its own etcd, on
// 127.0.0.1 for integration tests.
//
// It is a test helper: import it only from _test.go files. The binaries are
// built from Go modules by `make testenv` into <repo>/.testenv/bin (or the
// directory named by MESHCA_TESTENV_BIN); when they are missing, tests that use
// this package are skipped with a message saying so, unless
// MESHCA_REQUIRE_TESTENV=1, in which case they fail.
//
// Start gives a test its own apiserver. Get shares one apiserver among all the
// tests of a package; it needs the package's TestMain to call Main:
//
//	func TestMain(m *testing.M) { kubeenv.Main(m) }
//
// Options add kube-apiserver flags, for APIs that are off by default; Main
// takes them for the shared apiserver:
//
//	func TestMain(m *testing.M) { kubeenv.Main(m, kubeenv.ClusterTrustBundles()) }
//
// PodCertificates also runs the Node authorizer and NodeRestriction and
// gives each node a token, so that a test makes requests as a kubelet does
// (CreateNode, CreatePod, NodeClient).
//
// No controller-manager runs: tests create the objects they need themselves
// (CreateServiceAccount), and service-account tokens come from the real
// TokenRequest API (Token).
package kubeenv

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshca/meshca/internal/testproc"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

const (
	// Issuer is the service-account token issuer of every Env.
	Issuer = "https://kubernetes.default.svc.cluster.local"

	readyTimeout = 90 * time.Second
	stopTimeout  = 10 * time.Second
	logTailBytes = 64 << 10
)

// Env is a running kube-apiserver with its etcd.
type Env struct {
	// Config authenticates as a member of system:masters (a static token).
	// Copy it with rest.CopyConfig before changing it.
	Config *rest.Config
	// Client is a clientset built from Config.
	Client kubernetes.Interface
	// Issuer is the "iss" of service-account tokens (also the OIDC issuer).
	Issuer string
	// JWKSURL is the apiserver's /openid/v1/jwks; fetching it needs
	// credentials (Config), or an RBAC binding to
	// system:service-account-issuer-discovery for anonymous callers.
	JWKSURL string
	// StartupTime is how long it took from starting etcd to /readyz.
	StartupTime time.Duration
	// SigningKeyFile is the service-account signing key (PEM, EC P-256):
	// tests use it to mint tokens the API server cannot issue itself, such
	// as already expired ones.
	SigningKeyFile string

	// nodeTokens are the static tokens of the nodes of PodCertificates.
	nodeTokens map[string]string

	etcd, apiserver *testproc.Proc
	stopOnce        sync.Once
}

// Option changes how an Env's kube-apiserver is started.
type Option func(*options)

type options struct {
	apiserverArgs []string
	// featureGates ("Name=true") and runtimeConfig ("group/version/
	// resource=true") are joined into one flag each; options may repeat
	// an entry.
	featureGates, runtimeConfig []string
	// nodes get a static token as system:node:<name> in system:nodes,
	// and the apiserver runs the Node authorizer and NodeRestriction.
	nodes []string
}

func newOptions(opts []Option) options {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	return o
}

// APIServerArgs adds flags to kube-apiserver's command line, after the
// package's own; give each flag once (--feature-gates=A=true,B=true), and
// not --feature-gates or --runtime-config with ClusterTrustBundles or
// PodCertificates.
func APIServerArgs(args ...string) Option {
	return func(o *options) { o.apiserverArgs = append(o.apiserverArgs, args...) }
}

// ClusterTrustBundles serves certificates.k8s.io/v1beta1 ClusterTrustBundles,
// which kube-apiserver v1.35 leaves off (a beta API with its feature gate).
func ClusterTrustBundles() Option {
	return func(o *options) {
		o.featureGates = append(o.featureGates, "ClusterTrustBundle=true")
		o.runtimeConfig = append(o.runtimeConfig, "certificates.k8s.io/v1beta1/clustertrustbundles=true")
	}
}

// NodeName is the node PodCertificates registers when given none.
const NodeName = "kubeenv-node-1"

// PodCertificates serves what Kubernetes pod certificates (KEP-4317) need,
// off by default in v1.35: certificates.k8s.io/v1beta1
// PodCertificateRequests and ClusterTrustBundles with their feature gates
// (PodCertificateRequest, ClusterTrustBundle, ClusterTrustBundleProjection);
// and, so that requests can be made as a kubelet makes them, the Node
// authorizer (--authorization-mode=Node,RBAC), the NodeRestriction
// admission plugin and a static token for each node, the user
// system:node:<name> in group system:nodes (NodeClient). nodes defaults to
// NodeName.
func PodCertificates(nodes ...string) Option {
	if len(nodes) == 0 {
		nodes = []string{NodeName}
	}
	return func(o *options) {
		ClusterTrustBundles()(o)
		o.featureGates = append(o.featureGates, "PodCertificateRequest=true", "ClusterTrustBundleProjection=true")
		o.runtimeConfig = append(o.runtimeConfig, "certificates.k8s.io/v1beta1/podcertificaterequests=true")
		o.nodes = append(o.nodes, nodes...)
	}
}

// args are the apiserver flags of the options.
func (o options) args() []string {
	var args []string
	if len(o.nodes) > 0 {
		args = append(args, "--authorization-mode=Node,RBAC", "--enable-admission-plugins=NodeRestriction")
	} else {
		args = append(args, "--authorization-mode=RBAC")
	}
	for flag, values := range map[string][]string{"--feature-gates": o.featureGates, "--runtime-config": o.runtimeConfig} {
		if len(values) > 0 {
			args = append(args, flag+"="+strings.Join(slices.Compact(slices.Sorted(slices.Values(values))), ","))
		}
	}
	return append(args, o.apiserverArgs...)
}

// Start starts an Env for t and stops it, removing its files, when t ends.
// It skips t when the binaries are missing (see the package documentation).
func Start(t testing.TB, opts ...Option) *Env {
	t.Helper()
	bin := testproc.BinDir(t, "testenv", "kube-apiserver", "etcd")
	dir := t.TempDir() // cleaned up after the processes are stopped (cleanups run LIFO)
	e, err := start(bin, dir, newOptions(opts))
	if err != nil {
		t.Fatalf("kubeenv: %v", err)
	}
	t.Cleanup(func() {
		e.stop()
		if t.Failed() {
			e.logTails(t, 0, 0)
		}
	})
	t.Logf("kubeenv: apiserver %s ready in %s", e.Config.Host, e.StartupTime.Round(time.Millisecond))
	return e
}

var shared struct {
	mu     sync.Mutex
	inMain bool
	done   bool
	env    *Env
	err    error
	tmp    string
	opts   options
}

// Main runs the tests of a package (m.Run), stops the Env that Get started
// if any, and exits with the tests' status. Call it from TestMain; opts
// apply to the Env that Get starts.
func Main(m *testing.M, opts ...Option) {
	shared.mu.Lock()
	shared.inMain = true
	shared.opts = newOptions(opts)
	shared.mu.Unlock()
	code := m.Run()
	shared.mu.Lock()
	if shared.env != nil {
		shared.env.stop()
	}
	if shared.tmp != "" {
		os.RemoveAll(shared.tmp)
	}
	shared.mu.Unlock()
	os.Exit(code)
}

// Get returns the Env shared by the tests of this test binary, starting it on
// first use. The package's TestMain must call Main, which stops it. Tests must
// not stop or reconfigure it and should use their own namespaces. When t
// fails, the process logs written during t are printed.
func Get(t testing.TB) *Env {
	t.Helper()
	bin := testproc.BinDir(t, "testenv", "kube-apiserver", "etcd")
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if !shared.inMain {
		t.Fatal("kubeenv.Get needs the package's TestMain to call kubeenv.Main(m)")
	}
	if !shared.done {
		shared.done = true
		shared.tmp, shared.err = os.MkdirTemp("", "kubeenv-")
		if shared.err == nil {
			shared.env, shared.err = start(bin, shared.tmp, shared.opts)
		}
		if shared.err == nil {
			t.Logf("kubeenv: shared apiserver %s ready in %s", shared.env.Config.Host, shared.env.StartupTime.Round(time.Millisecond))
		}
	}
	if shared.err != nil {
		t.Fatalf("kubeenv: shared env: %v", shared.err)
	}
	e := shared.env
	etcdOff, apiOff := fileSize(e.etcd.LogPath), fileSize(e.apiserver.LogPath)
	t.Cleanup(func() {
		if t.Failed() {
			e.logTails(t, etcdOff, apiOff)
		}
	})
	return e
}

// CreateServiceAccount creates namespace ns and the service account ns/name
// in it, unless they exist, and returns the service account.
func (e *Env) CreateServiceAccount(t testing.TB, ns, name string) *corev1.ServiceAccount {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := e.Client.CoreV1().Namespaces().Create(ctx,
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatalf("kubeenv: create namespace %s: %v", ns, err)
	}
	sa, err := e.Client.CoreV1().ServiceAccounts(ns).Create(ctx,
		&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		// A shared Env outlives one test run (go test -count=N).
		sa, err = e.Client.CoreV1().ServiceAccounts(ns).Get(ctx, name, metav1.GetOptions{})
	}
	if err != nil {
		t.Fatalf("kubeenv: create service account %s/%s: %v", ns, name, err)
	}
	return sa
}

// Token returns a service-account token for ns/sa from the TokenRequest API,
// bound to audiences (nil: the apiserver's audience) and valid for ttl
// (0: the apiserver's default of one hour; the API refuses less than 10 minutes).
func (e *Env) Token(t testing.TB, ns, sa string, audiences []string, ttl time.Duration) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{Audiences: audiences}}
	if ttl > 0 {
		secs := int64(ttl / time.Second)
		req.Spec.ExpirationSeconds = &secs
	}
	resp, err := e.Client.CoreV1().ServiceAccounts(ns).CreateToken(ctx, sa, req, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("kubeenv: token request for %s/%s: %v", ns, sa, err)
	}
	return resp.Status.Token
}

// start brings up etcd and kube-apiserver with files under dir. On error
// nothing is left running. A port taken between choosing and binding it is
// retried with new ports.
func start(bin, dir string, o options) (*Env, error) {
	var err error
	for attempt := 1; attempt <= 3; attempt++ {
		sub := filepath.Join(dir, "run"+strconv.Itoa(attempt))
		var e *Env
		if e, err = startOnce(bin, sub, o); err == nil {
			return e, nil
		}
		if !errors.Is(err, errAddrInUse) {
			break
		}
	}
	return nil, err
}

var errAddrInUse = errors.New("address already in use")

func startOnce(bin, dir string, o options) (_ *Env, err error) {
	begin := time.Now()
	certDir := filepath.Join(dir, "certs")
	for _, d := range []string{filepath.Join(dir, "etcd"), certDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, err
		}
	}
	ports, err := freePorts(2)
	if err != nil {
		return nil, err
	}
	etcdURL := "http://127.0.0.1:" + strconv.Itoa(ports[0])
	host := "https://127.0.0.1:" + strconv.Itoa(ports[1])

	token, nodeTokens, err := writeSecrets(dir, o.nodes)
	if err != nil {
		return nil, err
	}

	e := &Env{Issuer: Issuer, JWKSURL: host + "/openid/v1/jwks", SigningKeyFile: filepath.Join(dir, "sa.key"), nodeTokens: nodeTokens}
	defer func() {
		if err != nil {
			e.stop()
			err = fmt.Errorf("%w%s%s", err, e.etcd.Tail(), e.apiserver.Tail())
		}
	}()

	e.etcd, err = testproc.Start("etcd", filepath.Join(bin, "etcd"), filepath.Join(dir, "etcd.log"), nil,
		"--data-dir="+filepath.Join(dir, "etcd"),
		"--listen-client-urls="+etcdURL,
		"--listen-peer-urls=http://127.0.0.1:0",
		"--unsafe-no-fsync",
		"--log-level=warn")
	if err != nil {
		return e, err
	}
	if err = waitFor(e.etcd, readyTimeout, func() bool { return etcdHealthy(etcdURL) }); err != nil {
		return e, err
	}

	args := []string{
		"--etcd-servers=" + etcdURL,
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(ports[1]),
		"--cert-dir=" + certDir,
		"--token-auth-file=" + filepath.Join(dir, "tokens.csv"),
		"--service-account-issuer=" + Issuer,
		"--service-account-key-file=" + filepath.Join(dir, "sa.pub"),
		"--service-account-signing-key-file=" + filepath.Join(dir, "sa.key"),
		"--service-account-jwks-uri=" + e.JWKSURL,
		"--api-audiences=" + Issuer,
		"--service-cluster-ip-range=10.96.0.0/16",
		"--endpoint-reconciler-type=none",
		"--enable-priority-and-fairness=false",
		"--disable-admission-plugins=ServiceAccount",
		"--profiling=false",
	}
	e.apiserver, err = testproc.Start("kube-apiserver", filepath.Join(bin, "kube-apiserver"), filepath.Join(dir, "kube-apiserver.log"), nil,
		append(args, o.args()...)...)
	if err != nil {
		return e, err
	}

	// The apiserver writes its self-signed serving certificate (leaf and CA)
	// before it listens.
	crtPath := filepath.Join(certDir, "apiserver.crt")
	if err = waitFor(e.apiserver, readyTimeout, func() bool { return fileSize(crtPath) > 0 }); err != nil {
		return e, err
	}
	time.Sleep(50 * time.Millisecond) // let the write finish
	ca, err := os.ReadFile(crtPath)
	if err != nil {
		return e, err
	}
	e.Config = &rest.Config{
		Host:            host,
		BearerToken:     token,
		TLSClientConfig: rest.TLSClientConfig{CAData: ca},
		QPS:             100,
		Burst:           200,
		Timeout:         30 * time.Second,
	}
	cs, err := kubernetes.NewForConfig(e.Config)
	if err != nil {
		return e, err
	}
	e.Client = cs
	if err = waitFor(e.apiserver, readyTimeout, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		var code int
		cs.Discovery().RESTClient().Get().AbsPath("/readyz").Do(ctx).StatusCode(&code)
		return code == http.StatusOK
	}); err != nil {
		return e, err
	}
	e.StartupTime = time.Since(begin)
	return e, nil
}

// writeSecrets writes the service-account signing key pair and the static
// token file into dir and returns the admin token and the nodes' tokens.
func writeSecrets(dir string, nodes []string) (string, map[string]string, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", nil, err
	}
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return "", nil, err
	}
	pub, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return "", nil, err
	}
	newToken := func() string {
		tok := make([]byte, 32)
		_, _ = rand.Read(tok) // crypto/rand.Read does not fail
		return hex.EncodeToString(tok)
	}
	token := newToken()
	tokens := token + ",admin,admin-uid,system:masters\n"
	nodeTokens := map[string]string{}
	for _, n := range nodes {
		nodeTokens[n] = newToken()
		tokens += fmt.Sprintf("%s,system:node:%s,node-uid-%s,system:nodes\n", nodeTokens[n], n, n)
	}
	files := map[string][]byte{
		"sa.key":     pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}),
		"sa.pub":     pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}),
		"tokens.csv": []byte(tokens),
	}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			return "", nil, err
		}
	}
	return token, nodeTokens, nil
}

func freePorts(n int) ([]int, error) {
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
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

// waitFor waits for cond as testproc's WaitFor does, and says when p
// exited because its port was taken (start retries with other ports).
func waitFor(p *testproc.Proc, timeout time.Duration, cond func() bool) error {
	err := p.WaitFor(timeout, cond)
	select {
	case <-p.Done():
		if strings.Contains(testproc.ReadTail(p.LogPath, 0, 8<<10), "address already in use") {
			return fmt.Errorf("%s exited: %w", p.Name, errAddrInUse)
		}
	default:
	}
	return err
}

// stop stops the apiserver, then etcd.
func (e *Env) stop() {
	e.stopOnce.Do(func() {
		e.apiserver.Stop()
		e.etcd.Stop()
	})
}

// logTails prints the process logs from the given offsets (capped) via t.Log.
func (e *Env) logTails(t testing.TB, etcdOff, apiOff int64) {
	t.Helper()
	for _, l := range []struct {
		p   *testproc.Proc
		off int64
	}{{e.etcd, etcdOff}, {e.apiserver, apiOff}} {
		if l.p == nil {
			continue
		}
		t.Logf("kubeenv: ---- %s log (%s) ----\n%s", l.p.Name, l.p.LogPath, testproc.ReadTail(l.p.LogPath, l.off, logTailBytes))
	}
}

func fileSize(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return fi.Size()
}
