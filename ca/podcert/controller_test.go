package podcert_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	certificatesv1beta1 "k8s.io/api/certificates/v1beta1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/ca/podcert"
	"github.com/meshca/meshca/ca/store"
	"github.com/meshca/meshca/internal/clock/clocktest"
	"github.com/meshca/meshca/internal/storetest"
)

const signer = "meshca.io/spiffe"

var t0 = time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)

// fixture is a Controller on a fake clientset, with a CA on an in-memory
// store; the CA and the Controller share a fake clock.
type fixture struct {
	client  *fake.Clientset
	st      *storetest.Mem
	auth    *ca.Authority
	clk     *clocktest.Fake
	metrics *metrics
}

// newFixture starts a Controller, with its Config changed by mod, after
// calling prepare (to add reactors to the fake client: they may not be
// added while it is used); either may be nil. It returns once the
// Controller watches the requests (see watching).
func newFixture(t *testing.T, mod func(*podcert.Config), prepare func(*fixture)) *fixture {
	t.Helper()
	f := &fixture{client: fake.NewClientset(), st: storetest.NewMem(), clk: clocktest.New(t0), metrics: &metrics{}}
	f.auth = newAuthority(t, f.st, f.clk)
	if prepare != nil {
		prepare(f)
	}
	log, _ := logger()
	cfg := podcert.Config{Client: f.client, SignerName: signer, Authority: f.auth, Identities: admission(t),
		Clock: f.clk, Logger: log, Metrics: f.metrics}
	if mod != nil {
		mod(&cfg)
	}
	watched := watching(f.client)
	run(t, cfg)
	watched(t)
	return f
}

// watching makes c note when an informer opens its watch of the
// requests, and returns a wait for it. The fake clientset has no resource
// versions: a request created after the informer's list and before its
// watch opens is in neither, and is seen only at the resync five minutes
// later (client-go's examples/fake-client say so), so a test creates its
// requests only once the Controller watches. Call it before c is used.
func watching(c *fake.Clientset) (wait func(testing.TB)) {
	var open atomic.Bool
	c.PrependWatchReactor("podcertificaterequests", func(a k8stesting.Action) (bool, watch.Interface, error) {
		var opts metav1.ListOptions
		if w, ok := a.(k8stesting.WatchActionImpl); ok {
			opts = w.ListOptions
		}
		w, err := c.Tracker().Watch(a.GetResource(), a.GetNamespace(), opts)
		if err != nil {
			return true, nil, err
		}
		open.Store(true) // after the tracker has the watcher: every later create reaches it
		return true, w, nil
	})
	return func(t testing.TB) {
		t.Helper()
		clocktest.Eventually(t, "the controller watching requests", open.Load)
	}
}

func (f *fixture) create(t *testing.T, req *certificatesv1beta1.PodCertificateRequest) {
	t.Helper()
	if req.UID == "" {
		req.UID = types.UID("uid-" + req.Name)
	}
	if _, err := f.client.CertificatesV1beta1().PodCertificateRequests(req.Namespace).Create(context.Background(), req, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func get(t testing.TB, c kubernetes.Interface, req *certificatesv1beta1.PodCertificateRequest) *certificatesv1beta1.PodCertificateRequest {
	t.Helper()
	got, err := c.CertificatesV1beta1().PodCertificateRequests(req.Namespace).Get(context.Background(), req.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return got
}

// answered waits until req has a terminal condition and returns it.
func answered(t testing.TB, c kubernetes.Interface, req *certificatesv1beta1.PodCertificateRequest) *certificatesv1beta1.PodCertificateRequest {
	t.Helper()
	var got *certificatesv1beta1.PodCertificateRequest
	clocktest.Eventually(t, "request "+req.Name+" answered", func() bool {
		got = get(t, c, req)
		return condition(got) != nil
	})
	return got
}

var web = pod{ns: "shop", name: "web-0", sa: "web", node: "n1", uid: "pod-uid-1", saUID: "sa-uid-1", nodeUID: "node-uid-1"}

func int32p(v int32) *int32 { return &v }

// TestAnswers: what each request gets, by its key, annotations, namespace
// and maxExpirationSeconds.
func TestAnswers(t *testing.T) {
	f := newFixture(t, nil, nil)
	tests := []struct {
		name          string
		pod           pod
		key           string
		modify        func(*certificatesv1beta1.PodCertificateRequest)
		want, reason  string        // condition type and reason
		wantLife      time.Duration // for Issued
		wantInMessage string
	}{
		{name: "ECDSA P-256", key: keyP256, want: "Issued", reason: "Issued", wantLife: 24 * time.Hour},
		{name: "ECDSA P-384", key: keyP384, want: "Issued", reason: "Issued", wantLife: 24 * time.Hour},
		{name: "RSA 3072", key: keyRSA3072, want: "Issued", reason: "Issued", wantLife: 24 * time.Hour},
		{name: "Ed25519", key: keyEd25519, want: "Denied", reason: podcert.ReasonUnsupportedKeyType, wantInMessage: "ECDSAP256"},
		{name: "ECDSA P-521", key: keyP521, want: "Denied", reason: podcert.ReasonUnsupportedKeyType, wantInMessage: "ECDSAP256"},
		{name: "one hour asked", key: keyP256, want: "Issued", reason: "Issued", wantLife: time.Hour,
			modify: func(r *certificatesv1beta1.PodCertificateRequest) { r.Spec.MaxExpirationSeconds = int32p(3600) }},
		{name: "more than --max-ttl asked", key: keyP256, want: "Issued", reason: "Issued", wantLife: ca.DefaultMaxLeafTTL,
			modify: func(r *certificatesv1beta1.PodCertificateRequest) { r.Spec.MaxExpirationSeconds = int32p(91 * 86400) }},
		{name: "malformed key", key: keyP256, want: "Denied", reason: podcert.ReasonInvalidPublicKey,
			modify: func(r *certificatesv1beta1.PodCertificateRequest) {
				r.Spec.PKIXPublicKey = []byte{0x30, 0x03, 0x02, 0x01, 0x01}
			}},
		{name: "no key (a 1.36 kubelet's stub CSR)", key: keyP256, want: "Failed", reason: podcert.ReasonNoPublicKey, wantInMessage: "stubPKCS10Request",
			modify: func(r *certificatesv1beta1.PodCertificateRequest) { r.Spec.PKIXPublicKey = nil }},
		{name: "user annotations", key: keyP256, want: "Denied", reason: podcert.ReasonInvalidUserAnnotations, wantInMessage: "example.com/b",
			modify: func(r *certificatesv1beta1.PodCertificateRequest) {
				r.Spec.UnverifiedUserAnnotations = map[string]string{"example.com/b": "x", "example.com/a": "y"}
			}},
		{name: "denied namespace", pod: pod{ns: "kube-system", name: "dns-0", sa: "coredns", node: "n1", uid: "pod-uid-2"},
			key: keyP256, want: "Denied", reason: podcert.ReasonNotAllowed, wantInMessage: "kube-system/coredns"},
		{name: "ServiceAccount that makes no SPIFFE ID", pod: pod{ns: "shop", name: "odd-0", sa: "not valid", node: "n1", uid: "pod-uid-3"},
			key: keyP256, want: "Denied", reason: podcert.ReasonInvalidIdentity},
	}
	reqs := make([]*certificatesv1beta1.PodCertificateRequest, len(tests))
	for i, tt := range tests {
		p := tt.pod
		if p.ns == "" {
			p = web
		}
		reqs[i] = request(t, p, strings.ReplaceAll(strings.ToLower(tt.name), " ", "-"), signer, key(t, tt.key, false))
		if tt.modify != nil {
			tt.modify(reqs[i])
		}
		f.create(t, reqs[i])
	}
	issued := 0
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := answered(t, f.client, reqs[i])
			cond := condition(got)
			if cond.Type != tt.want || cond.Reason != tt.reason || !strings.Contains(cond.Message, tt.wantInMessage) {
				t.Fatalf("condition %s/%s %q, want %s/%s with %q", cond.Type, cond.Reason, cond.Message, tt.want, tt.reason, tt.wantInMessage)
			}
			if cond.Status != metav1.ConditionTrue || !cond.LastTransitionTime.Time.Equal(t0) {
				t.Errorf("condition %+v", cond)
			}
			if tt.want != "Issued" {
				if got.Status.CertificateChain != "" || got.Status.NotBefore != nil {
					t.Errorf("a %s request has a certificate", tt.want)
				}
				return
			}
			issued++
			checkIssued(t, f.auth, got, tt.wantLife, f.clk.Now())
		})
	}
	if n := numRecords(t, f.st); n != issued {
		t.Errorf("%d issuance records, want %d", n, issued)
	}
	// The metric is counted just after the status update the test saw.
	clocktest.Eventually(t, "the answers counted", func() bool {
		return f.metrics.count("issued", "") == issued && f.metrics.count("denied", podcert.ReasonUnsupportedKeyType) == 2
	})
}

// checkIssued checks an Issued status against the API server's rules and
// the CA: the chain (leaf, intermediate; no root) verifies to the CA's
// bundle with the pod's identity, the times are the leaf's, the lifetime
// is life, beginRefreshAt is at half life ± 5 %.
func checkIssued(t testing.TB, auth *ca.Authority, req *certificatesv1beta1.PodCertificateRequest, life time.Duration, now time.Time) {
	t.Helper()
	chain := chainOf(t, req.Status.CertificateChain)
	if len(chain) != 2 {
		t.Fatalf("chain of %d certificates, want leaf and intermediate", len(chain))
	}
	want := "spiffe://cluster.local/ns/" + req.Namespace + "/sa/" + req.Spec.ServiceAccountName
	id, _, err := x509svid.Verify(chain, auth.Bundle(), x509svid.WithTime(now))
	if err != nil || id.String() != want {
		t.Fatalf("chain verifies to %v (%v), want %s", id, err, want)
	}
	leaf := chain[0]
	s := req.Status
	switch {
	case !s.NotBefore.Time.Equal(leaf.NotBefore) || !s.NotAfter.Time.Equal(leaf.NotAfter):
		t.Errorf("status times %s–%s, leaf %s–%s", s.NotBefore, s.NotAfter, leaf.NotBefore, leaf.NotAfter)
	case leaf.NotAfter.Sub(leaf.NotBefore) != life:
		t.Errorf("lifetime %s, want %s", leaf.NotAfter.Sub(leaf.NotBefore), life)
	case now.Sub(leaf.NotBefore) > podcert.NotBeforeWindow || leaf.NotBefore.After(now):
		t.Errorf("notBefore %s, now %s", leaf.NotBefore, now)
	}
	refresh := s.BeginRefreshAt.Time.Sub(leaf.NotBefore)
	if refresh < life*45/100-time.Second || refresh > life*55/100 {
		t.Errorf("beginRefreshAt at %s of a %s life", refresh, life)
	}
}

// TestLeftAlone: requests of another signer, and requests already answered,
// are not touched, and nothing is signed for them. One worker takes the
// requests in the order they are made, so once the last one (ours) is
// answered the two before it have been looked at.
func TestLeftAlone(t *testing.T) {
	f := newFixture(t, func(c *podcert.Config) { c.Workers = 1 }, nil)
	other := request(t, web, "other-signer", "example.com/other", key(t, keyP256, false))
	f.create(t, other)
	done := request(t, web, "denied-already", signer, key(t, keyP256, false))
	done.Status.Conditions = []metav1.Condition{{Type: "Denied", Status: metav1.ConditionTrue, Reason: "ByHand", LastTransitionTime: metav1.NewTime(t0)}}
	f.create(t, done)
	ours := request(t, web, "ours", signer, key(t, keyP256, false))
	f.create(t, ours)
	answered(t, f.client, ours)
	if got := get(t, f.client, other); len(got.Status.Conditions) != 0 {
		t.Errorf("another signer's request answered: %+v", got.Status)
	}
	if got := get(t, f.client, done); len(got.Status.Conditions) != 1 || got.Status.Conditions[0].Reason != "ByHand" {
		t.Errorf("an answered request changed: %+v", got.Status)
	}
	if n := numRecords(t, f.st); n != 1 {
		t.Errorf("%d issuance records, want 1", n)
	}
}

// failUpdates makes the first n status updates of c fail with err.
func failUpdates(c *fake.Clientset, n int32, err error) *atomic.Int32 {
	var calls atomic.Int32
	c.PrependReactor("update", "podcertificaterequests", func(a k8stesting.Action) (bool, runtime.Object, error) {
		if a.GetSubresource() == "status" && calls.Add(1) <= n {
			return true, nil, err
		}
		return false, nil, nil
	})
	return &calls
}

// TestUpdateFailsThenResent: while the status update fails, the request
// is retried and gets the certificate signed the first time; one record.
func TestUpdateFailsThenResent(t *testing.T) {
	var calls *atomic.Int32
	f := newFixture(t, nil, func(f *fixture) { calls = failUpdates(f.client, 2, apierrors.NewServiceUnavailable("etcd is slow")) })
	req := request(t, web, "flaky", signer, key(t, keyP256, false))
	f.create(t, req)
	got := answered(t, f.client, req)
	checkIssued(t, f.auth, got, 24*time.Hour, f.clk.Now())
	if n := numRecords(t, f.st); n != 1 {
		t.Fatalf("%d issuance records, want 1", n)
	}
	if calls.Load() != 3 {
		t.Errorf("%d updates, want 3", calls.Load())
	}
	clocktest.Eventually(t, "one resend and two retries counted", func() bool { // just after the update seen
		return f.metrics.count("resent", "") == 1 && f.metrics.count("retry", "status-update") == 2
	})
	ans, err := f.st.IssuedRequest(context.Background(), "k8s-podcertificaterequest/"+string(req.UID))
	if err != nil || chainOf(t, got.Status.CertificateChain)[0].SerialNumber.Text(16) != ans.Serial {
		t.Errorf("the status's certificate is not the one recorded for the request (%v)", err)
	}
}

// TestResentTooLate: a certificate that could not be delivered within the
// API server's window for notBefore is not signed again: the request
// fails, and the kubelet asks anew.
func TestResentTooLate(t *testing.T) {
	var once sync.Once
	f := newFixture(t, nil, func(f *fixture) {
		f.client.PrependReactor("update", "podcertificaterequests", func(a k8stesting.Action) (bool, runtime.Object, error) {
			handled := false
			once.Do(func() {
				f.clk.Advance(5 * time.Minute) // the update took that long, and failed
				handled = true
			})
			if handled {
				return true, nil, apierrors.NewTimeoutError("update", 1)
			}
			return false, nil, nil
		})
	})
	req := request(t, web, "late", signer, key(t, keyP256, false))
	f.create(t, req)
	cond := condition(answered(t, f.client, req))
	if cond.Type != "Failed" || cond.Reason != podcert.ReasonIssuedTooLongAgo {
		t.Fatalf("condition %+v", cond)
	}
	if n := numRecords(t, f.st); n != 1 {
		t.Errorf("%d issuance records, want 1", n)
	}
}

// TestStatusRejected: when the API server refuses the Issued status as
// invalid, the request fails with the API server's reason.
func TestStatusRejected(t *testing.T) {
	invalid := apierrors.NewInvalid(schema.GroupKind{Group: "certificates.k8s.io", Kind: "PodCertificateRequest"}, "x",
		field.ErrorList{field.Invalid(field.NewPath("status", "notBefore"), "", "must be set to within 5 minutes of kube-apiserver's current time")})
	f := newFixture(t, nil, func(f *fixture) { failUpdates(f.client, 1, invalid) })
	req := request(t, web, "rejected", signer, key(t, keyP256, false))
	f.create(t, req)
	cond := condition(answered(t, f.client, req))
	if cond.Type != "Failed" || cond.Reason != podcert.ReasonStatusRejected || !strings.Contains(cond.Message, "within 5 minutes") {
		t.Fatalf("condition %+v", cond)
	}
}

// TestLifetimeTooShortForKubernetes: a --max-ttl under an hour cannot make
// a certificate Kubernetes accepts; nothing is signed.
func TestLifetimeTooShortForKubernetes(t *testing.T) {
	f := newFixture(t, func(c *podcert.Config) { c.MaxTTL = 30 * time.Minute }, nil)
	req := request(t, web, "short", signer, key(t, keyP256, false))
	f.create(t, req)
	if cond := condition(answered(t, f.client, req)); cond.Type != "Failed" || cond.Reason != podcert.ReasonLifetime {
		t.Fatalf("condition %+v", cond)
	}
	if n := numRecords(t, f.st); n != 0 {
		t.Errorf("%d issuance records, want 0", n)
	}
}

// TestIntermediateExpiringFails: a certificate cut short by the signing
// intermediate's end (its rotation overdue) lives under the hour Kubernetes
// needs: the request fails, saying why, and gets no certificate.
func TestIntermediateExpiringFails(t *testing.T) {
	f := newFixture(t, nil, nil)
	f.clk.Advance(ca.DefaultIntermediateTTL - 30*time.Minute) // nothing rotates it here
	req := request(t, web, "cut-short", signer, key(t, keyP256, false))
	f.create(t, req)
	got := answered(t, f.client, req)
	if cond := condition(got); cond.Type != "Failed" || cond.Reason != podcert.ReasonLifetime || !strings.Contains(cond.Message, "intermediate") {
		t.Fatalf("condition %+v", cond)
	}
	if got.Status.CertificateChain != "" {
		t.Error("a failed request has a certificate")
	}
}

// TestCAUnavailableRetried: while the store cannot record, the request
// waits and is retried, and is issued once the store is back.
func TestCAUnavailableRetried(t *testing.T) {
	st := &flakyStore{Mem: storetest.NewMem()}
	st.failing.Store(true)
	client := fake.NewClientset()
	clk := clocktest.New(t0)
	m := &metrics{}
	watched := watching(client)
	run(t, podcert.Config{Client: client, SignerName: signer, Authority: newAuthority(t, st, clk), Identities: admission(t), Clock: clk, Metrics: m})
	watched(t)
	ctx := context.Background()
	req := request(t, web, "waits", signer, key(t, keyP256, false))
	req.UID = "uid-waits"
	if _, err := client.CertificatesV1beta1().PodCertificateRequests(req.Namespace).Create(ctx, req, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	clocktest.Eventually(t, "a retry", func() bool { return m.count("retry", "signing") >= 2 })
	if got := get(t, client, req); condition(got) != nil {
		t.Fatalf("answered while the store fails: %+v", got.Status)
	}
	st.failing.Store(false)
	if cond := condition(answered(t, client, req)); cond.Type != "Issued" {
		t.Fatalf("condition %+v", cond)
	}
}

// flakyStore cannot record while failing is set.
type flakyStore struct {
	*storetest.Mem
	failing atomic.Bool
}

func (s *flakyStore) RecordIssuanceOnce(ctx context.Context, rec store.Issuance, req store.IssuedRequest) error {
	if s.failing.Load() {
		return fmt.Errorf("%w: disk full", store.ErrUnavailable)
	}
	return s.Mem.RecordIssuanceOnce(ctx, rec, req)
}

// TestNewRefuses: what New refuses.
func TestNewRefuses(t *testing.T) {
	ok := podcert.Config{Client: fake.NewClientset(), SignerName: signer, Authority: newAuthority(t, storetest.NewMem(), nil), Identities: admission(t)}
	for _, tc := range []struct {
		name   string
		modify func(*podcert.Config)
	}{
		{"no client", func(c *podcert.Config) { c.Client = nil }},
		{"no authority", func(c *podcert.Config) { c.Authority = nil }},
		{"no identities", func(c *podcert.Config) { c.Identities = nil }},
		{"no signer", func(c *podcert.Config) { c.SignerName = "" }},
		{"signer without a path", func(c *podcert.Config) { c.SignerName = "meshca.io" }},
		{"negative workers", func(c *podcert.Config) { c.Workers = -1 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := ok
			tc.modify(&cfg)
			if _, err := podcert.New(cfg); err == nil {
				t.Fatal("New succeeded")
			}
		})
	}
	if _, err := podcert.New(ok); err != nil {
		t.Fatal(err)
	}
}

// refusingAuthority refuses every request with err.
type refusingAuthority struct{ err error }

func (a refusingAuthority) SignOnce(context.Context, string, ca.SignRequest) (*ca.Issued, bool, error) {
	return nil, false, a.err
}

// TestSigningRefusedFails: a request the CA refuses to sign is Failed with
// SigningFailed (and counted so): the CA's reason when it is the request's
// fault, a pointer to the log (and nothing of the CA's internals) when it
// is not.
func TestSigningRefusedFails(t *testing.T) {
	tests := []struct {
		name    string
		err     error
		message string
	}{
		{"bad request", fmt.Errorf("%w: key too small", ca.ErrInvalidCSR), "key too small"},
		{"bad lifetime", fmt.Errorf("%w: over the intermediate", ca.ErrInvalidTTL), "over the intermediate"},
		{"identity mismatch", fmt.Errorf("%w: not yours", ca.ErrIdentityMismatch), "not yours"},
		{"internal", errors.New("validator: secret detail"), "its log says why"},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, func(c *podcert.Config) { c.Authority = refusingAuthority{tt.err} }, nil)
			req := request(t, web, fmt.Sprintf("refused-%d", i), signer, key(t, keyP256, false))
			f.create(t, req)
			cond := condition(answered(t, f.client, req))
			if cond.Type != "Failed" || cond.Reason != podcert.ReasonSigningFailed || !strings.Contains(cond.Message, tt.message) || strings.Contains(cond.Message, "secret detail") {
				t.Fatalf("condition %+v", cond)
			}
			clocktest.Eventually(t, "failed/SigningFailed counted", func() bool { return f.metrics.count("failed", podcert.ReasonSigningFailed) > 0 })
		})
	}
}
