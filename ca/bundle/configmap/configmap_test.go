package configmap_test

import (
	"context"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/meshca/meshca/ca/bundle"
	"github.com/meshca/meshca/ca/bundle/configmap"
	"github.com/meshca/meshca/ca/bundle/internal/bundletest"
	"github.com/meshca/meshca/internal/clock/clocktest"
	"github.com/meshca/meshca/internal/kubeenv"
)

// These tests run against a real kube-apiserver (make testenv). They share
// it, so each publishes a ConfigMap of its own name.
func TestMain(m *testing.M) { kubeenv.Main(m) }

// publisher runs a Publisher for cfg until the test ends. Its fake clock
// drives the poll: tick lets one poll pass.
type publisher struct {
	*configmap.Publisher
	src     *bundletest.Source
	clk     *clocktest.Fake
	metrics *bundletest.Metrics
	logs    *bundletest.Logs
	stop    func()
}

func start(t *testing.T, client kubernetes.Interface, cfg configmap.Config, pem []byte) *publisher {
	t.Helper()
	p := &publisher{src: bundletest.NewSource(pem), clk: clocktest.New(time.Now()), metrics: &bundletest.Metrics{}}
	cfg.Client, cfg.Source, cfg.Clock, cfg.Metrics = client, p.src, p.clk, p.metrics
	cfg.Logger, p.logs = bundletest.Logger()
	var err error
	if p.Publisher, err = configmap.New(cfg); err != nil {
		t.Fatal(err)
	}
	p.stop = bundletest.Run(t, p.Run)
	return p
}

// change replaces the bundle and lets the poll see it.
func (p *publisher) change(t *testing.T, pem []byte) {
	p.src.Set(pem)
	clocktest.Eventually(t, "poll waiting", func() bool { return p.clk.Waiters() > 0 })
	p.clk.Advance(bundle.DefaultSyncInterval)
}

func createNamespace(t *testing.T, client kubernetes.Interface, name string) {
	t.Helper()
	_, err := client.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
}

func get(t *testing.T, client kubernetes.Interface, ns, name string) *corev1.ConfigMap {
	t.Helper()
	cm, err := client.CoreV1().ConfigMaps(ns).Get(context.Background(), name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	return cm
}

// holds reports whether ns's ConfigMap name is meshca's and holds pem.
func holds(t *testing.T, client kubernetes.Interface, ns, name string, pem []byte) bool {
	cm := get(t, client, ns, name)
	return cm != nil && cm.Data[configmap.Key] == string(pem) && cm.Labels[bundle.ManagedByLabel] == bundle.ManagedBy
}

func waitHolds(t *testing.T, client kubernetes.Interface, ns, name string, pem []byte) {
	t.Helper()
	clocktest.Eventually(t, "ConfigMap "+ns+"/"+name+" holds the bundle", func() bool { return holds(t, client, ns, name, pem) })
}

// TestEveryNamespace: the ConfigMap appears in every existing namespace
// (the API server's own included) and in a new one; an edited one is
// repaired, keeping keys someone added; a deleted one is recreated; a
// bundle change reaches every namespace; a publisher stopped and started
// again (as a leader elector would) catches up.
func TestEveryNamespace(t *testing.T) {
	env := kubeenv.Get(t)
	c := env.Client
	name, run := bundletest.Unique("every-ns-root-cert"), bundletest.Unique("every")
	ns1, ns2, ns3 := run+"-1", run+"-2", run+"-3"
	for _, ns := range []string{ns1, ns2} {
		createNamespace(t, c, ns)
	}
	pem1, _ := bundletest.Root(t, "root 1")
	p := start(t, c, configmap.Config{Name: name}, pem1)
	for _, ns := range []string{ns1, ns2, "default", "kube-system"} {
		waitHolds(t, c, ns, name, pem1)
	}
	// The publisher records the time once its writes have returned, which
	// may be after the objects are seen.
	clocktest.Eventually(t, "a publish time recorded", func() bool {
		return !p.metrics.LastPublished(bundle.TargetConfigMap).IsZero()
	})

	createNamespace(t, c, ns3)
	waitHolds(t, c, ns3, name, pem1)

	ctx := context.Background()
	cm := get(t, c, ns1, name)
	cm.Data[configmap.Key] = "edited"
	cm.Data["extra"] = "kept"
	if _, err := c.CoreV1().ConfigMaps(ns1).Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitHolds(t, c, ns1, name, pem1)
	if got := get(t, c, ns1, name).Data["extra"]; got != "kept" {
		t.Errorf("a key someone added was dropped: %q", got)
	}
	if err := c.CoreV1().ConfigMaps(ns2).Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitHolds(t, c, ns2, name, pem1)

	_, root2 := bundletest.Root(t, "root 2")
	pem2 := append(append([]byte{}, pem1...), bundletest.PEM(root2)...)
	p.change(t, pem2)
	all, err := c.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, ns := range all.Items {
		if ns.Status.Phase != corev1.NamespaceTerminating {
			waitHolds(t, c, ns.Name, name, pem2)
		}
	}

	p.stop()
	if err := c.CoreV1().ConfigMaps(ns3).Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	restarted := make(chan error, 1)
	ctx2, cancel := context.WithCancel(ctx)
	go func() { restarted <- p.Run(ctx2) }()
	waitHolds(t, c, ns3, name, pem2)
	cancel()
	if err := <-restarted; err != nil {
		t.Errorf("Run again: %v", err)
	}
}

// TestForeignConfigMap: a ConfigMap of the bundle's name that is not
// labelled as meshca's is left alone, through bundle changes, and logged
// and counted once; deleted by its owner, meshca's takes its place. Only
// the selected namespaces get the ConfigMap.
func TestForeignConfigMap(t *testing.T) {
	env := kubeenv.Get(t)
	c := env.Client
	ctx := context.Background()
	name, run := bundletest.Unique("foreign-root-cert"), bundletest.Unique("foreign")
	ns1, ns2, other := run+"-1", run+"-2", bundletest.Unique("unselected")
	for _, ns := range []string{ns1, ns2, other} {
		createNamespace(t, c, ns)
	}
	theirs := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns1}, Data: map[string]string{configmap.Key: "theirs"}}
	if _, err := c.CoreV1().ConfigMaps(ns1).Create(ctx, theirs, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pem1, _ := bundletest.Root(t, "root 1")
	p := start(t, c, configmap.Config{Name: name, Namespaces: []string{run + "-*"}}, pem1)
	waitHolds(t, c, ns2, name, pem1)
	clocktest.Eventually(t, "the foreign ConfigMap counted", func() bool { return p.metrics.ForeignCount(bundle.TargetConfigMap) == 1 })
	pem2, _ := bundletest.Root(t, "root 2")
	p.change(t, pem2)
	waitHolds(t, c, ns2, name, pem2)
	if got := get(t, c, ns1, name); got.Data[configmap.Key] != "theirs" || got.Labels[bundle.ManagedByLabel] != "" {
		t.Errorf("the foreign ConfigMap was written: %v %v", got.Labels, got.Data)
	}
	if got := get(t, c, other, name); got != nil {
		t.Error("a namespace outside --bundle-configmap-namespaces got the ConfigMap")
	}
	if n := strings.Count(p.logs.String(), "not meshca's: left alone"); n != 1 {
		t.Errorf("the foreign ConfigMap logged %d times, want once:\n%s", n, p.logs)
	}

	if err := c.CoreV1().ConfigMaps(ns1).Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitHolds(t, c, ns1, name, pem2)
	clocktest.Eventually(t, "no foreign ConfigMap counted", func() bool { return p.metrics.ForeignCount(bundle.TargetConfigMap) == 0 })
}

// TestTakeOverIstio: with the opt-in, an istio-ca-root-cert istiod wrote
// is overwritten and labelled as meshca's, its other labels and keys kept.
func TestTakeOverIstio(t *testing.T) {
	env := kubeenv.Get(t)
	c := env.Client
	ctx := context.Background()
	ns := bundletest.Unique("istio-takeover")
	createNamespace(t, c, ns)
	istiods := &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: configmap.IstioName, Namespace: ns, Labels: map[string]string{"istio.io/config": "true"}},
		Data:       map[string]string{configmap.Key: "istiod's root", "other": "kept"},
	}
	if _, err := c.CoreV1().ConfigMaps(ns).Create(ctx, istiods, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pem, _ := bundletest.Root(t, "root")
	start(t, c, configmap.Config{Name: configmap.IstioName, TakeOverIstio: true, Namespaces: []string{ns}}, pem)
	waitHolds(t, c, ns, configmap.IstioName, pem)
	got := get(t, c, ns, configmap.IstioName)
	if got.Labels["istio.io/config"] != "true" || got.Data["other"] != "kept" {
		t.Errorf("istiod's label or key lost: %v %v", got.Labels, got.Data)
	}
}

// TestNew: configurations that cannot work are refused.
func TestNew(t *testing.T) {
	src := bundletest.NewSource(nil)
	client := fake.NewClientset()
	for _, tc := range []struct {
		name string
		cfg  configmap.Config
		want string
	}{
		{"no client", configmap.Config{Source: src, Name: "x"}, "client and a source are required"},
		{"no name", configmap.Config{Client: client, Source: src}, "name is required"},
		{"bad name", configmap.Config{Client: client, Source: src, Name: "Root_Cert"}, `name "Root_Cert"`},
		{"take over another name", configmap.Config{Client: client, Source: src, Name: "meshca-root-cert", TakeOverIstio: true}, "needs the name istio-ca-root-cert"},
		{"bad pattern", configmap.Config{Client: client, Source: src, Name: "x", Namespaces: []string{"team-["}}, `pattern "team-["`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := configmap.New(tc.cfg); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New: %v, want %q", err, tc.want)
			}
		})
	}
}
