package k8s_test

import (
	"cmp"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"maps"
	"slices"
	"sync"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/meshca/meshca/attestor/jwks"
	"github.com/meshca/meshca/attestor/k8s"
	"github.com/meshca/meshca/internal/clock/clocktest"
)

var (
	td    = spiffeid.RequireTrustDomainFromString("example.org")
	epoch = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
)

// signingKey is the cluster's service-account key; generated once.
var signingKey = sync.OnceValue(func() *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		panic(err)
	}
	return k
})

const kid = "sa-key-1"

// saToken describes a projected ServiceAccount token.
type saToken struct {
	issuer    string        // default k8s.DefaultIssuer
	subject   string        // default system:serviceaccount:<namespace>:<sa>
	namespace string        // default foo
	sa        string        // default bar
	audiences []string      // default ["meshca"]
	ttl       time.Duration // exp - now; default 1h; negative: no exp
	noPod     bool
	serial    int    // distinguishes otherwise identical tokens
	saUID     string // default sa-uid-1
	podName   string // default pod-1
	podUID    string // default pod-uid-1
	node      string // node claim's name; empty: no node claim
	secret    string // secret claim's name (a Secret-bound token); empty: none
}

// mint signs tok as the cluster would, issued at now.
func mint(tb testing.TB, now time.Time, tok saToken) string {
	tb.Helper()
	if tok.issuer == "" {
		tok.issuer = k8s.DefaultIssuer
	}
	if tok.namespace == "" {
		tok.namespace = "foo"
	}
	if tok.sa == "" {
		tok.sa = "bar"
	}
	if tok.subject == "" {
		tok.subject = "system:serviceaccount:" + tok.namespace + ":" + tok.sa
	}
	if tok.audiences == nil {
		tok.audiences = []string{"meshca"}
	}
	if tok.ttl == 0 {
		tok.ttl = time.Hour
	}
	claims := jwt.Claims{
		Issuer:    tok.issuer,
		Subject:   tok.subject,
		Audience:  jwt.Audience(tok.audiences),
		IssuedAt:  jwt.NewNumericDate(now),
		NotBefore: jwt.NewNumericDate(now),
	}
	if tok.ttl > 0 {
		claims.Expiry = jwt.NewNumericDate(now.Add(tok.ttl))
	}
	k8sClaims := map[string]any{
		"namespace":      tok.namespace,
		"serviceaccount": map[string]string{"name": tok.sa, "uid": cmp.Or(tok.saUID, "sa-uid-1")},
	}
	if !tok.noPod {
		k8sClaims["pod"] = map[string]string{"name": cmp.Or(tok.podName, "pod-1"), "uid": cmp.Or(tok.podUID, "pod-uid-1")}
	}
	if tok.node != "" {
		k8sClaims["node"] = map[string]string{"name": tok.node, "uid": "node-uid-1"}
	}
	if tok.secret != "" {
		k8sClaims["secret"] = map[string]string{"name": tok.secret, "uid": "secret-uid-1"}
	}
	extra := map[string]any{"kubernetes.io": k8sClaims, "serial": tok.serial}
	sig, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: signingKey()},
		(&jose.SignerOptions{}).WithType("JWT").WithHeader(jose.HeaderKey("kid"), kid))
	if err != nil {
		tb.Fatal(err)
	}
	s, err := jwt.Signed(sig).Claims(claims).Claims(extra).Serialize()
	if err != nil {
		tb.Fatal(err)
	}
	return s
}

// staticKeys is the cluster's JWKS, served from memory.
func staticKeys(tb testing.TB, clk *clocktest.Fake) *jwks.KeySet {
	tb.Helper()
	doc, err := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: signingKey().Public(), KeyID: kid, Algorithm: "ES256", Use: "sig"}}})
	if err != nil {
		tb.Fatal(err)
	}
	return jwks.NewKeySet(jwks.KeySetConfig{Fetch: func(context.Context) ([]byte, error) { return doc, nil }, Clock: clk})
}

// recorder is a k8s.Metrics that remembers what it saw.
type recorder struct {
	mu        sync.Mutex
	reviews   map[string]int
	hits      int
	negHits   int
	verHits   int
	inFlight  int
	throttled int
	refused   map[string]int
	lookups   map[string]int
	renewals  map[string]int
	imperson  map[string]int
}

func newRecorder() *recorder {
	return &recorder{reviews: map[string]int{}, refused: map[string]int{}, lookups: map[string]int{}, renewals: map[string]int{}, imperson: map[string]int{}}
}

func (r *recorder) NegativeCacheHit() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.negHits++
}

func (r *recorder) VerifiedCacheHit() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.verHits++
}

func (r *recorder) ReviewsInFlight(n int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.inFlight = n
}

func (r *recorder) Throttled() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.throttled++
}

func (r *recorder) ServiceAccountLookup(result string, _ time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.lookups[result]++
}

func (r *recorder) Renewal(result string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.renewals[result]++
}

// count returns a counter by name: "negative-hits" or "throttled".
func (r *recorder) count(what string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch what {
	case "negative-hits":
		return r.negHits
	case "throttled":
		return r.throttled
	case "verified-hits":
		return r.verHits
	}
	panic("recorder: unknown counter " + what)
}

func (r *recorder) lookupCount(result string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.lookups[result]
}

func (r *recorder) renewalCount(result string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.renewals[result]
}

func (r *recorder) Review(result string, _ time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.reviews[result]++
}

func (r *recorder) CacheHit() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.hits++
}

func (r *recorder) Refused(reason string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.refused[reason]++
}

func (r *recorder) Impersonation(result string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.imperson[result]++
}

// impersonations returns the impersonations counted by result.
func (r *recorder) impersonations() map[string]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return maps.Clone(r.imperson)
}

func (r *recorder) cacheHits() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.hits
}

func (r *recorder) refusals(reason string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.refused[reason]
}

// waiting returns once a check waits on clk, and fails the test at once if
// the check returned on done instead, decided without waiting.
func waiting[T any](t *testing.T, clk *clocktest.Fake, done <-chan T) {
	t.Helper()
	deadline := time.After(30 * time.Second)
	for clk.Waiters() == 0 {
		select {
		case r := <-done:
			t.Fatalf("the check returned %+v without waiting for the caches", r)
		case <-deadline:
			t.Fatal("the check neither waits nor returns")
		case <-time.After(time.Millisecond):
		}
	}
}

// cancelWhileWaiting runs call, ends its context once it waits for the
// caches, and returns what it returned.
func cancelWhileWaiting(t *testing.T, clk *clocktest.Fake, call func(context.Context) error) error {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- call(ctx) }()
	waiting(t, clk, done)
	cancel()
	select {
	case err := <-done:
		return err
	case <-time.After(10 * time.Second):
		t.Fatal("the check did not return when its context ended")
		return nil
	}
}

// change creates the ServiceAccounts and Pods of arrive, then updates
// those of replace, in the fake cluster.
func change(t *testing.T, client *fake.Clientset, arrive, replace []runtime.Object) {
	t.Helper()
	ctx := context.Background()
	for _, o := range slices.Concat(arrive, replace) {
		create := slices.Contains(arrive, o)
		var err error
		switch o := o.(type) {
		case *corev1.ServiceAccount:
			err = apply(ctx, client.CoreV1().ServiceAccounts(o.Namespace), o, create)
		case *corev1.Pod:
			err = apply(ctx, client.CoreV1().Pods(o.Namespace), o, create)
		default:
			t.Fatalf("change: %T", o)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

// apply creates o, or updates it, through c.
func apply[T any](ctx context.Context, c interface {
	Create(context.Context, T, metav1.CreateOptions) (T, error)
	Update(context.Context, T, metav1.UpdateOptions) (T, error)
}, o T, create bool) error {
	var err error
	if create {
		_, err = c.Create(ctx, o, metav1.CreateOptions{})
	} else {
		_, err = c.Update(ctx, o, metav1.UpdateOptions{})
	}
	return err
}
