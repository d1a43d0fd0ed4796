package podcert_test

import (
	"context"
	"crypto"
	"errors"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	certificatesv1beta1 "k8s.io/api/certificates/v1beta1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/meshca/meshca/attestor/k8s"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/ca/podcert"
	"github.com/meshca/meshca/ca/store"
	"github.com/meshca/meshca/ca/store/boltstore"
	"github.com/meshca/meshca/internal/clock/clocktest"
	"github.com/meshca/meshca/internal/kubeenv"
	"github.com/meshca/meshca/internal/storetest"
)

// The tests named *AgainstAPIServer run against a real kube-apiserver
// (make testenv) with pod certificates on, the Node authorizer and
// NodeRestriction: the requests are made by a node, for pods on it, as a
// kubelet makes them, and the API server checks them and the answers.
// They share the API server, each in namespaces of its own.
func TestMain(m *testing.M) { kubeenv.Main(m, kubeenv.PodCertificates()) }

// cluster is the shared API server with the node, a namespace and a
// ServiceAccount of the test's own.
type cluster struct {
	env   *kubeenv.Env
	node  *corev1.Node
	ns    string
	sa    string
	saUID types.UID
}

func newCluster(t testing.TB, name string) *cluster {
	t.Helper()
	env := kubeenv.Get(t)
	node := env.CreateNode(t, kubeenv.NodeName)
	ns := name + "-" + strconv.FormatInt(time.Now().UnixNano()%(1<<30), 36)
	sa := env.CreateServiceAccount(t, ns, "web")
	return &cluster{env: env, node: node, ns: ns, sa: sa.Name, saUID: sa.UID}
}

// pod creates a pod of the ServiceAccount on the node.
func (c *cluster) pod(t testing.TB, name string) pod {
	t.Helper()
	p := c.env.CreatePod(t, c.ns, name, c.sa, c.node.Name)
	return pod{ns: c.ns, name: p.Name, sa: c.sa, node: c.node.Name, uid: p.UID, saUID: c.saUID, nodeUID: c.node.UID}
}

// request creates, as the node, a request for p to signer with k.
func (c *cluster) request(t testing.TB, p pod, signer string, k crypto.Signer, mod func(*certificatesv1beta1.PodCertificateRequest)) *certificatesv1beta1.PodCertificateRequest {
	t.Helper()
	req := request(t, p, "", signer, k)
	req.GenerateName = p.name + "-"
	if mod != nil {
		mod(req)
	}
	return c.env.CreatePodCertificateRequest(t, req)
}

// running is a Controller running until the test ends or stop is called.
type running struct {
	cancel context.CancelFunc
	done   chan struct{}
}

func (r *running) stop() {
	r.cancel()
	<-r.done
}

func run(t testing.TB, cfg podcert.Config) *running {
	t.Helper()
	c, err := podcert.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		if err := c.Run(ctx); err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	t.Cleanup(r.stop)
	return r
}

// TestAnswersAgainstAPIServer: the API server takes each answer: valid
// requests issued (their chains verify to the CA's roots with the pod's
// SPIFFE ID), unsupported keys denied with UnsupportedKeyType; and a
// request of another signer is left alone.
func TestAnswersAgainstAPIServer(t *testing.T) {
	c := newCluster(t, "answers")
	const signer = "meshca.test/answers"
	st := storetest.NewMem()
	auth := newAuthority(t, st, nil)
	run(t, podcert.Config{Client: c.env.Client, SignerName: signer, Authority: auth, Identities: admission(t)})
	p := c.pod(t, "web-0")
	tests := []struct {
		name, key    string
		maxExp       *int32
		want, reason string
		life         time.Duration
	}{
		{name: "ECDSA P-256", key: keyP256, want: "Issued", reason: "Issued", life: 24 * time.Hour},
		{name: "ECDSA P-384", key: keyP384, want: "Issued", reason: "Issued", life: 24 * time.Hour},
		{name: "RSA 3072", key: keyRSA3072, want: "Issued", reason: "Issued", life: 24 * time.Hour},
		{name: "one hour, the shortest", key: keyP256, maxExp: int32p(3600), want: "Issued", reason: "Issued", life: time.Hour},
		{name: "Ed25519", key: keyEd25519, want: "Denied", reason: podcert.ReasonUnsupportedKeyType},
		{name: "ECDSA P-521", key: keyP521, want: "Denied", reason: podcert.ReasonUnsupportedKeyType},
	}
	reqs := make([]*certificatesv1beta1.PodCertificateRequest, len(tests))
	start := time.Now()
	for i, tt := range tests {
		reqs[i] = c.request(t, p, signer, key(t, tt.key, false), func(r *certificatesv1beta1.PodCertificateRequest) {
			r.Spec.MaxExpirationSeconds = tt.maxExp
		})
	}
	other := c.request(t, p, "example.com/other", key(t, keyP256, false), nil)
	issued := 0
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := answered(t, c.env.Client, reqs[i])
			cond := condition(got)
			if cond.Type != tt.want || cond.Reason != tt.reason {
				t.Fatalf("condition %s/%s %q, want %s/%s", cond.Type, cond.Reason, cond.Message, tt.want, tt.reason)
			}
			t.Logf("answered within %s of the first request's creation", time.Since(start).Round(time.Millisecond))
			if tt.want == "Issued" {
				issued++
				checkIssued(t, auth, got, tt.life, time.Now())
			}
		})
	}
	if got := get(t, c.env.Client, other); len(got.Status.Conditions) != 0 {
		t.Errorf("another signer's request answered: %+v", got.Status.Conditions)
	}
	recs, err := st.Issuances(context.Background(), store.IssuanceFilter{})
	if err != nil || len(recs) != issued {
		t.Fatalf("%d records (%v), want %d", len(recs), err, issued)
	}
	d := recs[0].Details
	if recs[0].CredentialKind != k8s.KindPodCertificate || recs[0].Requester != "system:node:"+kubeenv.NodeName ||
		d[k8s.DetailPodName] != "web-0" || d[k8s.DetailPodUID] != string(p.uid) || d[k8s.DetailNode] != kubeenv.NodeName || d[k8s.DetailRequestUID] == "" {
		t.Errorf("record %+v", recs[0])
	}
}

// failStatus is a client transport on which status updates fail while
// failing is set, after counting each in attempts.
type failStatus struct {
	next     http.RoundTripper
	failing  *atomic.Bool
	attempts *atomic.Int32
}

func (f failStatus) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Method == http.MethodPut && strings.HasSuffix(r.URL.Path, "/status") {
		f.attempts.Add(1)
		if f.failing.Load() {
			return nil, errors.New("test: the connection to the API server broke")
		}
	}
	return f.next.RoundTrip(r)
}

// TestRestartSignsOnceAgainstAPIServer: meshca signs and records, its
// status update fails, and it stops (a crash between signing and the
// update); started again on the same data file it sends the certificate
// signed the first time. One certificate was signed for the request.
func TestRestartSignsOnceAgainstAPIServer(t *testing.T) {
	c := newCluster(t, "restart")
	const signer = "meshca.test/restart"
	path := filepath.Join(t.TempDir(), "meshca.db")
	st, err := boltstore.Open(path, boltstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	var failing atomic.Bool
	var attempts atomic.Int32
	failing.Store(true)
	cfg := rest.CopyConfig(c.env.Config)
	cfg.WrapTransport = func(rt http.RoundTripper) http.RoundTripper {
		return failStatus{next: rt, failing: &failing, attempts: &attempts}
	}
	broken, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	first := run(t, podcert.Config{Client: broken, SignerName: signer, Authority: newAuthority(t, st, nil), Identities: admission(t)})
	req := c.request(t, c.pod(t, "web-0"), signer, key(t, keyP256, true), nil)
	clocktest.Eventually(t, "a status update attempted", func() bool { return attempts.Load() > 0 })
	first.stop()
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	if got := get(t, c.env.Client, req); condition(got) != nil {
		t.Fatalf("answered through a broken connection: %+v", got.Status)
	}

	st, err = boltstore.Open(path, boltstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	m := &metrics{}
	auth := newAuthority(t, st, nil)
	run(t, podcert.Config{Client: c.env.Client, SignerName: signer, Authority: auth, Identities: admission(t), Metrics: m})
	got := answered(t, c.env.Client, req)
	checkIssued(t, auth, got, 24*time.Hour, time.Now())
	if n := numRecords(t, st); n != 1 {
		t.Fatalf("%d certificates recorded, want 1", n)
	}
	ans, err := st.IssuedRequest(context.Background(), "k8s-podcertificaterequest/"+string(req.UID))
	if err != nil || chainOf(t, got.Status.CertificateChain)[0].SerialNumber.Text(16) != ans.Serial {
		t.Fatalf("the status holds another certificate than the one recorded (%v)", err)
	}
	// The answer is counted just after the status update seen above.
	clocktest.Eventually(t, "the answer counted", func() bool { return m.count("resent", "")+m.count("issued", "") > 0 })
	if m.count("resent", "") != 1 || m.count("issued", "") != 0 {
		t.Errorf("metrics %v, want one resent", m.snapshot())
	}
}

// TestReplicasSignOnceAgainstAPIServer: two replicas sharing a store (as
// with PostgreSQL, without leader election) both answer every request;
// each request gets one certificate, and the API server takes one status.
func TestReplicasSignOnceAgainstAPIServer(t *testing.T) {
	c := newCluster(t, "replicas")
	const signer, requests = "meshca.test/replicas", 20
	st := storetest.NewMem()
	auths := []*ca.Authority{newAuthority(t, st, nil), newAuthority(t, st, nil)}
	for _, a := range auths {
		run(t, podcert.Config{Client: c.env.Client, SignerName: signer, Authority: a, Identities: admission(t)})
	}
	p := c.pod(t, "web-0")
	reqs := make([]*certificatesv1beta1.PodCertificateRequest, requests)
	var wg sync.WaitGroup
	for i := range reqs {
		wg.Go(func() { reqs[i] = c.request(t, p, signer, key(t, keyP256, true), nil) })
	}
	wg.Wait()
	for _, r := range reqs {
		got := answered(t, c.env.Client, r)
		if cond := condition(got); cond.Type != "Issued" {
			t.Fatalf("condition %+v", cond)
		}
		ans, err := st.IssuedRequest(context.Background(), "k8s-podcertificaterequest/"+string(r.UID))
		if err != nil || chainOf(t, got.Status.CertificateChain)[0].SerialNumber.Text(16) != ans.Serial {
			t.Fatalf("the status holds another certificate than the one recorded (%v)", err)
		}
	}
	if n := numRecords(t, st); n != requests {
		t.Fatalf("%d certificates recorded for %d requests", n, requests)
	}
}
