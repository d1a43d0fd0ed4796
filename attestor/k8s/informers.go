package k8s

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corev1listers "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/meshca/meshca/internal/clock"
)

// Informers keeps the cluster's ServiceAccounts and Pods, of every
// namespace, in client-go shared informer caches: one list (streamed, on
// API servers that can) at Run, then a watch. A CSR or a renewal is then
// checked against memory, with no API call, and an object deleted is gone
// from the caches as soon as its watch event arrives.
//
// Each object is stripped, before it is cached, to what the binding checks
// read: name, namespace, UID, resource version and deletion timestamp, and
// for a pod its node, ServiceAccount and phase. A pod then takes about 1.6 KB of memory
// (object, strings and index entries, the node/ServiceAccount index
// included) where the full object takes several to tens of KB, so a
// cluster of 100,000 pods costs about 160 MB.
//
// meshca needs RBAC "list" and "watch" on serviceaccounts and pods in all
// namespaces.
type Informers struct {
	factory informers.SharedInformerFactory
	sas     corev1listers.ServiceAccountLister
	pods    corev1listers.PodLister
	// kinds and caches are the informers' resources and the informers, in
	// step.
	kinds  []string
	caches []cache.SharedIndexInformer
	// podIndex is the pods' cache, indexed also by node and ServiceAccount
	// (podsOnNodeIndex) for the node checks of impersonation.
	podIndex cache.Indexer
	// synced latches once every cache has synced, which is for good: the
	// hot path then reads one atomic instead of the caches' locks.
	synced atomic.Bool
	log    *slog.Logger
	// changedMu guards changed, which is closed when an object is added
	// to a cache or updated in it: a check that found an object missing
	// waits on it for the cache to catch up (await). It is made only
	// when a check waits (nil otherwise), so the events of a busy cluster
	// cost nothing while none does.
	changedMu sync.Mutex
	changed   chan struct{}
	// waiting counts the checks in await, at most CatchUpMaxWaiting.
	waiting atomic.Int32
}

// InformersConfig configures NewInformers.
type InformersConfig struct {
	// Client reaches the API server. Required. Its rate limit (QPS, Burst)
	// applies to the list at start and to re-lists after a broken watch.
	Client kubernetes.Interface
	// Logger defaults to discarding. Watch failures (an unreachable API
	// server, RBAC refusing the list) are logged as warnings.
	Logger *slog.Logger
}

// ErrNotSynced is returned, wrapped, while the caches have not yet listed
// the cluster's objects: the answer is not known yet, so callers retry.
var ErrNotSynced = errors.New("k8s: informer caches not synced yet")

// NewInformers builds the caches. Nothing is listed or watched until Run.
func NewInformers(cfg InformersConfig) (*Informers, error) {
	if cfg.Client == nil {
		return nil, errors.New("k8s: informers need a Kubernetes client")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	// No resync: the caches only answer, and the one event handler only
	// wakes checks waiting for an object to arrive.
	f := informers.NewSharedInformerFactoryWithOptions(cfg.Client, 0, informers.WithTransform(strip))
	i := &Informers{factory: f, log: cfg.Logger}
	sas, pods := f.Core().V1().ServiceAccounts(), f.Core().V1().Pods()
	for _, inf := range []struct {
		kind string
		si   cache.SharedIndexInformer
	}{{"serviceaccounts", sas.Informer()}, {"pods", pods.Informer()}} {
		kind := inf.kind
		if err := inf.si.SetWatchErrorHandlerWithContext(func(_ context.Context, _ *cache.Reflector, err error) {
			i.watchFailed(kind, err)
		}); err != nil {
			return nil, fmt.Errorf("k8s: %s informer: %w", kind, err)
		}
		// Handlers run after the cache holds the object.
		if _, err := inf.si.AddEventHandler(cache.ResourceEventHandlerFuncs{
			AddFunc:    func(any) { i.change() },
			UpdateFunc: func(any, any) { i.change() },
		}); err != nil {
			return nil, fmt.Errorf("k8s: %s informer: %w", kind, err)
		}
		i.kinds, i.caches = append(i.kinds, kind), append(i.caches, inf.si)
	}
	if err := pods.Informer().AddIndexers(cache.Indexers{podsOnNodeIndex: indexPodOnNode}); err != nil {
		return nil, fmt.Errorf("k8s: pods informer: %w", err)
	}
	i.sas, i.pods, i.podIndex = sas.Lister(), pods.Lister(), pods.Informer().GetIndexer()
	return i, nil
}

// podsOnNodeIndex indexes the pods that may still run (not Succeeded or
// Failed) by "<node>/<namespace>/<ServiceAccount>". Names of nodes,
// namespaces and ServiceAccounts cannot hold a "/", so keys are unique.
const podsOnNodeIndex = "node-serviceaccount"

func podOnNodeKey(node, ns, sa string) string { return node + "/" + ns + "/" + sa }

func indexPodOnNode(obj any) ([]string, error) {
	p, ok := obj.(*corev1.Pod)
	if !ok || p.Spec.NodeName == "" || p.Spec.ServiceAccountName == "" || finished(p) {
		return nil, nil
	}
	return []string{podOnNodeKey(p.Spec.NodeName, p.Namespace, p.Spec.ServiceAccountName)}, nil
}

// finished reports whether p's containers have all ended for good.
func finished(p *corev1.Pod) bool {
	return p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed
}

// strip is the caches' transform: it keeps of a ServiceAccount or a Pod only
// what the binding checks read. Anything else (a tombstone of a deleted
// object) passes unchanged.
func strip(obj any) (any, error) {
	switch o := obj.(type) {
	case *corev1.ServiceAccount:
		return &corev1.ServiceAccount{ObjectMeta: stripMeta(&o.ObjectMeta)}, nil
	case *corev1.Pod:
		return &corev1.Pod{
			ObjectMeta: stripMeta(&o.ObjectMeta),
			Spec:       corev1.PodSpec{NodeName: o.Spec.NodeName, ServiceAccountName: o.Spec.ServiceAccountName},
			Status:     corev1.PodStatus{Phase: o.Status.Phase},
		}, nil
	}
	return obj, nil
}

func stripMeta(m *metav1.ObjectMeta) metav1.ObjectMeta {
	return metav1.ObjectMeta{Name: m.Name, Namespace: m.Namespace, UID: m.UID, ResourceVersion: m.ResourceVersion, DeletionTimestamp: m.DeletionTimestamp}
}

// watchFailed logs a failed list or watch; the informer retries it with
// backoff. Ends of a watch that are routine stay at debug.
func (i *Informers) watchFailed(kind string, err error) {
	if errors.Is(err, io.EOF) || apierrors.IsResourceExpired(err) || apierrors.IsGone(err) {
		i.log.Debug("Kubernetes watch closed; resuming", "resource", kind, "err", err)
		return
	}
	if apierrors.IsForbidden(err) {
		i.log.Warn("Kubernetes list/watch forbidden; retrying: grant meshca list and watch on serviceaccounts and pods in all namespaces", "resource", kind, "err", err)
		return
	}
	i.log.Warn("Kubernetes list/watch failed; retrying", "resource", kind, "err", err)
}

// Run lists and watches until ctx ends, then stops the watches. Ready
// turns true once the first lists are in.
func (i *Informers) Run(ctx context.Context) {
	i.factory.Start(ctx.Done())
	go func() {
		var synced []cache.InformerSynced
		for _, c := range i.caches {
			synced = append(synced, c.HasSynced)
		}
		if cache.WaitForCacheSync(ctx.Done(), synced...) {
			i.synced.Store(true)
			attrs := []any{}
			for n, c := range i.caches {
				attrs = append(attrs, i.kinds[n], len(c.GetStore().ListKeys()))
			}
			i.log.Info("Kubernetes informer caches synced", attrs...)
		}
	}()
	<-ctx.Done()
	i.factory.Shutdown()
}

// Ready reports nil once every cache has synced, and otherwise an error
// wrapping ErrNotSynced that names the caches still listing.
func (i *Informers) Ready(context.Context) error {
	if i.synced.Load() {
		return nil
	}
	var waiting []string
	for n, c := range i.caches {
		if !c.HasSynced() {
			waiting = append(waiting, i.kinds[n])
		}
	}
	if len(waiting) == 0 {
		i.synced.Store(true)
		return nil
	}
	return fmt.Errorf("%w (listing %s)", ErrNotSynced, strings.Join(waiting, ", "))
}

// change wakes the checks waiting for the caches to change.
func (i *Informers) change() {
	i.changedMu.Lock()
	if i.changed != nil {
		close(i.changed)
		i.changed = nil
	}
	i.changedMu.Unlock()
}

// changes returns a channel closed at the next object added or updated.
func (i *Informers) changes() <-chan struct{} {
	i.changedMu.Lock()
	defer i.changedMu.Unlock()
	if i.changed == nil {
		i.changed = make(chan struct{})
	}
	return i.changed
}

// CatchUpMaxWaiting bounds the checks that wait for the caches at once
// (InformerAttestor's young tokens, NodeAuthorizer's pods). Each waits
// inside a request, holding one of the CA's signing slots (at least 16 a
// processor by default), so a burst of requests the caches refuse must not
// hold them all. Past the bound a check is decided at once, as it would be
// without the wait.
const CatchUpMaxWaiting = 8

// await waits for settled to report true, calling it again at every change
// to the caches, for at most wait on clk. It returns whether settled did,
// and whether it waited at all: it does not when settled reports true at
// once, or when CatchUpMaxWaiting checks already wait. It fails only with
// ctx's error, when ctx ends while it waits.
func (i *Informers) await(ctx context.Context, clk clock.Clock, wait time.Duration, settled func() bool) (ok, waited bool, err error) {
	if settled() {
		return true, false, nil
	}
	if i.waiting.Add(1) > CatchUpMaxWaiting {
		i.waiting.Add(-1)
		return false, false, nil
	}
	defer i.waiting.Add(-1)
	timeout := clk.After(wait)
	for {
		// Taken before the check, so that a change in between is not
		// missed.
		changed := i.changes()
		if settled() {
			return true, true, nil
		}
		select {
		case <-changed:
		case <-timeout:
			return false, true, nil
		case <-ctx.Done():
			return false, true, fmt.Errorf("k8s: waiting for the informer caches: %w", ctx.Err())
		}
	}
}

// serviceAccount returns the cached ServiceAccount ns/name, nil if there is
// none. Callers check Ready first.
func (i *Informers) serviceAccount(ns, name string) *corev1.ServiceAccount {
	sa, err := i.sas.ServiceAccounts(ns).Get(name)
	if err != nil { // only ever NotFound: the lister reads memory
		return nil
	}
	return sa
}

// pod returns the cached Pod ns/name, nil if there is none. Callers check
// Ready first.
func (i *Informers) pod(ns, name string) *corev1.Pod {
	p, err := i.pods.Pods(ns).Get(name)
	if err != nil {
		return nil
	}
	return p
}

// runsOn reports whether a pod of ServiceAccount ns/sa that has not
// finished is scheduled to node, terminating ones included (they still run
// until they end). Callers check Ready first.
func (i *Informers) runsOn(node, ns, sa string) bool {
	keys, err := i.podIndex.IndexKeys(podsOnNodeIndex, podOnNodeKey(node, ns, sa))
	return err == nil && len(keys) > 0 // err: only an unknown index
}

// Exists implements ServiceAccounts from the cache: a ServiceAccount being
// deleted (a deletion timestamp, finalizers pending) no longer exists. It
// fails with ErrNotSynced until the caches have synced.
func (i *Informers) Exists(ctx context.Context, ns, name string) (bool, error) {
	if err := i.Ready(ctx); err != nil {
		return false, err
	}
	sa := i.serviceAccount(ns, name)
	return sa != nil && sa.DeletionTimestamp == nil, nil
}
