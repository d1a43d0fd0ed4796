package plane

import (
	"context"
	"errors"
	"io"
	"net"
	"net/url"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/meshca/meshca/internal/kubeenv"
)

// These tests run against a real kube-apiserver and etcd (make testenv).
func TestMain(m *testing.M) { kubeenv.Main(m) }

// forwarder relays TCP connections to the API server, so a test can cut
// the CA off from it (stop) as a network failure or an apiserver outage
// would, without stopping the apiserver other tests share.
type forwarder struct {
	ln     net.Listener
	target string

	mu    sync.Mutex
	conns []net.Conn
}

func forward(t *testing.T, target string) *forwarder {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &forwarder{ln: ln, target: target}
	go f.serve()
	t.Cleanup(f.stop)
	return f
}

func (f *forwarder) serve() {
	for {
		c, err := f.ln.Accept()
		if err != nil {
			return
		}
		up, err := net.Dial("tcp", f.target)
		if err != nil {
			c.Close()
			continue
		}
		f.mu.Lock()
		f.conns = append(f.conns, c, up)
		f.mu.Unlock()
		go func() { io.Copy(up, c); up.Close() }()
		go func() { io.Copy(c, up); c.Close() }()
	}
}

// stop refuses new connections and cuts the open ones.
func (f *forwarder) stop() {
	f.ln.Close()
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, c := range f.conns {
		c.Close()
	}
	f.conns = nil
}

// kubeconfig writes a kubeconfig for env's API server reached at addr.
func kubeconfig(t *testing.T, env *kubeenv.Env, addr string) string {
	t.Helper()
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["test"] = &clientcmdapi.Cluster{Server: "https://" + addr, CertificateAuthorityData: env.Config.CAData}
	cfg.AuthInfos["test"] = &clientcmdapi.AuthInfo{Token: env.Config.BearerToken}
	cfg.Contexts["test"] = &clientcmdapi.Context{Cluster: "test", AuthInfo: "test"}
	cfg.CurrentContext = "test"
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestRenewalAdmissionAgainstAPIServer (finding 2, and the failure drill
// "the apiserver down: renewals over mTLS go on"): with TokenReview
// attestation against a real API server, renewal over mTLS is refused once
// the ServiceAccount is deleted; while the API server is unreachable, an
// SVID whose ServiceAccount the CA has seen renews, and one it has never
// seen is told to retry (Unavailable), never admitted blind.
func TestRenewalAdmissionAgainstAPIServer(t *testing.T) {
	env := kubeenv.Get(t)
	ctx := context.Background()
	const ns = "renewal"
	for _, sa := range []string{"kept", "gone", "unseen"} {
		env.CreateServiceAccount(t, ns, sa)
	}
	host, err := url.Parse(env.Config.Host)
	if err != nil {
		t.Fatal(err)
	}
	fw := forward(t, host.Host)
	p, _ := startTest(t, t.TempDir(), Kubernetes{Mode: K8sTokenReview, Kubeconfig: kubeconfig(t, env, fw.ln.Addr().String()), Deny: []string{}})

	issue := func(sa string) (spiffeid.ID, *svid) {
		t.Helper()
		id := spiffeid.RequireFromPath(td, "/ns/"+ns+"/sa/"+sa)
		cert, err := sign(t, p, id, env.Token(t, ns, sa, []string{"meshca"}, time.Hour), nil)
		if err != nil {
			t.Fatalf("first issuance for %s: %v", sa, err)
		}
		return id, cert
	}
	kept, keptSVID := issue("kept")
	gone, goneSVID := issue("gone")
	unseen, unseenSVID := issue("unseen")

	if keptSVID, err = sign(t, p, kept, "", keptSVID); err != nil {
		t.Fatalf("renewal of an existing ServiceAccount: %v", err)
	}

	if err := env.Client.CoreV1().ServiceAccounts(ns).Delete(ctx, "gone", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	_, err = sign(t, p, gone, "", goneSVID)
	wantCode(t, "renewal after the ServiceAccount was deleted", err, codes.PermissionDenied, "ServiceAccount renewal/gone no longer exists")

	fw.stop() // the API server is unreachable from now on
	if _, err := sign(t, p, kept, "", keptSVID); err != nil {
		t.Fatalf("renewal while the API server is unreachable, ServiceAccount seen before: %v", err)
	}
	_, err = sign(t, p, unseen, "", unseenSVID)
	wantCode(t, "renewal while the API server is unreachable, ServiceAccount never seen", err, codes.Unavailable, "retry later")
	if errors.Is(err, context.DeadlineExceeded) {
		t.Fatal("the lookup hung instead of failing")
	}
}
