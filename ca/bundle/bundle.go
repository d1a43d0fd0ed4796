// Package bundle is what the trust bundle's publishers share: the Source
// they read the CA's roots from, the poll that notices when those change,
// the labels that mark objects as meshca's, their metrics, and the flags
// of `meshca server` that configure them. The publishers themselves live
// below it, one per place workloads and peers read a bundle:
//
//   - configmap: a ConfigMap in every namespace (or a chosen set), as
//     istiod writes istio-ca-root-cert;
//   - clustertrustbundle: a signer-linked ClusterTrustBundle
//     (certificates.k8s.io/v1beta1), for pods that project one;
//   - endpoint: a SPIFFE bundle endpoint (https_web or https_spiffe), for
//     federation.
//
// They depend on the CA only through Source, which ca.Authority satisfies:
//
//	type Source interface{ RootsPEM() []byte }
//
// so a rotation that changes the roots reaches them at the next poll
// (every SyncInterval, 10 s by default) or, when the Source also says when
// its roots change (Notifier, as ca.Authority does), at once; a test
// drives them with a fake Source and a fake clock.
package bundle

import (
	"bytes"
	"context"
	"time"

	"github.com/meshca/meshca/internal/clock"
)

// Source gives the current trust bundle: the CA's roots as concatenated PEM
// certificates. It may change at any time (root rotation); the publishers
// compare its bytes at every poll.
type Source interface {
	RootsPEM() []byte
}

// Notifier is a Source that also says when its roots change: the channel
// RootsChanged returns is closed at the next change (a new one is asked
// for after each). Poll then publishes at once instead of at its next
// comparison.
type Notifier interface {
	RootsChanged() <-chan struct{}
}

// ManagedByLabel marks the Kubernetes objects meshca writes; its value is
// ManagedBy. An object of the publisher's name without it is someone
// else's, and the ConfigMap publisher leaves it alone.
const (
	ManagedByLabel = "app.kubernetes.io/managed-by"
	ManagedBy      = "meshca"
)

// DefaultSyncInterval is how often the publishers compare the Source's
// bundle with the one they last published.
const DefaultSyncInterval = 10 * time.Second

// Poll calls changed with src's bundle at once and then each time it
// differs from the one before, comparing every interval (measured on clk),
// and at once when a Notifier source says its roots changed, until ctx
// ends. An empty bundle is never passed on: the CA has no roots
// yet, and publishing nothing would take trust away from every workload.
func Poll(ctx context.Context, src Source, interval time.Duration, clk clock.Clock, changed func(pem []byte)) {
	notifier, _ := src.(Notifier)
	var last []byte
	for {
		// Armed before the roots are read: a change after the read
		// closes it, one before is in the read.
		var wake <-chan struct{}
		if notifier != nil {
			wake = notifier.RootsChanged()
		}
		if cur := src.RootsPEM(); len(cur) > 0 && !bytes.Equal(cur, last) {
			last = bytes.Clone(cur)
			changed(last)
		}
		select {
		case <-ctx.Done():
			return
		case <-clk.After(interval):
		case <-wake:
		}
	}
}

// Targets name the places a bundle is published, in metrics and logs.
const (
	TargetConfigMap          = "configmap"
	TargetClusterTrustBundle = "clustertrustbundle"
)

// Metrics receives what the publishers do. The zero NopMetrics discards it.
type Metrics interface {
	// Published records that an object of target held the current bundle
	// at t: written, or found up to date.
	Published(target string, t time.Time)
	// Failed counts an attempt to publish to target that failed (it is
	// retried with backoff).
	Failed(target string)
	// Foreign sets how many objects of target meshca leaves alone because
	// they have its name but are not its own.
	Foreign(target string, n int)
	// Sequence sets the spiffe_sequence the bundle endpoint serves.
	Sequence(n uint64)
}

// NopMetrics discards metrics.
type NopMetrics struct{}

// Published implements Metrics.
func (NopMetrics) Published(string, time.Time) {}

// Failed implements Metrics.
func (NopMetrics) Failed(string) {}

// Foreign implements Metrics.
func (NopMetrics) Foreign(string, int) {}

// Sequence implements Metrics.
func (NopMetrics) Sequence(uint64) {}

// OrNop returns m, or NopMetrics when m is nil.
func OrNop(m Metrics) Metrics {
	if m == nil {
		return NopMetrics{}
	}
	return m
}
