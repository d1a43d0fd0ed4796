package kube

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

// Audiences of every minted token: meshca's default and Istio's, so the
// same token is good for each server under test.
var Audiences = []string{"meshca", "istio-ca"}

// tokenTTL is the lifetime of minted tokens (the API's minimum is 10 min).
const tokenTTL = time.Hour

// CreateServiceAccounts creates namespace ns and the ServiceAccounts names
// in it.
func (e *Env) CreateServiceAccounts(ctx context.Context, ns string, names []string) error {
	_, err := e.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("kube: namespace %s: %w", ns, err)
	}
	return parallel(len(names), func(i int) error {
		_, err := e.Client.CoreV1().ServiceAccounts(ns).Create(ctx,
			&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: names[i]}}, metav1.CreateOptions{})
		if err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("kube: service account %s/%s: %w", ns, names[i], err)
		}
		return nil
	})
}

// Tokens mints perSA fresh tokens (TokenRequest API, Audiences, one hour)
// for each ServiceAccount ns/names[i]: tokens[i][j].
func (e *Env) Tokens(ctx context.Context, ns string, names []string, perSA int) ([][]string, error) {
	toks := make([][]string, len(names))
	for i := range toks {
		toks[i] = make([]string, perSA)
	}
	secs := int64(tokenTTL / time.Second)
	err := parallel(len(names)*perSA, func(n int) error {
		i, j := n/perSA, n%perSA
		resp, err := e.Client.CoreV1().ServiceAccounts(ns).CreateToken(ctx, names[i], &authenticationv1.TokenRequest{
			Spec: authenticationv1.TokenRequestSpec{Audiences: Audiences, ExpirationSeconds: &secs},
		}, metav1.CreateOptions{})
		if err != nil {
			return fmt.Errorf("kube: token for %s/%s: %w", ns, names[i], err)
		}
		toks[i][j] = resp.Status.Token
		return nil
	})
	return toks, err
}

// parallel runs f(0..n-1) on 16 workers and returns the first error.
func parallel(n int, f func(int) error) error {
	var (
		wg    sync.WaitGroup
		once  sync.Once
		first error
		next  = make(chan int)
	)
	for range 16 {
		wg.Go(func() {
			for i := range next {
				if err := f(i); err != nil {
					once.Do(func() { first = err })
				}
			}
		})
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	return first
}

// RequestCounts sums the API server's apiserver_request_total by resource
// (subresources and non-resource paths under their own names).
func (e *Env) RequestCounts(ctx context.Context) (map[string]float64, error) {
	b, err := e.Client.CoreV1().RESTClient().Get().AbsPath("/metrics").DoRaw(ctx)
	if err != nil {
		return nil, fmt.Errorf("kube: metrics: %w", err)
	}
	return parseRequestTotals(string(b)), nil
}

// parseRequestTotals reads the Prometheus text lines of
// apiserver_request_total{...} and sums their values by the resource label
// (empty for non-resource requests such as /metrics itself).
func parseRequestTotals(text string) map[string]float64 {
	out := map[string]float64{}
	for _, line := range strings.Split(text, "\n") {
		rest, ok := strings.CutPrefix(line, "apiserver_request_total{")
		if !ok {
			continue
		}
		end := strings.LastIndexByte(rest, '}')
		if end < 0 {
			continue
		}
		var v float64
		if _, err := fmt.Sscan(strings.TrimSpace(rest[end+1:]), &v); err != nil {
			continue
		}
		out[label(rest[:end], "resource")] += v
	}
	return out
}

// label returns the value of name in a Prometheus label list.
func label(labels, name string) string {
	for _, kv := range strings.Split(labels, `",`) {
		if v, ok := strings.CutPrefix(kv, name+`="`); ok {
			return strings.TrimSuffix(v, `"`)
		}
	}
	return ""
}

// FetchJWKS returns the API server's service-account key set
// (/openid/v1/jwks), read with the credentials of kubeconfig.
func FetchJWKS(ctx context.Context, kubeconfig string) ([]byte, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, err
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	return cs.CoreV1().RESTClient().Get().AbsPath("/openid/v1/jwks").DoRaw(ctx)
}
