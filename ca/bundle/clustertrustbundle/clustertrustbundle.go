// Package clustertrustbundle publishes the trust bundle as a signer-linked
// ClusterTrustBundle (certificates.k8s.io/v1beta1, KEP-3257), which pods
// mount through a clusterTrustBundle projected volume selecting the signer
// name, and which kubelets use for pod certificates (KEP-4317).
//
// A signer-linked bundle for signer <domain>/<path> is named
// <domain>:<path>:<suffix>; meshca uses its trust domain as the suffix, so
// the bundle for signer meshca.io/spiffe in trust domain cluster.local is
// meshca.io:spiffe:cluster.local. Its spec.signerName cannot be changed,
// and the API server admits a create or update only from a user allowed
// the verb "attest" on the resource "signers" named by the signer name
// (or <domain>/*) in the group certificates.k8s.io: that permission is
// what makes a signer-linked bundle trustworthy, so grant it to meshca
// alone. The name's prefix can only be used with that signer, so an object
// of this name is meshca's to write: one written by someone else (without
// the app.kubernetes.io/managed-by=meshca label) is overwritten, with a
// warning.
//
// The object is created when missing, put back when edited or deleted (an
// informer on that one name, plus a periodic resync), and rewritten when
// the bundle changes. As with package configmap, Run can be started and
// stopped by a leader elector; until then every replica runs it, and
// writes happen only on a difference, with optimistic concurrency.
package clustertrustbundle

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"strings"
	"sync/atomic"
	"time"

	certificatesv1beta1 "k8s.io/api/certificates/v1beta1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/meshca/meshca/ca/bundle"
	"github.com/meshca/meshca/ca/bundle/internal/reconcile"
	"github.com/meshca/meshca/internal/clock"
)

// Config configures a Publisher. Zero fields get the documented defaults.
type Config struct {
	// Client writes the ClusterTrustBundle. Required.
	Client kubernetes.Interface
	// Source is the bundle published. Required.
	Source bundle.Source
	// SignerName is the signer, <domain>/<path>. Required.
	SignerName string
	// Suffix ends the object's name (the trust domain). Required.
	Suffix string
	// SyncInterval is how often Source is compared; default
	// bundle.DefaultSyncInterval.
	SyncInterval time.Duration
	// Resync is how often the object is checked again without an event;
	// default bundle.DefaultResync.
	Resync time.Duration
	// Clock (the poll), Logger and Metrics default to the wall clock,
	// discarding and bundle.NopMetrics.
	Clock   clock.Clock
	Logger  *slog.Logger
	Metrics bundle.Metrics
}

// Publisher keeps the signer-linked ClusterTrustBundle equal to the bundle.
type Publisher struct {
	cfg     Config
	name    string
	running atomic.Bool
}

// Name returns the name of the signer-linked ClusterTrustBundle for
// signerName with suffix, or an error saying why the API server would
// refuse either.
func Name(signerName, suffix string) (string, error) {
	domain, p, ok := strings.Cut(signerName, "/")
	if !ok || strings.Contains(p, "/") || p == "" {
		return "", fmt.Errorf("clustertrustbundle: signer name %q is not <domain>/<path>", signerName)
	}
	if errs := validation.IsDNS1123Subdomain(domain); len(errs) > 0 || !strings.Contains(domain, ".") {
		return "", fmt.Errorf("clustertrustbundle: signer name %q: the domain must be a DNS name with at least two labels", signerName)
	}
	for _, seg := range strings.Split(p, ".") {
		if errs := validation.IsDNS1123Subdomain(seg); len(errs) > 0 {
			return "", fmt.Errorf("clustertrustbundle: signer name %q: path: %s", signerName, errs[0])
		}
	}
	if errs := validation.IsDNS1123Subdomain(suffix); len(errs) > 0 {
		return "", fmt.Errorf("clustertrustbundle: name suffix %q: %s", suffix, errs[0])
	}
	name := strings.ReplaceAll(signerName, "/", ":") + ":" + suffix
	if len(name) > validation.DNS1123SubdomainMaxLength {
		return "", fmt.Errorf("clustertrustbundle: name %q is longer than %d characters", name, validation.DNS1123SubdomainMaxLength)
	}
	return name, nil
}

// New checks cfg and returns a Publisher; Run starts it.
func New(cfg Config) (*Publisher, error) {
	if cfg.Client == nil || cfg.Source == nil {
		return nil, errors.New("clustertrustbundle: a client and a source are required")
	}
	name, err := Name(cfg.SignerName, cfg.Suffix)
	if err != nil {
		return nil, err
	}
	if cfg.SyncInterval <= 0 {
		cfg.SyncInterval = bundle.DefaultSyncInterval
	}
	if cfg.Resync <= 0 {
		cfg.Resync = bundle.DefaultResync
	}
	cfg.Clock = clock.OrReal(cfg.Clock)
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	cfg.Metrics = bundle.OrNop(cfg.Metrics)
	return &Publisher{cfg: cfg, name: name}, nil
}

// ObjectName is the ClusterTrustBundle's name.
func (p *Publisher) ObjectName() string { return p.name }

// Run publishes until ctx ends and returns nil then; it may be called
// again after. It waits for the informer's cache first.
func (p *Publisher) Run(ctx context.Context) error {
	if !p.running.CompareAndSwap(false, true) {
		return errors.New("clustertrustbundle: already running")
	}
	defer p.running.Store(false)
	factory := informers.NewSharedInformerFactoryWithOptions(p.cfg.Client, p.cfg.Resync,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.FieldSelector = "metadata.name=" + p.name }))
	inf := factory.Certificates().V1beta1().ClusterTrustBundles()
	q := reconcile.NewQueue("meshca-bundle-clustertrustbundle")
	if _, err := inf.Informer().AddEventHandler(q.Handler(metav1.Object.GetName)); err != nil {
		return err
	}
	lister := inf.Lister()
	var pem atomic.Pointer[[]byte]
	q.Run(ctx, reconcile.Loop{
		Informers: []reconcile.Informers{factory},
		Synced:    []cache.InformerSynced{inf.Informer().HasSynced},
		Source:    p.cfg.Source, Interval: p.cfg.SyncInterval, Clock: p.cfg.Clock,
		Changed: func(b []byte) {
			if pem.Swap(&b) == nil {
				p.cfg.Logger.Info("publishing the trust bundle ClusterTrustBundle", "name", p.name, "signer", p.cfg.SignerName)
			}
			q.Add(p.name)
		},
		Workers: 1,
		Reconcile: func(ctx context.Context, name string) error {
			b := pem.Load()
			if name != p.name || b == nil {
				return nil
			}
			cur, err := lister.Get(name)
			if apierrors.IsNotFound(err) {
				cur, err = nil, nil
			}
			if err != nil {
				return err
			}
			return p.write(ctx, cur, string(*b))
		},
		Failed: func(_ string, err error) {
			p.cfg.Metrics.Failed(bundle.TargetClusterTrustBundle)
			p.cfg.Logger.Warn("ClusterTrustBundle not written; retrying", "name", p.name, "err", err)
		},
	})
	return nil
}

// write creates the object (cur nil) or updates cur to hold pem.
func (p *Publisher) write(ctx context.Context, cur *certificatesv1beta1.ClusterTrustBundle, pem string) error {
	api := p.cfg.Client.CertificatesV1beta1().ClusterTrustBundles()
	if cur == nil {
		_, err := api.Create(ctx, &certificatesv1beta1.ClusterTrustBundle{
			ObjectMeta: metav1.ObjectMeta{Name: p.name, Labels: map[string]string{bundle.ManagedByLabel: bundle.ManagedBy}},
			Spec:       certificatesv1beta1.ClusterTrustBundleSpec{SignerName: p.cfg.SignerName, TrustBundle: pem},
		}, metav1.CreateOptions{FieldManager: bundle.ManagedBy})
		switch {
		case apierrors.IsAlreadyExists(err):
			return nil // the cache is behind; its add event queues the name again
		case err != nil:
			return fmt.Errorf("create: %w", err)
		}
		p.cfg.Logger.Info("ClusterTrustBundle created", "name", p.name)
		p.cfg.Metrics.Published(bundle.TargetClusterTrustBundle, p.cfg.Clock.Now())
		return nil
	}
	ours := cur.Labels[bundle.ManagedByLabel] == bundle.ManagedBy
	if ours && cur.Spec.TrustBundle == pem {
		p.cfg.Metrics.Published(bundle.TargetClusterTrustBundle, p.cfg.Clock.Now())
		return nil
	}
	if !ours {
		p.cfg.Logger.Warn("ClusterTrustBundle of meshca's signer without meshca's label: overwriting it", "name", p.name)
	}
	ctb := cur.DeepCopy()
	ctb.Labels = maps.Clone(ctb.Labels)
	if ctb.Labels == nil {
		ctb.Labels = map[string]string{}
	}
	ctb.Labels[bundle.ManagedByLabel] = bundle.ManagedBy
	ctb.Spec.TrustBundle = pem
	_, err := api.Update(ctx, ctb, metav1.UpdateOptions{FieldManager: bundle.ManagedBy})
	switch {
	case apierrors.IsConflict(err), apierrors.IsNotFound(err):
		return nil // changed or deleted meanwhile; its event queues the name again
	case err != nil:
		return fmt.Errorf("update: %w", err)
	}
	p.cfg.Logger.Info("ClusterTrustBundle updated", "name", p.name)
	p.cfg.Metrics.Published(bundle.TargetClusterTrustBundle, p.cfg.Clock.Now())
	return nil
}
