package podcert

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
	certificatesv1beta1 "k8s.io/api/certificates/v1beta1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	listers "k8s.io/client-go/listers/certificates/v1beta1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"

	"github.com/meshca/meshca/attestor"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/clock"
)

// Authority signs: *ca.Authority.
type Authority interface {
	// SignOnce signs at most one certificate per key (ca.Authority.SignOnce).
	SignOnce(ctx context.Context, key string, req ca.SignRequest) (iss *ca.Issued, resent bool, err error)
}

// Identities turns a request into the identity it gets, applying the allow
// and deny lists (a refusal wraps attestor.ErrPermissionDenied):
// *k8s.Admission of package attestor/k8s.
type Identities interface {
	PodCertificateIdentity(req *certificatesv1beta1.PodCertificateRequest) (attestor.Identity, error)
}

// Metrics observes what a Controller does.
type Metrics interface {
	// Request counts a request answered, by result, "issued", "resent" (a
	// certificate signed for it before, sent again), "denied" or
	// "failed", and by reason (the condition's, "" when issued or resent);
	// and a failed attempt that is retried: result "retry", reason
	// "signing" or "status-update".
	Request(result, reason string)
	// Issued observes, for a request issued, the time from its creation
	// to its status update.
	Issued(took time.Duration)
}

type nopMetrics struct{}

func (nopMetrics) Request(string, string) {}
func (nopMetrics) Issued(time.Duration)   {}

// Defaults of Config.
const (
	DefaultWorkers = 8
	DefaultResync  = 5 * time.Minute
)

// Retries: a failing request waits 250 ms, doubling to 30 s (well inside
// the API server's 5-minute window for notBefore, and kube-controller-
// manager's 15 minutes before it deletes a request); all retries together
// at most retryQPS a second, retryBurst at once.
const (
	retryMin   = 250 * time.Millisecond
	retryMax   = 30 * time.Second
	retryQPS   = 50
	retryBurst = 200
)

// keyPrefix names the request keys of ca.Authority.SignOnce that are
// PodCertificateRequest UIDs.
const keyPrefix = "k8s-podcertificaterequest/"

// fieldManager names meshca in the requests' managed fields.
const fieldManager = "meshca"

// Config configures a Controller. Zero fields get the documented defaults.
type Config struct {
	// Client reads the requests and writes their status. Required. It
	// needs list and watch on podcertificaterequests, update on
	// podcertificaterequests/status, and sign on the signer
	// (docs/pod-certificates.md).
	Client kubernetes.Interface
	// SignerName is the signer, e.g. meshca.io/spiffe. Required.
	SignerName string
	// Authority signs, Identities names the identity. Required.
	Authority  Authority
	Identities Identities
	// MaxTTL caps the lifetime (--max-ttl). Default ca.DefaultMaxLeafTTL.
	MaxTTL time.Duration
	// Workers answer requests at once. Default DefaultWorkers.
	Workers int
	// Resync is how often every request in the cache is looked at again
	// without an event. Default DefaultResync.
	Resync time.Duration
	// Clock (the status's times, the checks of the API server's rules),
	// Logger and Metrics default to the wall clock, discarding and a no-op.
	Clock   clock.Clock
	Logger  *slog.Logger
	Metrics Metrics
}

// Controller answers the PodCertificateRequests of one signer.
type Controller struct {
	cfg     Config
	running atomic.Bool
}

// New checks cfg and returns a Controller; Run starts it.
func New(cfg Config) (*Controller, error) {
	switch {
	case cfg.Client == nil || cfg.Authority == nil || cfg.Identities == nil:
		return nil, errors.New("podcert: a client, an authority and identities are required")
	case !validSignerName(cfg.SignerName):
		return nil, fmt.Errorf("podcert: signer name %q is not <domain>/<path>", cfg.SignerName)
	case cfg.MaxTTL < 0, cfg.Workers < 0, cfg.Resync < 0:
		return nil, errors.New("podcert: negative max TTL, workers or resync")
	}
	if cfg.MaxTTL == 0 {
		cfg.MaxTTL = ca.DefaultMaxLeafTTL
	}
	if cfg.Workers == 0 {
		cfg.Workers = DefaultWorkers
	}
	if cfg.Resync == 0 {
		cfg.Resync = DefaultResync
	}
	cfg.Clock = clock.OrReal(cfg.Clock)
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Metrics == nil {
		cfg.Metrics = nopMetrics{}
	}
	return &Controller{cfg: cfg}, nil
}

// validSignerName is the API server's first rule for a signer name: a
// domain, a slash, a path, neither empty (it checks the rest when a
// request names it).
func validSignerName(name string) bool {
	domain, path, ok := strings.Cut(name, "/")
	return ok && domain != "" && path != "" && !strings.ContainsAny(name, " \t\n")
}

// Run answers requests until ctx ends, and returns nil then; it may be
// called again after (a leader elector's next term). It waits for the
// informer's cache first.
func (c *Controller) Run(ctx context.Context) error {
	if !c.running.CompareAndSwap(false, true) {
		return errors.New("podcert: already running")
	}
	defer c.running.Store(false)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	selector := fields.OneTermEqualSelector("spec.signerName", c.cfg.SignerName).String()
	factory := informers.NewSharedInformerFactoryWithOptions(c.cfg.Client, c.cfg.Resync,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.FieldSelector = selector }))
	inf := factory.Certificates().V1beta1().PodCertificateRequests()
	q := workqueue.NewTypedRateLimitingQueueWithConfig(
		workqueue.NewTypedMaxOfRateLimiter(
			workqueue.NewTypedItemExponentialFailureRateLimiter[string](retryMin, retryMax),
			&workqueue.TypedBucketRateLimiter[string]{Limiter: rate.NewLimiter(retryQPS, retryBurst)}),
		workqueue.TypedRateLimitingQueueConfig[string]{Name: "meshca-podcert"})
	queue := func(obj any) {
		if req, ok := obj.(*certificatesv1beta1.PodCertificateRequest); ok && c.ours(req) {
			if key, err := cache.MetaNamespaceKeyFunc(req); err == nil {
				q.Add(key)
			}
		}
	}
	if _, err := inf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    queue,
		UpdateFunc: func(_, obj any) { queue(obj) },
	}); err != nil {
		return err
	}
	lister := inf.Lister()
	factory.Start(ctx.Done())
	defer factory.Shutdown()
	if !cache.WaitForCacheSync(ctx.Done(), inf.Informer().HasSynced) {
		q.ShutDown()
		return nil
	}
	c.cfg.Logger.Info("answering pod certificate requests", "signer", c.cfg.SignerName, "workers", c.cfg.Workers)
	var wg sync.WaitGroup
	for range c.cfg.Workers {
		wg.Go(func() {
			for c.next(ctx, q, lister) {
			}
		})
	}
	<-ctx.Done()
	q.ShutDown()
	wg.Wait()
	return nil
}

// ours reports whether req names this signer and has no terminal
// condition yet.
func (c *Controller) ours(req *certificatesv1beta1.PodCertificateRequest) bool {
	return req.Spec.SignerName == c.cfg.SignerName && !terminal(req)
}

// terminal reports whether req was issued, denied or failed.
func terminal(req *certificatesv1beta1.PodCertificateRequest) bool {
	for _, cond := range req.Status.Conditions {
		switch cond.Type {
		case certificatesv1beta1.PodCertificateRequestConditionTypeIssued,
			certificatesv1beta1.PodCertificateRequestConditionTypeDenied,
			certificatesv1beta1.PodCertificateRequestConditionTypeFailed:
			if cond.Status == metav1.ConditionTrue {
				return true
			}
		}
	}
	return false
}

// next handles one queued key; false once the queue is shut down.
func (c *Controller) next(ctx context.Context, q workqueue.TypedRateLimitingInterface[string], lister listers.PodCertificateRequestLister) bool {
	key, shutdown := q.Get()
	if shutdown {
		return false
	}
	defer q.Done(key)
	ns, name, err := cache.SplitMetaNamespaceKey(key)
	if err != nil {
		q.Forget(key)
		return true
	}
	req, err := lister.PodCertificateRequests(ns).Get(name)
	if err != nil || !c.ours(req) { // deleted, or answered meanwhile
		q.Forget(key)
		return true
	}
	if err := c.handle(ctx, req); err != nil {
		if ctx.Err() == nil {
			c.cfg.Logger.Warn("pod certificate request not answered; retrying", "namespace", ns, "name", name, "err", err)
		}
		q.AddRateLimited(key)
		return true
	}
	q.Forget(key)
	return true
}
