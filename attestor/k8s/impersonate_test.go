package k8s_test

import (
	"context"
	"errors"
	"maps"
	"slices"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"

	"github.com/meshca/meshca/attestor"
	"github.com/meshca/meshca/attestor/k8s"
	"github.com/meshca/meshca/internal/clock/clocktest"
)

// ztunnelPod is the node agent's pod, Running on node-1, as ztunnel's
// caller identity below names it.
func ztunnelPod(mod ...func(*corev1.Pod)) *corev1.Pod {
	return livePod(append([]func(*corev1.Pod){func(p *corev1.Pod) {
		p.Namespace, p.Name, p.UID, p.Spec.ServiceAccountName = "istio-system", "ztunnel-abc", "zt-uid-1", "ztunnel"
	}}, mod...)...)
}

// workload is a pod of ServiceAccount ns/sa on node, Pending as a pod
// whose certificate ztunnel asks for while it starts.
func workload(ns, name, sa, node string, mod ...func(*corev1.Pod)) *corev1.Pod {
	return livePod(append([]func(*corev1.Pod){func(p *corev1.Pod) {
		p.Namespace, p.Name, p.UID, p.Spec.ServiceAccountName, p.Spec.NodeName = ns, name, types.UID("uid-"+name), sa, node
		p.Status.Phase = corev1.PodPending
	}}, mod...)...)
}

// ztunnelCaller is the identity the informer mode proves for ztunnel's
// pod-bound token.
func ztunnelCaller(mod ...func(*attestor.Identity)) attestor.Identity {
	id := attestor.Identity{
		ID: sa("istio-system", "ztunnel"), Kind: k8s.KindInformer, Subject: "system:serviceaccount:istio-system:ztunnel",
		Details: map[string]string{k8s.DetailPodName: "ztunnel-abc", k8s.DetailPodUID: "zt-uid-1", k8s.DetailServiceAccountUID: "sa-uid-z"},
	}
	for _, m := range mod {
		m(&id)
	}
	return id
}

// TestNodeAuthorizer is the impersonation decision table: istiod's node
// authorizer (security/pkg/server/ca/node_auth.go) with meshca's stricter
// caller checks; every refusal is the same opaque error, the reason is
// counted.
func TestNodeAuthorizer(t *testing.T) {
	onNode1 := []runtime.Object{ztunnelPod(), workload("foo", "bar-1", "bar", "node-1")}
	trusted := []string{"istio-system/ztunnel"}
	tests := []struct {
		name       string
		objs       []runtime.Object
		trusted    []string
		noCaches   bool
		allow      []string
		caller     attestor.Identity
		requested  string
		wantReason string
		waits      bool // for the caches, which a watch event could mend
	}{
		{name: "pod of the ServiceAccount on the caller's node", objs: onNode1, wantReason: "ok"},
		{name: "terminating pod of the ServiceAccount on the node still counts", objs: []runtime.Object{ztunnelPod(),
			workload("foo", "bar-1", "bar", "node-1", func(p *corev1.Pod) { terminating(&p.ObjectMeta) })}, wantReason: "ok"},
		{name: "ServiceAccount's pod on another node", objs: []runtime.Object{ztunnelPod(), workload("foo", "bar-1", "bar", "node-2")},
			wantReason: "not-on-node", waits: true},
		{name: "no pod of the ServiceAccount anywhere", objs: []runtime.Object{ztunnelPod(), workload("foo", "other-1", "other", "node-1")},
			wantReason: "not-on-node", waits: true},
		{name: "same ServiceAccount name, other namespace", objs: []runtime.Object{ztunnelPod(), workload("elsewhere", "bar-1", "bar", "node-1")},
			wantReason: "not-on-node", waits: true},
		{name: "ServiceAccount's pod on the node has finished", objs: []runtime.Object{ztunnelPod(),
			workload("foo", "bar-1", "bar", "node-1", func(p *corev1.Pod) { p.Status.Phase = corev1.PodSucceeded })}, wantReason: "not-on-node", waits: true},
		{name: "ServiceAccount's pod on the node failed", objs: []runtime.Object{ztunnelPod(),
			workload("foo", "bar-1", "bar", "node-1", func(p *corev1.Pod) { p.Status.Phase = corev1.PodFailed })}, wantReason: "not-on-node", waits: true},
		{name: "caller not a trusted node account", objs: onNode1, trusted: []string{"istio-system/other"}, wantReason: "untrusted"},
		{name: "no trusted node accounts", objs: onNode1, trusted: []string{}, wantReason: "not-configured"},
		{name: "mode without pod caches", objs: onNode1, noCaches: true, wantReason: "no-pod-cache"},
		{name: "caller proved by a TokenReview", objs: onNode1, caller: ztunnelCaller(func(i *attestor.Identity) { i.Kind = k8s.KindTokenReview }),
			wantReason: "untrusted"},
		{name: "caller renewing over mTLS", objs: onNode1, caller: attestor.Identity{ID: sa("istio-system", "ztunnel"), Kind: "mtls", Subject: "serial 1"},
			wantReason: "untrusted"},
		{name: "caller token not bound to a pod", objs: onNode1, caller: ztunnelCaller(func(i *attestor.Identity) {
			i.Details = map[string]string{k8s.DetailServiceAccountUID: "sa-uid-z"}
		}), wantReason: "caller-pod"},
		{name: "caller pod UID mismatch", objs: onNode1, caller: ztunnelCaller(func(i *attestor.Identity) { i.Details[k8s.DetailPodUID] = "zt-uid-0" }),
			wantReason: "caller-pod"},
		{name: "caller pod gone", objs: []runtime.Object{workload("foo", "bar-1", "bar", "node-1")}, wantReason: "caller-pod"},
		{name: "caller pod runs as another ServiceAccount", objs: []runtime.Object{
			ztunnelPod(func(p *corev1.Pod) { p.Spec.ServiceAccountName = "other" }), workload("foo", "bar-1", "bar", "node-1"),
		}, wantReason: "caller-pod"},
		{name: "caller pod not Running", objs: []runtime.Object{
			ztunnelPod(func(p *corev1.Pod) { p.Status.Phase = corev1.PodPending }), workload("foo", "bar-1", "bar", "node-1"),
		}, wantReason: "caller-pod", waits: true},
		{name: "caller pod finished", objs: []runtime.Object{
			ztunnelPod(func(p *corev1.Pod) { p.Status.Phase = corev1.PodFailed }), workload("foo", "bar-1", "bar", "node-1"),
		}, wantReason: "caller-pod"},
		{name: "caller pod terminating", objs: []runtime.Object{
			ztunnelPod(func(p *corev1.Pod) { terminating(&p.ObjectMeta) }), workload("foo", "bar-1", "bar", "node-1"),
		}, wantReason: "caller-pod"},
		{name: "requested identity not a SPIFFE ID", objs: onNode1, requested: "foo/bar", wantReason: "malformed"},
		{name: "requested identity empty", objs: onNode1, requested: " ", wantReason: "malformed"},
		{name: "requested identity of another trust domain", objs: onNode1, requested: "spiffe://other.org/ns/foo/sa/bar", wantReason: "malformed"},
		{name: "requested identity not ns/sa", objs: onNode1, requested: "spiffe://example.org/ns/foo/sa/bar/extra", wantReason: "malformed"},
		{name: "requested identity a bare path", objs: onNode1, requested: "spiffe://example.org/workload", wantReason: "malformed"},
		{name: "requested identity in a denied namespace", objs: []runtime.Object{ztunnelPod(), workload("kube-system", "dns-1", "coredns", "node-1")},
			requested: "spiffe://example.org/ns/kube-system/sa/coredns", wantReason: "denied"},
		{name: "requested identity outside the allow list", objs: onNode1, allow: []string{"istio-system", "team-*"}, wantReason: "denied"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			inf, _ := fakeCluster(t, tc.objs...)
			if tc.noCaches {
				inf = nil
			}
			rec := newRecorder()
			if tc.trusted == nil {
				tc.trusted = trusted
			}
			clk := clocktest.New(epoch)
			na, err := k8s.NewNodeAuthorizer(k8s.NodeAuthorizerConfig{
				Config:              k8s.Config{TrustDomain: td, Allow: tc.allow, Metrics: rec, Clock: clk},
				TrustedNodeAccounts: tc.trusted, Informers: inf,
			})
			if err != nil {
				t.Fatal(err)
			}
			if tc.caller.ID.IsZero() {
				tc.caller = ztunnelCaller()
			}
			if tc.requested == "" {
				tc.requested = "spiffe://example.org/ns/foo/sa/bar"
			}
			id, waited, err := impersonate(t, na, clk, tc.caller, tc.requested)
			if waited != tc.waits {
				t.Errorf("waited for the caches: %v, want %v", waited, tc.waits)
			}
			if got := rec.impersonations(); !maps.Equal(got, map[string]int{tc.wantReason: 1}) {
				t.Errorf("Impersonation counted %v, want %s once", got, tc.wantReason)
			}
			if tc.wantReason != "ok" {
				if !errors.Is(err, attestor.ErrUnauthenticated) || !errors.Is(err, k8s.ErrImpersonationRefused) || !id.ID.IsZero() ||
					err.Error() != "attestor: unauthenticated: request impersonation authentication failure" {
					t.Fatalf("Impersonate() = %v, %v; want the one opaque refusal", id.ID, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Impersonate() = %v", err)
			}
			want := attestor.Identity{ID: sa("foo", "bar"), Kind: k8s.KindImpersonation, Subject: "system:serviceaccount:istio-system:ztunnel",
				Details: map[string]string{"impersonated-by": "spiffe://example.org/ns/istio-system/sa/ztunnel", "node": "node-1",
					"pod-name": "ztunnel-abc", "pod-uid": "zt-uid-1"}}
			if id.ID != want.ID || id.Kind != want.Kind || id.Subject != want.Subject || !maps.Equal(id.Details, want.Details) {
				t.Fatalf("Impersonate() = %+v, want %+v", id, want)
			}
		})
	}
}

// impersonate is na.Impersonate, with clk advanced past CatchUpWait when
// the check waits for the caches; waited says whether it did.
func impersonate(t *testing.T, na *k8s.NodeAuthorizer, clk *clocktest.Fake, caller attestor.Identity, requested string) (
	id attestor.Identity, waited bool, err error) {
	t.Helper()
	type result struct {
		id  attestor.Identity
		err error
	}
	done := make(chan result, 1)
	go func() {
		id, err := na.Impersonate(context.Background(), caller, requested)
		done <- result{id, err}
	}()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case r := <-done:
			return r.id, waited, r.err
		case <-deadline:
			t.Fatal("Impersonate did not return")
		case <-time.After(time.Millisecond):
			if clk.Waiters() > 0 {
				waited = true
				clk.Advance(k8s.CatchUpWait)
			}
		}
	}
}

// ztunnelAuthorizer is a node authorizer trusting istio-system/ztunnel,
// on inf's caches, with its metrics and its fake clock.
func ztunnelAuthorizer(t *testing.T, inf *k8s.Informers) (*k8s.NodeAuthorizer, *recorder, *clocktest.Fake) {
	t.Helper()
	rec := newRecorder()
	clk := clocktest.New(epoch)
	na, err := k8s.NewNodeAuthorizer(k8s.NodeAuthorizerConfig{Config: k8s.Config{TrustDomain: td, Metrics: rec, Clock: clk},
		TrustedNodeAccounts: []string{"istio-system/ztunnel"}, Informers: inf})
	if err != nil {
		t.Fatal(err)
	}
	return na, rec, clk
}

// TestNodeAuthorizerCatchUp: a request refused only because the caches
// have not seen a pod yet (the requested ServiceAccount's pod on the
// caller's node, the caller's pod Running) waits for them and is granted
// when the pod arrives; refused after CatchUpWait when nothing that mends
// it arrives.
func TestNodeAuthorizerCatchUp(t *testing.T) {
	tests := []struct {
		name    string
		objs    []runtime.Object // in the caches at the start
		arrive  []runtime.Object // created while the check waits
		replace []runtime.Object // updated while the check waits
		want    string           // the reason counted
		// byChange: the change decides it, granted or refused for a
		// reason no later event mends, without waiting out the wait.
		byChange bool
	}{
		{name: "pod of the ServiceAccount created on the node", objs: []runtime.Object{ztunnelPod()},
			arrive: []runtime.Object{workload("foo", "bar-1", "bar", "node-1")}, want: "ok", byChange: true},
		{name: "pod of the ServiceAccount bound to the node", objs: []runtime.Object{ztunnelPod(), workload("foo", "bar-1", "bar", "")},
			replace: []runtime.Object{workload("foo", "bar-1", "bar", "node-1")}, want: "ok", byChange: true},
		{name: "caller's pod seen Running", objs: []runtime.Object{ztunnelPod(func(p *corev1.Pod) { p.Status.Phase = corev1.PodPending }),
			workload("foo", "bar-1", "bar", "node-1")}, replace: []runtime.Object{ztunnelPod()}, want: "ok", byChange: true},
		{name: "pod of another ServiceAccount arrives", objs: []runtime.Object{ztunnelPod()},
			arrive: []runtime.Object{workload("foo", "other-1", "other", "node-1")}, want: "not-on-node"},
		{name: "pod of the ServiceAccount bound to another node", objs: []runtime.Object{ztunnelPod(), workload("foo", "bar-1", "bar", "")},
			replace: []runtime.Object{workload("foo", "bar-1", "bar", "node-2")}, want: "not-on-node"},
		{name: "caller's pod fails while Pending", objs: []runtime.Object{ztunnelPod(func(p *corev1.Pod) { p.Status.Phase = corev1.PodPending }),
			workload("foo", "bar-1", "bar", "node-1")}, replace: []runtime.Object{ztunnelPod(func(p *corev1.Pod) { p.Status.Phase = corev1.PodFailed })},
			want: "caller-pod", byChange: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			inf, client := fakeCluster(t, tc.objs...)
			na, rec, clk := ztunnelAuthorizer(t, inf)
			type result struct {
				id  attestor.Identity
				err error
			}
			done := make(chan result, 1)
			go func() {
				id, err := na.Impersonate(context.Background(), ztunnelCaller(), "spiffe://example.org/ns/foo/sa/bar")
				done <- result{id, err}
			}()
			waiting(t, clk, done)
			change(t, client, tc.arrive, tc.replace)
			var r result
			if tc.byChange {
				// Decided by the change alone: the clock never moves.
				select {
				case r = <-done:
				case <-time.After(10 * time.Second):
					t.Fatal("Impersonate still waits after the pod changed")
				}
			} else {
				// The change is seen (the informer's event handled)
				// before the wait ends: a pod the check then finds
				// wanting is refused only at the timeout.
				clocktest.Eventually(t, "the change in the cache", func() bool {
					for _, o := range slices.Concat(tc.arrive, tc.replace) {
						want := o.(*corev1.Pod)
						got := k8s.CachedPodForTest(inf, want.Namespace, want.Name)
						if got == nil || got.Spec.NodeName != want.Spec.NodeName || got.Status.Phase != want.Status.Phase {
							return false
						}
					}
					return true
				})
				select {
				case r := <-done:
					t.Fatalf("Impersonate() = %v, %v before the wait ended", r.id.ID, r.err)
				case <-time.After(20 * time.Millisecond):
				}
				clk.Advance(k8s.CatchUpWait)
				select {
				case r = <-done:
				case <-time.After(10 * time.Second):
					t.Fatal("Impersonate did not return at the end of the wait")
				}
			}
			switch {
			case tc.want == "ok" && (r.err != nil || r.id.ID != sa("foo", "bar")):
				t.Fatalf("Impersonate() = %v, %v; want foo/bar", r.id.ID, r.err)
			case tc.want != "ok" && !errors.Is(r.err, k8s.ErrImpersonationRefused):
				t.Fatalf("Impersonate() = %v, %v; want the opaque refusal", r.id.ID, r.err)
			}
			if got := rec.impersonations(); !maps.Equal(got, map[string]int{tc.want: 1}) {
				t.Errorf("Impersonation counted %v, want %s once", got, tc.want)
			}
		})
	}
}

// TestNodeAuthorizerCatchUpCanceled: a request that ends while the check
// waits for the caches gets its context's error, neither granted nor
// refused (nothing counted).
func TestNodeAuthorizerCatchUpCanceled(t *testing.T) {
	inf, _ := fakeCluster(t, ztunnelPod())
	na, rec, clk := ztunnelAuthorizer(t, inf)
	err := cancelWhileWaiting(t, clk, func(ctx context.Context) error {
		_, err := na.Impersonate(ctx, ztunnelCaller(), "spiffe://example.org/ns/foo/sa/bar")
		return err
	})
	if !errors.Is(err, context.Canceled) || errors.Is(err, k8s.ErrImpersonationRefused) {
		t.Fatalf("Impersonate() = %v, want context.Canceled", err)
	}
	if got := rec.impersonations(); len(got) != 0 {
		t.Errorf("Impersonation counted %v, want nothing", got)
	}
}

// TestCatchUpMaxWaiting: at most CatchUpMaxWaiting checks wait for the
// caches at once, whether the informer mode's or the node authorizer's;
// past that a check is decided at once, without waiting.
func TestCatchUpMaxWaiting(t *testing.T) {
	inf, _ := fakeCluster(t, ztunnelPod(), liveSA())
	na, rec, clk := ztunnelAuthorizer(t, inf)
	a, aclk := newInformerAttestorClock(t, inf, k8s.Config{Metrics: rec})
	young := mint(t, epoch, saToken{}) // its pod is not in the caches
	done := make(chan error, k8s.CatchUpMaxWaiting)
	for i := range k8s.CatchUpMaxWaiting {
		go func() {
			var err error
			if i%2 == 0 {
				_, err = na.Impersonate(context.Background(), ztunnelCaller(), "spiffe://example.org/ns/foo/sa/bar")
			} else {
				_, err = a.Attest(context.Background(), attestor.Credential{BearerToken: young})
			}
			done <- err
		}()
	}
	clocktest.Eventually(t, "every check waiting", func() bool { return clk.Waiters()+aclk.Waiters() == k8s.CatchUpMaxWaiting })
	// One more of each: decided at once, no clock moved (one that waited
	// would end only with its context).
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := na.Impersonate(ctx, ztunnelCaller(), "spiffe://example.org/ns/foo/sa/bar"); !errors.Is(err, k8s.ErrImpersonationRefused) {
		t.Fatalf("Impersonate() past the bound = %v, want the refusal at once", err)
	}
	if _, err := a.Attest(ctx, attestor.Credential{BearerToken: young}); !errors.Is(err, attestor.ErrUnauthenticated) {
		t.Fatalf("Attest() past the bound = %v, want the refusal at once", err)
	}
	if n := clk.Waiters() + aclk.Waiters(); n != k8s.CatchUpMaxWaiting {
		t.Fatalf("%d checks wait, want %d", n, k8s.CatchUpMaxWaiting)
	}
	clk.Advance(k8s.CatchUpWait)
	aclk.Advance(k8s.CatchUpWait)
	for range k8s.CatchUpMaxWaiting {
		select {
		case err := <-done:
			if !errors.Is(err, attestor.ErrUnauthenticated) {
				t.Fatalf("a waiting check returned %v, want a refusal", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("a waiting check did not end with its wait")
		}
	}
}

// TestNodeAuthorizerConfig: trusted node accounts must be exact
// <namespace>/<serviceaccount> names.
func TestNodeAuthorizerConfig(t *testing.T) {
	for _, acct := range []string{"ztunnel", "istio-system/", "/ztunnel", "istio-*/ztunnel", "a/b/c", "Istio/ztunnel"} {
		_, err := k8s.NewNodeAuthorizer(k8s.NodeAuthorizerConfig{Config: k8s.Config{TrustDomain: td}, TrustedNodeAccounts: []string{acct}})
		if err == nil {
			t.Errorf("trusted node account %q accepted", acct)
		}
	}
	if _, err := k8s.NewNodeAuthorizer(k8s.NodeAuthorizerConfig{Config: k8s.Config{TrustDomain: td},
		TrustedNodeAccounts: []string{"istio-system/ztunnel", "kube-system/ztunnel.v2"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := k8s.NewNodeAuthorizer(k8s.NodeAuthorizerConfig{Config: k8s.Config{TrustDomain: spiffeid.TrustDomain{}}}); err == nil {
		t.Error("no trust domain accepted")
	}
}

// FuzzImpersonatedIdentity hands arbitrary ImpersonatedIdentity strings,
// as a caller sends them, to a node authorizer whose caches hold the
// trusted ztunnel's pod and a pod of foo/bar on its node. Exactly the
// SPIFFE ID spiffe://example.org/ns/foo/sa/bar is granted (a SPIFFE ID
// has one spelling); everything else is the one opaque refusal.
func FuzzImpersonatedIdentity(f *testing.F) {
	inf, _ := fakeCluster(f, ztunnelPod(), workload("foo", "bar-1", "bar", "node-1"))
	na, err := k8s.NewNodeAuthorizer(k8s.NodeAuthorizerConfig{Config: k8s.Config{TrustDomain: td}, TrustedNodeAccounts: []string{"istio-system/ztunnel"}, Informers: inf})
	if err != nil {
		f.Fatal(err)
	}
	for _, seed := range []string{"spiffe://example.org/ns/foo/sa/bar", "spiffe://example.org/ns/foo/sa/bar/", "spiffe://EXAMPLE.org/ns/foo/sa/bar",
		"spiffe://example.org/ns/foo/sa/bar?x", "spiffe://example.org//ns/foo/sa/bar", "spiffe://example.org/ns/foo/sa/%62ar", "", "spiffe://"} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, requested string) {
		id, err := na.Impersonate(context.Background(), ztunnelCaller(), requested)
		if requested == "spiffe://example.org/ns/foo/sa/bar" {
			if err != nil || id.ID != sa("foo", "bar") {
				t.Fatalf("Impersonate(%q) = %v, %v", requested, id.ID, err)
			}
			return
		}
		if err == nil || !errors.Is(err, k8s.ErrImpersonationRefused) || !id.ID.IsZero() {
			t.Fatalf("Impersonate(%q) = %v, %v; want the opaque refusal", requested, id.ID, err)
		}
	})
}
