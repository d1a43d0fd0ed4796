package k8s_test

import (
	"cmp"
	"context"
	"errors"
	"maps"
	"reflect"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/meshca/meshca/attestor"
	"github.com/meshca/meshca/attestor/k8s"
	"github.com/meshca/meshca/internal/clock/clocktest"
)

// liveSA and livePod are the objects the default test token (mint with
// saToken{}) is bound to, as the API server holds them.
func liveSA(mod ...func(*corev1.ServiceAccount)) *corev1.ServiceAccount {
	s := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: "foo", Name: "bar", UID: "sa-uid-1"}}
	for _, m := range mod {
		m(s)
	}
	return s
}

func livePod(mod ...func(*corev1.Pod)) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "foo", Name: "pod-1", UID: "pod-uid-1", Labels: map[string]string{"app": "x"}},
		Spec:       corev1.PodSpec{ServiceAccountName: "bar", NodeName: "node-1", Containers: []corev1.Container{{Name: "app", Image: "app:1"}}},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning},
	}
	for _, m := range mod {
		m(p)
	}
	return p
}

func terminating(m *metav1.ObjectMeta) {
	ts := metav1.NewTime(epoch.Add(30 * time.Second))
	m.DeletionTimestamp, m.Finalizers = &ts, []string{"example.org/hold"}
}

// fakeCluster runs Informers against a fake clientset holding objs and
// waits until they have synced; the watches end with the test.
func fakeCluster(t testing.TB, objs ...runtime.Object) (*k8s.Informers, *fake.Clientset) {
	t.Helper()
	client := fake.NewClientset(objs...)
	inf, err := k8s.NewInformers(k8s.InformersConfig{Client: client})
	if err != nil {
		t.Fatal(err)
	}
	run(t, inf, true)
	return inf, client
}

// run runs r's watches until the test ends, and waits for them to sync
// if wait says so.
func run(t testing.TB, r interface {
	Run(context.Context)
	Ready(context.Context) error
}, wait bool) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	if wait {
		clocktest.Eventually(t, "informers synced", func() bool { return r.Ready(ctx) == nil })
	}
}

func newInformerAttestor(t *testing.T, inf *k8s.Informers, cfg k8s.Config) *k8s.InformerAttestor {
	t.Helper()
	a, _ := newInformerAttestorClock(t, inf, cfg)
	return a
}

// newInformerAttestorClock is newInformerAttestor with its fake clock, at
// epoch.
func newInformerAttestorClock(t *testing.T, inf *k8s.Informers, cfg k8s.Config) (*k8s.InformerAttestor, *clocktest.Fake) {
	t.Helper()
	clk := clocktest.New(epoch)
	cfg.TrustDomain, cfg.Clock = td, clk
	a, err := k8s.NewInformer(k8s.InformerConfig{JWKSConfig: k8s.JWKSConfig{Config: cfg, Keys: staticKeys(t, clk)}, Informers: inf})
	if err != nil {
		t.Fatal(err)
	}
	return a, clk
}

// TestInformerAttest is the informer mode's decision table: the token is
// verified offline, then the ServiceAccount and pod it is bound to must be
// in the caches as the token names them. The tokens are older than
// CatchUpAge, so each is decided at once (TestInformerCatchUp waits).
func TestInformerAttest(t *testing.T) {
	podDetails := map[string]string{"pod-name": "pod-1", "pod-uid": "pod-uid-1", "sa-uid": "sa-uid-1"}
	tests := []struct {
		name        string
		objs        []runtime.Object
		cfg         k8s.Config
		tok         saToken
		token       string // instead of tok
		wantErr     error
		wantRefused string
		wantDetails map[string]string
	}{
		{name: "pod-bound token, ServiceAccount and pod live", objs: []runtime.Object{liveSA(), livePod()}, wantDetails: podDetails},
		{name: "not pod-bound token, ServiceAccount live", objs: []runtime.Object{liveSA()}, tok: saToken{noPod: true},
			wantDetails: map[string]string{"sa-uid": "sa-uid-1"}},
		{name: "token names the pod's node", objs: []runtime.Object{liveSA(), livePod()}, tok: saToken{node: "node-1"}, wantDetails: podDetails},
		{name: "missing ServiceAccount", objs: []runtime.Object{livePod()},
			wantErr: attestor.ErrUnauthenticated, wantRefused: "serviceaccount-gone"},
		{name: "missing ServiceAccount, not pod-bound token", tok: saToken{noPod: true},
			wantErr: attestor.ErrUnauthenticated, wantRefused: "serviceaccount-gone"},
		{name: "ServiceAccount UID mismatch (recreated)", objs: []runtime.Object{liveSA(func(s *corev1.ServiceAccount) { s.UID = "sa-uid-2" }), livePod()},
			wantErr: attestor.ErrUnauthenticated, wantRefused: "serviceaccount-gone"},
		{name: "ServiceAccount being deleted", objs: []runtime.Object{liveSA(func(s *corev1.ServiceAccount) { terminating(&s.ObjectMeta) }), livePod()},
			wantErr: attestor.ErrUnauthenticated, wantRefused: "serviceaccount-gone"},
		{name: "pod missing", objs: []runtime.Object{liveSA()},
			wantErr: attestor.ErrUnauthenticated, wantRefused: "pod-gone"},
		{name: "pod of that name in another namespace", objs: []runtime.Object{liveSA(), livePod(func(p *corev1.Pod) { p.Namespace = "other" })},
			wantErr: attestor.ErrUnauthenticated, wantRefused: "pod-gone"},
		{name: "pod UID mismatch (recreated)", objs: []runtime.Object{liveSA(), livePod(func(p *corev1.Pod) { p.UID = "pod-uid-2" })},
			wantErr: attestor.ErrUnauthenticated, wantRefused: "pod-gone"},
		{name: "pod terminating", objs: []runtime.Object{liveSA(), livePod(func(p *corev1.Pod) { terminating(&p.ObjectMeta) })},
			wantErr: attestor.ErrUnauthenticated, wantRefused: "pod-gone"},
		{name: "pod succeeded", objs: []runtime.Object{liveSA(), livePod(func(p *corev1.Pod) { p.Status.Phase = corev1.PodSucceeded })},
			wantErr: attestor.ErrUnauthenticated, wantRefused: "pod-gone"},
		{name: "pod failed", objs: []runtime.Object{liveSA(), livePod(func(p *corev1.Pod) { p.Status.Phase = corev1.PodFailed })},
			wantErr: attestor.ErrUnauthenticated, wantRefused: "pod-gone"},
		{name: "pending pod (not scheduled), token without node", objs: []runtime.Object{liveSA(), livePod(func(p *corev1.Pod) {
			p.Spec.NodeName, p.Status.Phase = "", corev1.PodPending
		})}, wantDetails: podDetails},
		{name: "node mismatch", objs: []runtime.Object{liveSA(), livePod()}, tok: saToken{node: "node-2"},
			wantErr: attestor.ErrUnauthenticated, wantRefused: "pod-node"},
		{name: "node claim, pod not on any node", objs: []runtime.Object{liveSA(), livePod(func(p *corev1.Pod) { p.Spec.NodeName = "" })}, tok: saToken{node: "node-1"},
			wantErr: attestor.ErrUnauthenticated, wantRefused: "pod-node"},
		{name: "Secret-bound token", objs: []runtime.Object{liveSA()}, tok: saToken{noPod: true, secret: "s"},
			wantErr: attestor.ErrUnauthenticated, wantRefused: "unsupported-binding"},
		{name: "Node-bound token", objs: []runtime.Object{liveSA()}, tok: saToken{noPod: true, node: "node-1"},
			wantErr: attestor.ErrUnauthenticated, wantRefused: "unsupported-binding"},
		{name: "denied namespace, objects live", objs: []runtime.Object{
			liveSA(func(s *corev1.ServiceAccount) { s.Namespace = "kube-system" }), livePod(func(p *corev1.Pod) { p.Namespace = "kube-system" }),
		}, tok: saToken{namespace: "kube-system"}, wantErr: attestor.ErrPermissionDenied, wantRefused: "denied"},
		{name: "bad signature never reaches the caches", objs: []runtime.Object{liveSA(), livePod()}, token: forge(t),
			wantErr: attestor.ErrUnauthenticated, wantRefused: "invalid"},
		{name: "opaque bearer is not ours", token: "join-token", wantErr: attestor.ErrNoCredential},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			inf, _ := fakeCluster(t, tc.objs...)
			rec := newRecorder()
			tc.cfg.Metrics = rec
			a := newInformerAttestor(t, inf, tc.cfg)
			token := tc.token
			if token == "" {
				token = mint(t, epoch.Add(-time.Minute), tc.tok)
			}
			id, err := a.Attest(context.Background(), attestor.Credential{BearerToken: token})
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) || !id.ID.IsZero() {
					t.Fatalf("Attest() = %v, %v; want %v", id.ID, err, tc.wantErr)
				}
				if tc.wantRefused != "" && rec.refusals(tc.wantRefused) != 1 {
					t.Errorf("Refused(%q) counted %d times, want 1", tc.wantRefused, rec.refusals(tc.wantRefused))
				}
				if tc.wantRefused != "" && tc.wantRefused != "invalid" && tc.wantRefused != "denied" &&
					err.Error() != "attestor: unauthenticated: ServiceAccount token has been invalidated (the ServiceAccount or pod it is bound to no longer exists)" {
					t.Errorf("Attest() error %q is not the one opaque message for every binding failure", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Attest() = %v, want success", err)
			}
			if id.ID != sa(cmp.Or(tc.tok.namespace, "foo"), "bar") || id.Kind != "k8s-informer" {
				t.Errorf("Attest() = %v (%s), want foo/bar (k8s-informer)", id.ID, id.Kind)
			}
			if !maps.Equal(id.Details, tc.wantDetails) {
				t.Errorf("Details = %v, want %v", id.Details, tc.wantDetails)
			}
		})
	}
}

// forge signs a token with a key the cluster never had, under the
// cluster's key ID.
func forge(t *testing.T) string {
	t.Helper()
	tok := mint(t, epoch, saToken{})
	other := mint(t, epoch, saToken{serial: 1})
	// The signature of another token over these claims cannot verify.
	return tok[:strings.LastIndexByte(tok, '.')] + other[strings.LastIndexByte(other, '.'):]
}

// TestInformerUnsynced: before the caches have synced, a valid token is
// refused as Unavailable (retry), never Unauthenticated, and Ready says
// which caches are still listing; once they sync, the same token passes.
func TestInformerUnsynced(t *testing.T) {
	client := fake.NewClientset(liveSA(), livePod())
	inf, err := k8s.NewInformers(k8s.InformersConfig{Client: client})
	if err != nil {
		t.Fatal(err)
	}
	a := newInformerAttestor(t, inf, k8s.Config{})
	ctx := context.Background()
	cred := attestor.Credential{BearerToken: mint(t, epoch, saToken{})}

	_, err = a.Attest(ctx, cred)
	if !errors.Is(err, attestor.ErrUnavailable) || !errors.Is(err, k8s.ErrNotSynced) || errors.Is(err, attestor.ErrUnauthenticated) {
		t.Fatalf("Attest() before sync = %v, want ErrUnavailable wrapping ErrNotSynced", err)
	}
	if err := a.Ready(ctx); !errors.Is(err, k8s.ErrNotSynced) || !strings.Contains(err.Error(), "serviceaccounts, pods") {
		t.Fatalf("Ready() before sync = %v, want not synced naming both caches", err)
	}
	adm, err := k8s.NewAdmission(k8s.AdmissionConfig{Config: k8s.Config{TrustDomain: td}, ServiceAccounts: inf})
	if err != nil {
		t.Fatal(err)
	}
	if err := adm.Admit(ctx, sa("foo", "bar")); !errors.Is(err, attestor.ErrUnavailable) {
		t.Fatalf("renewal admission before sync = %v, want ErrUnavailable", err)
	}

	run(t, a, true)
	if _, err := a.Attest(ctx, cred); err != nil {
		t.Fatalf("Attest() after sync = %v", err)
	}
	if err := adm.Admit(ctx, sa("foo", "bar")); err != nil {
		t.Fatalf("renewal admission after sync = %v", err)
	}
}

// TestInformerSeesChanges: a token accepted while its objects live is
// refused once the informer sees them deleted or replaced, without a
// restart, and the renewal admission on the same caches refuses the
// deleted ServiceAccount too, with no lookup.
func TestInformerSeesChanges(t *testing.T) {
	ctx := context.Background()
	// Tokens older than CatchUpAge: refusals are decided at once.
	issued := epoch.Add(-time.Minute)
	inf, client := fakeCluster(t, liveSA(), livePod())
	rec := newRecorder()
	a := newInformerAttestor(t, inf, k8s.Config{Metrics: rec})
	adm, err := k8s.NewAdmission(k8s.AdmissionConfig{Config: k8s.Config{TrustDomain: td, Metrics: rec}, ServiceAccounts: inf})
	if err != nil {
		t.Fatal(err)
	}
	cred := attestor.Credential{BearerToken: mint(t, issued, saToken{})}
	refused := func() bool {
		_, err := a.Attest(ctx, cred)
		return errors.Is(err, attestor.ErrUnauthenticated)
	}
	if _, err := a.Attest(ctx, cred); err != nil {
		t.Fatalf("Attest() = %v", err)
	}

	// The pod is replaced under the same name: the token's pod UID is stale.
	pods := client.CoreV1().Pods("foo")
	if err := pods.Delete(ctx, "pod-1", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	clocktest.Eventually(t, "pod deletion refused", refused)
	if _, err := pods.Create(ctx, livePod(func(p *corev1.Pod) { p.UID = types.UID("pod-uid-2") }), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	clocktest.Eventually(t, "new pod seen", func() bool {
		_, err := a.Attest(ctx, attestor.Credential{BearerToken: mint(t, issued, saToken{podUID: "pod-uid-2"})})
		return err == nil
	})
	if !refused() {
		t.Fatal("a token of the pod's former UID passes")
	}

	// The ServiceAccount is deleted: tokens and renewals are refused.
	if err := adm.Admit(ctx, sa("foo", "bar")); err != nil {
		t.Fatalf("renewal while the ServiceAccount lives: %v", err)
	}
	if err := client.CoreV1().ServiceAccounts("foo").Delete(ctx, "bar", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	clocktest.Eventually(t, "ServiceAccount deletion seen by the admission", func() bool {
		return errors.Is(adm.Admit(ctx, sa("foo", "bar")), attestor.ErrPermissionDenied)
	})
	cred = attestor.Credential{BearerToken: mint(t, issued, saToken{podUID: "pod-uid-2"})}
	if !refused() {
		t.Fatal("a token of a deleted ServiceAccount passes")
	}
	if n := rec.lookupCount("found") + rec.lookupCount("not-found") + rec.lookupCount("error"); n != 0 {
		t.Errorf("the admission made %d ServiceAccount lookups, want 0 on informer caches", n)
	}
	if rec.renewalCount("deleted") < 1 || rec.renewalCount("ok") < 1 {
		t.Errorf("renewals counted ok=%d deleted=%d", rec.renewalCount("ok"), rec.renewalCount("deleted"))
	}
}

// TestInformersStripObjects: the caches hold only what the checks read, so
// their memory does not grow with labels, annotations, specs or statuses.
func TestInformersStripObjects(t *testing.T) {
	big := livePod(func(p *corev1.Pod) {
		p.Annotations = map[string]string{"big": strings.Repeat("x", 10_000)}
		p.ManagedFields = []metav1.ManagedFieldsEntry{{Manager: "kubectl"}}
		p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}
	})
	inf, _ := fakeCluster(t, liveSA(func(s *corev1.ServiceAccount) {
		s.Secrets = []corev1.ObjectReference{{Name: "x"}}
		s.Labels = map[string]string{"a": "b"}
	}), big)
	pod, sa := k8s.CachedPodForTest(inf, "foo", "pod-1"), k8s.CachedServiceAccountForTest(inf, "foo", "bar")
	wantPod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "foo", Name: "pod-1", UID: "pod-uid-1", ResourceVersion: pod.ResourceVersion},
		Spec:       corev1.PodSpec{NodeName: "node-1", ServiceAccountName: "bar"},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning},
	}
	if pod == nil || !reflect.DeepEqual(pod, wantPod) {
		t.Errorf("cached pod = %+v, want only name, namespace, UID, resource version, node, ServiceAccount and phase", pod)
	}
	wantSA := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: "foo", Name: "bar", UID: "sa-uid-1", ResourceVersion: sa.ResourceVersion}}
	if sa == nil || !reflect.DeepEqual(sa, wantSA) {
		t.Errorf("cached ServiceAccount = %+v, want only name, namespace, UID and resource version", sa)
	}
}

// TestInformerCatchUp: a young token whose objects the caches do not have
// yet (or not as the token names them) waits for the caches, and is
// accepted when its objects arrive; refused after CatchUpWait if they do
// not; a young token refused for a reason no watch event can mend, and an
// old one, are decided at once.
func TestInformerCatchUp(t *testing.T) {
	tests := []struct {
		name    string
		objs    []runtime.Object // in the caches at the start
		arrive  []runtime.Object // created while the check waits
		replace []runtime.Object // updated while the check waits
		age     time.Duration    // of the token
		tok     saToken
		waits   bool // the check waits for the caches
		want    string
	}{
		{name: "ServiceAccount and pod arrive", arrive: []runtime.Object{liveSA(), livePod()}, waits: true},
		{name: "pod arrives", objs: []runtime.Object{liveSA()}, arrive: []runtime.Object{livePod()}, waits: true},
		{name: "ServiceAccount created again", objs: []runtime.Object{liveSA(func(s *corev1.ServiceAccount) { s.UID = "sa-uid-0" }), livePod()},
			replace: []runtime.Object{liveSA()}, waits: true},
		{name: "pod bound to its node", objs: []runtime.Object{liveSA(), livePod(func(p *corev1.Pod) { p.Spec.NodeName = "" })}, tok: saToken{node: "node-1"},
			replace: []runtime.Object{livePod()}, waits: true},
		{name: "nothing arrives", objs: []runtime.Object{liveSA()}, waits: true, want: "pod-gone"},
		{name: "another object arrives, not the one", objs: []runtime.Object{liveSA()},
			arrive: []runtime.Object{livePod(func(p *corev1.Pod) { p.Name = "pod-2" })}, waits: true, want: "pod-gone"},
		{name: "token older than CatchUpAge", objs: []runtime.Object{liveSA()}, age: k8s.CatchUpAge + time.Second, want: "pod-gone"},
		{name: "ServiceAccount being deleted", objs: []runtime.Object{liveSA(func(s *corev1.ServiceAccount) { terminating(&s.ObjectMeta) }), livePod()},
			want: "serviceaccount-gone"},
		{name: "pod finished", objs: []runtime.Object{liveSA(), livePod(func(p *corev1.Pod) { p.Status.Phase = corev1.PodSucceeded })}, want: "pod-gone"},
		{name: "pod on another node", objs: []runtime.Object{liveSA(), livePod()}, tok: saToken{node: "node-2"}, want: "pod-node"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			inf, client := fakeCluster(t, tc.objs...)
			rec := newRecorder()
			a, clk := newInformerAttestorClock(t, inf, k8s.Config{Metrics: rec})
			token := mint(t, epoch.Add(-tc.age), tc.tok)
			type result struct {
				id  attestor.Identity
				err error
			}
			done := make(chan result, 1)
			go func() {
				id, err := a.Attest(context.Background(), attestor.Credential{BearerToken: token})
				done <- result{id, err}
			}()
			if tc.waits {
				waiting(t, clk, done)
				change(t, client, tc.arrive, tc.replace)
				if tc.want != "" {
					// End the wait.
					clk.Advance(k8s.CatchUpWait)
				}
			}
			var r result
			select {
			case r = <-done:
			case <-time.After(10 * time.Second):
				t.Fatal("Attest did not return: it waits on the fake clock, which no one advances")
			}
			if tc.want == "" {
				if r.err != nil || r.id.ID != sa("foo", "bar") {
					t.Fatalf("Attest() = %v, %v; want foo/bar", r.id.ID, r.err)
				}
				return
			}
			if !errors.Is(r.err, attestor.ErrUnauthenticated) {
				t.Fatalf("Attest() = %v, %v; want Unauthenticated", r.id.ID, r.err)
			}
			if rec.refusals(tc.want) != 1 {
				t.Errorf("Refused(%q) counted %d times, want 1", tc.want, rec.refusals(tc.want))
			}
		})
	}
}

// TestInformerCatchUpCanceled: a request that ends while its check waits
// for the caches gets its context's error, not a refusal.
func TestInformerCatchUpCanceled(t *testing.T) {
	inf, _ := fakeCluster(t, liveSA())
	rec := newRecorder()
	a, clk := newInformerAttestorClock(t, inf, k8s.Config{Metrics: rec})
	tok := mint(t, epoch, saToken{})
	err := cancelWhileWaiting(t, clk, func(ctx context.Context) error {
		_, err := a.Attest(ctx, attestor.Credential{BearerToken: tok})
		return err
	})
	if !errors.Is(err, context.Canceled) || errors.Is(err, attestor.ErrUnauthenticated) {
		t.Fatalf("Attest() = %v, want context.Canceled", err)
	}
	if n := rec.refusals("pod-gone"); n != 0 {
		t.Errorf("Refused(pod-gone) counted %d times, want 0", n)
	}
}
