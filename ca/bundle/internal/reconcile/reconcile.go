// Package reconcile is the loop the Kubernetes publishers of package bundle
// share: keys (a namespace, an object name) in a client-go work queue, fed
// by informer events and by bundle changes, handled by a few workers that
// retry a failed key with exponential backoff. The queue holds each key
// once however often it is added, so its length is bounded by the number
// of objects published.
package reconcile

import (
	"context"
	"sync"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"

	"github.com/meshca/meshca/ca/bundle"
	"github.com/meshca/meshca/internal/clock"
)

// Backoff bounds of a key that keeps failing.
const (
	retryMin = 250 * time.Millisecond
	retryMax = 5 * time.Minute
)

// Queue is a rate-limited work queue of keys.
type Queue struct {
	q workqueue.TypedRateLimitingInterface[string]
}

// NewQueue returns an empty queue; name appears in client-go's logs.
func NewQueue(name string) *Queue {
	return &Queue{q: workqueue.NewTypedRateLimitingQueueWithConfig(
		workqueue.NewTypedItemExponentialFailureRateLimiter[string](retryMin, retryMax),
		workqueue.TypedRateLimitingQueueConfig[string]{Name: name})}
}

// Add queues key (once, however often it is added before a worker takes it).
func (q *Queue) Add(key string) { q.q.Add(key) }

// Handler returns informer event handlers that queue key(obj) on every
// add, update (resyncs included) and delete.
func (q *Queue) Handler(key func(metav1.Object) string) cache.ResourceEventHandler {
	add := func(obj any) {
		if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			obj = d.Obj
		}
		if o, ok := obj.(metav1.Object); ok {
			q.Add(key(o))
		}
	}
	return cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { add(obj) },
		UpdateFunc: func(_, obj any) { add(obj) },
		DeleteFunc: add,
	}
}

// Informers is what Loop needs of a client-go informer factory.
type Informers interface {
	Start(stop <-chan struct{})
	Shutdown()
}

// Loop is one run of a publisher.
type Loop struct {
	// Informers are started, and waited for until Synced, before anything
	// else; they are shut down when Run returns.
	Informers []Informers
	Synced    []cache.InformerSynced
	// Source is polled every Interval on Clock (bundle.Poll); Changed is
	// called with each new bundle and queues the keys it affects.
	Source   bundle.Source
	Interval time.Duration
	Clock    clock.Clock
	Changed  func(pem []byte)
	// Workers goroutines call Reconcile with queued keys (never one key
	// twice at once). A key whose Reconcile fails is passed to Failed and
	// queued again after a backoff (250 ms doubling to 5 min); one that
	// succeeds has its backoff reset.
	Workers   int
	Reconcile func(ctx context.Context, key string) error
	Failed    func(key string, err error)
}

// Run runs l until ctx ends: it starts the informers and waits for their
// caches (reporting false if ctx ended first), then polls the source and
// hands queued keys to the workers. When ctx ends it shuts the queue down
// and waits for every goroutine it started. A queue serves one Run.
func (q *Queue) Run(ctx context.Context, l Loop) (synced bool) {
	ctx, cancel := context.WithCancel(ctx)
	for _, f := range l.Informers {
		f.Start(ctx.Done())
	}
	defer func() {
		cancel()
		for _, f := range l.Informers {
			f.Shutdown() // waits for its informers
		}
	}()
	if !cache.WaitForCacheSync(ctx.Done(), l.Synced...) {
		return false
	}
	var wg sync.WaitGroup
	wg.Go(func() { bundle.Poll(ctx, l.Source, l.Interval, l.Clock, l.Changed) })
	for range max(l.Workers, 1) {
		wg.Go(func() {
			for q.next(ctx, l.Reconcile, l.Failed) {
			}
		})
	}
	<-ctx.Done()
	q.q.ShutDown()
	wg.Wait()
	return true
}

func (q *Queue) next(ctx context.Context, reconcile func(context.Context, string) error, failed func(string, error)) bool {
	key, shutdown := q.q.Get()
	if shutdown {
		return false
	}
	defer q.q.Done(key)
	if err := reconcile(ctx, key); err != nil {
		if ctx.Err() == nil {
			failed(key, err)
		}
		q.q.AddRateLimited(key)
		return true
	}
	q.q.Forget(key)
	return true
}
