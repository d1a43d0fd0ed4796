package k8s_test

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/meshca/meshca/attestor"
	"github.com/meshca/meshca/attestor/jwks"
	"github.com/meshca/meshca/attestor/k8s"
	"github.com/meshca/meshca/internal/clock/clocktest"
	"github.com/meshca/meshca/internal/kubeenv"
)

// The tests in this file run against a real kube-apiserver and etcd (make
// testenv); they are skipped without them.
func TestMain(m *testing.M) { kubeenv.Main(m) }

// apiCalls counts, at the HTTP transport of a client, what the API server
// really receives: TokenReviews, and requests that are not watches.
type apiCalls struct {
	tokenReviews atomic.Int64
	nonWatch     atomic.Int64

	mu   sync.Mutex
	seen []string // the non-watch requests, for failure messages
}

func (c *apiCalls) wrap(rt http.RoundTripper) http.RoundTripper {
	return roundTripFunc(func(r *http.Request) (*http.Response, error) {
		if r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "/tokenreviews") {
			c.tokenReviews.Add(1)
		}
		if r.URL.Query().Get("watch") != "true" {
			c.nonWatch.Add(1)
			c.mu.Lock()
			c.seen = append(c.seen, r.Method+" "+r.URL.RequestURI())
			c.mu.Unlock()
		}
		return rt.RoundTrip(r)
	})
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// clientFor returns a clientset for env whose transport is wrapped by wrap
// (nil: none) and whose rate limit is out of the way.
func clientFor(t testing.TB, env *kubeenv.Env, wrap func(http.RoundTripper) http.RoundTripper) kubernetes.Interface {
	t.Helper()
	cfg := rest.CopyConfig(env.Config)
	cfg.QPS, cfg.Burst, cfg.WrapTransport = 1000, 1000, wrap
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// kubeAttestor is the informer mode against env: its informers and its
// renewal admission use client; the cluster's keys are fetched through
// env's own client, so that client sees only what the informer mode adds.
// The informers run until the test ends; wait says whether to wait for
// them to sync.
func kubeAttestor(t *testing.T, env *kubeenv.Env, client kubernetes.Interface, wait bool) (*k8s.InformerAttestor, *k8s.Admission) {
	t.Helper()
	inf, err := k8s.NewInformers(k8s.InformersConfig{Client: client})
	if err != nil {
		t.Fatal(err)
	}
	fetch := func(ctx context.Context) ([]byte, error) {
		return env.Client.Discovery().RESTClient().Get().AbsPath("/openid/v1/jwks").DoRaw(ctx)
	}
	cfg := k8s.Config{TrustDomain: td}
	a, err := k8s.NewInformer(k8s.InformerConfig{JWKSConfig: k8s.JWKSConfig{Config: cfg, Issuer: env.Issuer,
		Keys: jwks.NewKeySet(jwks.KeySetConfig{Fetch: fetch})}, Informers: inf})
	if err != nil {
		t.Fatal(err)
	}
	adm, err := k8s.NewAdmission(k8s.AdmissionConfig{Config: cfg, ServiceAccounts: inf})
	if err != nil {
		t.Fatal(err)
	}
	run(t, a, wait)
	return a, adm
}

// createPod creates ns/name running as ServiceAccount sa, on node (empty:
// unscheduled). No kubelet runs: the pod stays Pending, and a scheduled
// pod deleted gracefully stays terminating.
func createPod(t testing.TB, env *kubeenv.Env, ns, name, sa, node string) *corev1.Pod {
	t.Helper()
	p, err := env.Client.CoreV1().Pods(ns).Create(context.Background(), &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.PodSpec{ServiceAccountName: sa, NodeName: node, AutomountServiceAccountToken: new(bool),
			Containers: []corev1.Container{{Name: "app", Image: "example.org/app:1"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create pod %s/%s: %v", ns, name, err)
	}
	return p
}

// deletePod deletes ns/name at once (grace period 0), as the kubelet would
// confirm it.
func deletePod(t testing.TB, env *kubeenv.Env, ns, name string) {
	t.Helper()
	if err := env.Client.CoreV1().Pods(ns).Delete(context.Background(), name, *metav1.NewDeleteOptions(0)); err != nil {
		t.Fatalf("delete pod %s/%s: %v", ns, name, err)
	}
}

// podToken asks the TokenRequest API for a token of ServiceAccount ns/sa
// bound to pod, for audience meshca.
func podToken(t testing.TB, env *kubeenv.Env, ns, sa string, pod *corev1.Pod) string {
	t.Helper()
	tok, err := requestToken(env.Client, ns, sa, pod)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// requestToken asks the TokenRequest API, through client, for a one-hour
// token of ServiceAccount ns/sa for audience meshca, bound to pod unless
// it is nil.
func requestToken(client kubernetes.Interface, ns, sa string, pod *corev1.Pod) (string, error) {
	secs := int64(3600)
	req := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{Audiences: []string{"meshca"}, ExpirationSeconds: &secs}}
	if pod != nil {
		req.Spec.BoundObjectRef = &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID}
	}
	resp, err := client.CoreV1().ServiceAccounts(ns).CreateToken(context.Background(), sa, req, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("token request for %s/%s: %w", ns, sa, err)
	}
	return resp.Status.Token, nil
}

// attestKube attests token as the CSR API would.
func attestKube(a *k8s.InformerAttestor, token string) error {
	_, err := a.Attest(context.Background(), attestor.Credential{BearerToken: token})
	return err
}

// refusedEventually waits until a refuses token as Unauthenticated: the
// informer sees an API change a moment after it is made.
func refusedEventually(t *testing.T, what string, a *k8s.InformerAttestor, token string) {
	t.Helper()
	clocktest.Eventually(t, what, func() bool { return errors.Is(attestKube(a, token), attestor.ErrUnauthenticated) })
}

// TestInformerKubeServiceAccountDeleted: a token for a ServiceAccount
// deleted after the token was issued is refused, as is a renewal of its
// identity. Created again under the same name, the ServiceAccount has a
// new UID: its new tokens and renewals pass, the old tokens stay refused.
func TestInformerKubeServiceAccountDeleted(t *testing.T) {
	env := kubeenv.Get(t)
	ctx := context.Background()
	ns := uniqueNS("inf-sa-deleted")
	env.CreateServiceAccount(t, ns, "bar")
	a, adm := kubeAttestor(t, env, env.Client, true)
	old := env.Token(t, ns, "bar", []string{"meshca"}, time.Hour)
	if err := attestKube(a, old); err != nil {
		t.Fatalf("token of a live ServiceAccount: %v", err)
	}
	if err := env.Client.CoreV1().ServiceAccounts(ns).Delete(ctx, "bar", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	refusedEventually(t, "token of a deleted ServiceAccount refused", a, old)
	if err := adm.Admit(ctx, sa(ns, "bar")); !errors.Is(err, attestor.ErrPermissionDenied) {
		t.Fatalf("renewal of a deleted ServiceAccount's identity = %v, want ErrPermissionDenied", err)
	}

	env.CreateServiceAccount(t, ns, "bar")
	fresh := env.Token(t, ns, "bar", []string{"meshca"}, time.Hour)
	clocktest.Eventually(t, "new ServiceAccount's token accepted", func() bool { return attestKube(a, fresh) == nil })
	if err := attestKube(a, old); !errors.Is(err, attestor.ErrUnauthenticated) {
		t.Fatalf("token of the ServiceAccount's former UID = %v, want ErrUnauthenticated", err)
	}
	if err := adm.Admit(ctx, sa(ns, "bar")); err != nil {
		t.Fatalf("renewal once the ServiceAccount exists again = %v", err)
	}
}

// TestInformerKubePodBound: tokens bound to a pod (TokenRequest's
// boundObjectRef) pass while the pod lives, and are refused once it is
// deleted, terminating, or replaced by a pod of the same name (a new UID).
func TestInformerKubePodBound(t *testing.T) {
	env := kubeenv.Get(t)
	ns := uniqueNS("inf-pods")
	env.CreateServiceAccount(t, ns, "bar")
	a, _ := kubeAttestor(t, env, env.Client, true)

	t.Run("pod deleted", func(t *testing.T) {
		pod := createPod(t, env, ns, "deleted", "bar", "")
		token := podToken(t, env, ns, "bar", pod)
		clocktest.Eventually(t, "token of a live pod accepted", func() bool { return attestKube(a, token) == nil })
		deletePod(t, env, ns, pod.Name)
		refusedEventually(t, "token of a deleted pod refused", a, token)
	})
	t.Run("pod terminating", func(t *testing.T) {
		// Scheduled to a node (no kubelet confirms the deletion): the
		// token carries the node's name, and the pod stays terminating.
		pod := createPod(t, env, ns, "terminating", "bar", "node-1")
		token := podToken(t, env, ns, "bar", pod)
		if !strings.Contains(jwtPayload(t, token), `"node":{"name":"node-1"`) {
			t.Fatalf("the API server's token has no node claim: %s", jwtPayload(t, token))
		}
		clocktest.Eventually(t, "token of a live pod on its node accepted", func() bool { return attestKube(a, token) == nil })
		if err := env.Client.CoreV1().Pods(ns).Delete(context.Background(), pod.Name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		live, err := env.Client.CoreV1().Pods(ns).Get(context.Background(), pod.Name, metav1.GetOptions{})
		if err != nil || live.DeletionTimestamp == nil {
			t.Fatalf("pod after a graceful delete: %v, %v; want it terminating", live, err)
		}
		refusedEventually(t, "token of a terminating pod refused", a, token)
	})
	t.Run("pod UID does not match the live pod", func(t *testing.T) {
		pod := createPod(t, env, ns, "recreated", "bar", "")
		old := podToken(t, env, ns, "bar", pod)
		clocktest.Eventually(t, "token of a live pod accepted", func() bool { return attestKube(a, old) == nil })
		deletePod(t, env, ns, pod.Name)
		again := createPod(t, env, ns, "recreated", "bar", "")
		if again.UID == pod.UID {
			t.Fatal("the recreated pod kept its UID")
		}
		fresh := podToken(t, env, ns, "bar", again)
		clocktest.Eventually(t, "token of the new pod accepted", func() bool { return attestKube(a, fresh) == nil })
		if err := attestKube(a, old); !errors.Is(err, attestor.ErrUnauthenticated) {
			t.Fatalf("token of the pod's former UID = %v, want ErrUnauthenticated", err)
		}
	})
}

// jwtPayload decodes a JWT's claims without verifying them.
func jwtPayload(t *testing.T, token string) string {
	t.Helper()
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		t.Fatal("not a JWT")
	}
	b, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// gate holds the requests of one resource until it is opened: an API
// server whose list is slow, seen from the client.
type gate struct {
	resource string
	open     chan struct{}
	held     atomic.Int64
}

func (g *gate) wrap(rt http.RoundTripper) http.RoundTripper {
	return roundTripFunc(func(r *http.Request) (*http.Response, error) {
		if strings.HasSuffix(r.URL.Path, "/"+g.resource) {
			g.held.Add(1)
			select {
			case <-g.open:
			case <-r.Context().Done():
				return nil, r.Context().Err()
			}
		}
		return rt.RoundTrip(r)
	})
}

// TestInformerKubeBeforeSync: while the pods cannot be listed yet, the
// mode is not ready and refuses a valid token with Unavailable (retry),
// not Unauthenticated; once the list comes through, the same token passes.
func TestInformerKubeBeforeSync(t *testing.T) {
	env := kubeenv.Get(t)
	syncNS := uniqueNS("inf-sync")
	env.CreateServiceAccount(t, syncNS, "bar")
	g := &gate{resource: "pods", open: make(chan struct{})}
	a, adm := kubeAttestor(t, env, clientFor(t, env, g.wrap), false)
	defer func() {
		select {
		case <-g.open:
		default:
			close(g.open)
		}
	}()
	ctx := context.Background()
	token := env.Token(t, syncNS, "bar", []string{"meshca"}, time.Hour)
	clocktest.Eventually(t, "the pods list is held", func() bool { return g.held.Load() > 0 })

	err := a.Ready(ctx)
	if !errors.Is(err, k8s.ErrNotSynced) || !strings.Contains(err.Error(), "pods") {
		t.Fatalf("Ready() while the pods list is held = %v, want not synced (pods)", err)
	}
	err = attestKube(a, token)
	if !errors.Is(err, attestor.ErrUnavailable) || errors.Is(err, attestor.ErrUnauthenticated) {
		t.Fatalf("Attest() before sync = %v, want ErrUnavailable only", err)
	}
	// The ServiceAccounts may have synced already: the admission waits for
	// every cache all the same.
	if err := adm.Admit(ctx, sa(syncNS, "bar")); !errors.Is(err, attestor.ErrUnavailable) {
		t.Fatalf("renewal admission before sync = %v, want ErrUnavailable", err)
	}

	close(g.open)
	clocktest.Eventually(t, "ready once the list comes through", func() bool { return a.Ready(ctx) == nil })
	if err := attestKube(a, token); err != nil {
		t.Fatalf("Attest() after sync = %v", err)
	}
}

// TestInformerKubeNoAPICallPerCSR: 1,000 CSRs with 1,000 distinct tokens,
// half of them bound to pods, and 1,000 renewals cost the API server
// nothing: no TokenReview and no request but the informers' watches after
// the caches have synced, counted at the transport of the mode's client.
// The tokens come from the TokenRequest API through another client.
func TestInformerKubeNoAPICallPerCSR(t *testing.T) {
	env := kubeenv.Get(t)
	ns := uniqueNS("inf-storm")
	const (
		n      = 1000
		nPods  = 10
		minter = 8
	)
	env.CreateServiceAccount(t, ns, "bar")
	pods := make([]*corev1.Pod, nPods)
	for i := range pods {
		pods[i] = createPod(t, env, ns, fmt.Sprintf("pod-%d", i), "bar", "")
	}
	mint := clientFor(t, env, nil)
	tokens := make([]string, n)
	var g errgroup.Group
	g.SetLimit(minter)
	for i := range tokens {
		g.Go(func() error {
			var pod *corev1.Pod
			if i%2 == 0 {
				pod = pods[i/2%nPods]
			}
			var err error
			tokens[i], err = requestToken(mint, ns, "bar", pod)
			return err
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	distinct := map[string]bool{}
	for _, tok := range tokens {
		distinct[tok] = true
	}
	if len(distinct) != n {
		t.Fatalf("%d distinct tokens, want %d", len(distinct), n)
	}

	calls := &apiCalls{}
	a, adm := kubeAttestor(t, env, clientFor(t, env, calls.wrap), true)
	// The pods were created before the informers started: the caches hold
	// them. The first token also loads the cluster's keys (another client).
	if err := attestKube(a, tokens[0]); err != nil {
		t.Fatal(err)
	}
	beforeNonWatch := calls.nonWatch.Load()
	calls.mu.Lock()
	calls.seen = nil
	calls.mu.Unlock()

	start := time.Now()
	for i, tok := range tokens {
		if err := attestKube(a, tok); err != nil {
			t.Fatalf("CSR %d: %v", i, err)
		}
		if err := adm.Admit(context.Background(), sa(ns, "bar")); err != nil {
			t.Fatalf("renewal %d: %v", i, err)
		}
	}
	took := time.Since(start)
	if n := calls.tokenReviews.Load(); n != 0 {
		t.Errorf("%d TokenReviews sent, want 0", n)
	}
	if d := calls.nonWatch.Load() - beforeNonWatch; d != 0 {
		calls.mu.Lock()
		defer calls.mu.Unlock()
		t.Errorf("%d API calls other than watches during the CSRs, want 0: %v", d, calls.seen)
	}
	t.Logf("%d CSRs with distinct tokens and %d renewals in %s: 0 TokenReviews, 0 API calls (%d non-watch calls before, while syncing)",
		n, n, took.Round(time.Millisecond), beforeNonWatch)
}

// nsSeq numbers the namespaces of these tests, so that a run with -count
// above 1 against the binary's one API server does not meet the objects
// of the run before.
var nsSeq atomic.Int64

func uniqueNS(base string) string { return fmt.Sprintf("%s-%d", base, nsSeq.Add(1)) }
