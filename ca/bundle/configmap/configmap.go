// Package configmap publishes the trust bundle as a ConfigMap in every
// namespace, or in a chosen set, the way istiod publishes
// istio-ca-root-cert: created in each namespace when it appears (a
// namespace informer), put back when it is edited or deleted (an informer
// on the ConfigMaps of that one name, selected by field, plus a periodic
// resync), rewritten everywhere when the bundle changes.
//
// An object meshca writes carries the label
// app.kubernetes.io/managed-by=meshca. A ConfigMap of the same name without
// it belongs to someone else: it is left alone, logged and counted
// (bundle.Metrics.Foreign), with one exception the operator opts into:
// istio-ca-root-cert, which istiod writes in every namespace without any
// ownership label of its own, may be taken over (Config.TakeOverIstio) once
// istiod no longer writes it; otherwise the two would rewrite each other's
// bundle for ever.
//
// Only the bundle's key (root-cert.pem) and the label are managed: other
// keys, labels and annotations someone adds are kept. ConfigMaps are never
// deleted, not even in a namespace that is no longer selected.
//
// Writes go through the client given (its rate limit, --k8s-qps, applies)
// from a bounded, rate-limited work queue. Run can be started and stopped
// again, so that a leader elector can run it on one replica at a time; until
// leader election exists every replica runs it, which is safe: a write
// happens only when the object differs from the bundle, and an update
// carries the resourceVersion it read (a conflict is re-read, never
// overwritten blind), so replicas holding the same bundle agree.
package configmap

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"path"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	listersv1 "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/meshca/meshca/ca/bundle"
	"github.com/meshca/meshca/ca/bundle/internal/reconcile"
	"github.com/meshca/meshca/internal/clock"
)

// Key is the ConfigMap key holding the bundle, as in istio-ca-root-cert.
const Key = "root-cert.pem"

// IstioName is the ConfigMap istiod writes in every namespace.
const IstioName = "istio-ca-root-cert"

// Config configures a Publisher. Zero fields get the documented defaults.
type Config struct {
	// Client writes the ConfigMaps and watches namespaces. Required.
	Client kubernetes.Interface
	// Source is the bundle published. Required.
	Source bundle.Source
	// Name of the ConfigMap. Required.
	Name string
	// Namespaces are path.Match globs of the namespaces that get it;
	// empty: every namespace.
	Namespaces []string
	// TakeOverIstio overwrites ConfigMaps without meshca's label too; only
	// with Name IstioName.
	TakeOverIstio bool
	// SyncInterval is how often Source is compared; default
	// bundle.DefaultSyncInterval.
	SyncInterval time.Duration
	// Resync is how often every namespace is checked again without an
	// event; default bundle.DefaultResync.
	Resync time.Duration
	// Workers write ConfigMaps concurrently; default 4.
	Workers int
	// Clock (the poll), Logger and Metrics default to the wall clock,
	// discarding and bundle.NopMetrics.
	Clock   clock.Clock
	Logger  *slog.Logger
	Metrics bundle.Metrics
}

// Publisher keeps the bundle ConfigMap in every selected namespace.
type Publisher struct {
	cfg Config
	// running refuses a second Run at the same time.
	running atomic.Bool
}

// New checks cfg and returns a Publisher; Run starts it.
func New(cfg Config) (*Publisher, error) {
	switch {
	case cfg.Client == nil || cfg.Source == nil:
		return nil, errors.New("configmap: a client and a source are required")
	case cfg.Name == "":
		return nil, errors.New("configmap: a ConfigMap name is required")
	case cfg.TakeOverIstio && cfg.Name != IstioName:
		return nil, fmt.Errorf("configmap: taking over istiod's ConfigMaps needs the name %s, not %s", IstioName, cfg.Name)
	}
	if errs := validation.IsDNS1123Subdomain(cfg.Name); len(errs) > 0 {
		return nil, fmt.Errorf("configmap: name %q: %s", cfg.Name, errs[0])
	}
	for _, p := range cfg.Namespaces {
		if _, err := path.Match(p, ""); err != nil {
			return nil, fmt.Errorf("configmap: namespace pattern %q: %w", p, err)
		}
	}
	if cfg.SyncInterval <= 0 {
		cfg.SyncInterval = bundle.DefaultSyncInterval
	}
	if cfg.Resync <= 0 {
		cfg.Resync = bundle.DefaultResync
	}
	if cfg.Workers <= 0 {
		cfg.Workers = 4
	}
	cfg.Clock = clock.OrReal(cfg.Clock)
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	cfg.Metrics = bundle.OrNop(cfg.Metrics)
	return &Publisher{cfg: cfg}, nil
}

// Run publishes until ctx ends: it starts the informers, waits for their
// caches, then keeps every selected namespace's ConfigMap equal to the
// bundle. It returns nil when ctx ends, and may be called again after.
func (p *Publisher) Run(ctx context.Context) error {
	if !p.running.CompareAndSwap(false, true) {
		return errors.New("configmap: already running")
	}
	defer p.running.Store(false)
	r := &run{Publisher: p, foreign: map[string]string{}}
	nsFactory := informers.NewSharedInformerFactory(p.cfg.Client, p.cfg.Resync)
	cmFactory := informers.NewSharedInformerFactoryWithOptions(p.cfg.Client, p.cfg.Resync,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.FieldSelector = "metadata.name=" + p.cfg.Name }))
	nsInformer := nsFactory.Core().V1().Namespaces()
	cmInformer := cmFactory.Core().V1().ConfigMaps()
	r.namespaces, r.configmaps = nsInformer.Lister(), cmInformer.Lister()
	q := reconcile.NewQueue("meshca-bundle-configmap")
	if _, err := nsInformer.Informer().AddEventHandler(q.Handler(metav1.Object.GetName)); err != nil {
		return err
	}
	if _, err := cmInformer.Informer().AddEventHandler(q.Handler(metav1.Object.GetNamespace)); err != nil {
		return err
	}
	q.Run(ctx, reconcile.Loop{
		Informers: []reconcile.Informers{nsFactory, cmFactory},
		Synced:    []cache.InformerSynced{nsInformer.Informer().HasSynced, cmInformer.Informer().HasSynced},
		Source:    p.cfg.Source, Interval: p.cfg.SyncInterval, Clock: p.cfg.Clock,
		Changed: func(pem []byte) {
			if r.pem.Swap(&pem) == nil {
				p.cfg.Logger.Info("publishing the trust bundle ConfigMap", "name", p.cfg.Name, "namespaces", p.cfg.Namespaces)
			}
			all, _ := r.namespaces.List(labels.Everything()) // a lister never fails
			for _, ns := range all {
				q.Add(ns.Name)
			}
		},
		Workers:   p.cfg.Workers,
		Reconcile: r.reconcile,
		Failed: func(ns string, err error) {
			p.cfg.Metrics.Failed(bundle.TargetConfigMap)
			p.cfg.Logger.Warn("bundle ConfigMap not written; retrying", "namespace", ns, "name", p.cfg.Name, "err", err)
		},
	})
	return nil
}

// run is the state of one Run.
type run struct {
	*Publisher
	namespaces listersv1.NamespaceLister
	configmaps listersv1.ConfigMapLister
	pem        atomic.Pointer[[]byte]

	mu sync.Mutex
	// foreign maps the namespaces whose ConfigMap of our name is someone
	// else's to the resourceVersion last logged.
	foreign map[string]string
}

// selected reports whether namespace ns gets the ConfigMap.
func (p *Publisher) selected(ns string) bool {
	if len(p.cfg.Namespaces) == 0 {
		return true
	}
	for _, pat := range p.cfg.Namespaces {
		if ok, _ := path.Match(pat, ns); ok {
			return true
		}
	}
	return false
}

// reconcile makes namespace ns's ConfigMap hold the bundle.
func (r *run) reconcile(ctx context.Context, ns string) error {
	pem := r.pem.Load()
	if pem == nil {
		return nil // no bundle yet; the first poll queues every namespace
	}
	n, err := r.namespaces.Get(ns)
	if apierrors.IsNotFound(err) || (err == nil && (n.DeletionTimestamp != nil || n.Status.Phase == corev1.NamespaceTerminating)) || !r.selected(ns) {
		r.setForeign(ns, "")
		return nil
	}
	if err != nil {
		return err
	}
	cm, err := r.configmaps.ConfigMaps(ns).Get(r.cfg.Name)
	if apierrors.IsNotFound(err) {
		r.setForeign(ns, "")
		return r.create(ctx, ns, string(*pem))
	}
	if err != nil {
		return err
	}
	if cm.Labels[bundle.ManagedByLabel] != bundle.ManagedBy && !r.cfg.TakeOverIstio {
		if r.setForeign(ns, cm.ResourceVersion) {
			r.cfg.Logger.Warn("a ConfigMap of the bundle's name is not meshca's: left alone", "namespace", ns, "name", r.cfg.Name,
				"hint", "delete it, or label it "+bundle.ManagedByLabel+"="+bundle.ManagedBy+", to let meshca write it")
		}
		return nil
	}
	r.setForeign(ns, "")
	if cm.Data[Key] == string(*pem) && cm.Labels[bundle.ManagedByLabel] == bundle.ManagedBy && cm.BinaryData[Key] == nil {
		r.cfg.Metrics.Published(bundle.TargetConfigMap, r.cfg.Clock.Now())
		return nil
	}
	return r.update(ctx, cm, string(*pem))
}

func (r *run) create(ctx context.Context, ns, pem string) error {
	cm := &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: r.cfg.Name, Namespace: ns, Labels: map[string]string{bundle.ManagedByLabel: bundle.ManagedBy}},
		Data:       map[string]string{Key: pem},
	}
	_, err := r.cfg.Client.CoreV1().ConfigMaps(ns).Create(ctx, cm, metav1.CreateOptions{FieldManager: bundle.ManagedBy})
	switch {
	case err == nil:
		r.cfg.Logger.Info("bundle ConfigMap created", "namespace", ns, "name", r.cfg.Name)
	case apierrors.IsAlreadyExists(err):
		// The cache is behind; its add event queues ns again.
	case apierrors.IsNotFound(err), apierrors.HasStatusCause(err, corev1.NamespaceTerminatingCause):
		// The namespace went away meanwhile.
	default:
		return fmt.Errorf("create: %w", err)
	}
	if err == nil {
		r.cfg.Metrics.Published(bundle.TargetConfigMap, r.cfg.Clock.Now())
	}
	return nil
}

func (r *run) update(ctx context.Context, cur *corev1.ConfigMap, pem string) error {
	cm := cur.DeepCopy()
	cm.Labels = maps.Clone(cm.Labels)
	if cm.Labels == nil {
		cm.Labels = map[string]string{}
	}
	if cm.Labels[bundle.ManagedByLabel] != bundle.ManagedBy {
		r.cfg.Logger.Warn("taking over istiod's ConfigMap", "namespace", cm.Namespace, "name", cm.Name)
	}
	cm.Labels[bundle.ManagedByLabel] = bundle.ManagedBy
	if cm.Data == nil {
		cm.Data = map[string]string{}
	}
	cm.Data[Key] = pem
	delete(cm.BinaryData, Key) // a key may not be in both
	_, err := r.cfg.Client.CoreV1().ConfigMaps(cm.Namespace).Update(ctx, cm, metav1.UpdateOptions{FieldManager: bundle.ManagedBy})
	switch {
	case err == nil:
		r.cfg.Logger.Info("bundle ConfigMap updated", "namespace", cm.Namespace, "name", cm.Name)
		r.cfg.Metrics.Published(bundle.TargetConfigMap, r.cfg.Clock.Now())
	case apierrors.IsConflict(err), apierrors.IsNotFound(err):
		// Changed or deleted meanwhile; its event queues the namespace again.
	default:
		return fmt.Errorf("update: %w", err)
	}
	return nil
}

// setForeign records that ns's ConfigMap is someone else's at
// resourceVersion rv ("": it is not, or there is none) and reports whether
// that is news worth a log line. It updates the Foreign metric.
func (r *run) setForeign(ns, rv string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	old, had := r.foreign[ns]
	if rv == "" {
		delete(r.foreign, ns)
	} else {
		r.foreign[ns] = rv
	}
	r.cfg.Metrics.Foreign(bundle.TargetConfigMap, len(r.foreign))
	return rv != "" && (!had || old != rv)
}
