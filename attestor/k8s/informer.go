package k8s

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/meshca/meshca/attestor"
)

// InformerAttestor gives TokenReview's guarantees without an API call per
// CSR. It verifies a token offline against the cluster's JWKS, as
// JWKSAttestor does, then checks in Informers' caches that the objects the
// token is bound to still exist, as the API server does when it reviews a
// token:
//
//   - the ServiceAccount: same name and UID as the token's claims, and not
//     being deleted. A ServiceAccount deleted, or deleted and created again
//     under the same name (a new UID), refuses the tokens issued before;
//   - for a pod-bound token, the pod: same name and UID, on the node the
//     token names if it names one, neither being deleted nor finished
//     (Succeeded or Failed). The API server still accepts a terminating
//     pod's token for a minute past its deletion deadline; this refuses it
//     at once: a pod shutting down keeps the certificate it has;
//   - a token bound to a Secret, or to a Node without a pod, is refused:
//     those objects are not watched (use the tokenreview mode for them).
//
// A young token (issued in the last CatchUpAge) whose ServiceAccount or pod
// the caches do not have, or have under another UID or node, may be ahead
// of the watch: a ServiceAccount created and a token requested for it at
// once, a pod bound to its node a moment before its kubelet asks. Its check
// then waits for the caches to change, and is decided again at each change,
// for at most CatchUpWait before it is refused. An older token is decided
// at once, and so is a young one while CatchUpMaxWaiting checks already
// wait.
//
// Until the caches have synced every token is refused with
// attestor.ErrUnavailable, before it is verified, so callers retry; Ready
// says when that ends.
// Refusals are attestor.ErrUnauthenticated with one message for every
// binding failure; the precise reason is logged at info and counted in
// Metrics.Refused.
type InformerAttestor struct {
	cfg     Config
	offline *JWKSAttestor
	objects *Informers
}

// InformerConfig configures NewInformer.
type InformerConfig struct {
	// JWKSConfig verifies the tokens offline: the shared settings, the
	// issuer and the cluster's key set (required).
	JWKSConfig
	// Informers holds the ServiceAccounts and Pods. Required. Run runs
	// it; the renewal admission can share it (AdmissionConfig).
	Informers *Informers
}

// NewInformer returns the informer-backed attestor.
func NewInformer(cfg InformerConfig) (*InformerAttestor, error) {
	offline, err := NewJWKS(cfg.JWKSConfig)
	if err != nil {
		return nil, err
	}
	if cfg.Informers == nil {
		return nil, errors.New("k8s: informer mode needs Informers")
	}
	return &InformerAttestor{cfg: offline.cfg, offline: offline, objects: cfg.Informers}, nil
}

// Run lists and watches the ServiceAccounts and Pods until ctx ends.
func (a *InformerAttestor) Run(ctx context.Context) { a.objects.Run(ctx) }

// Ready reports nil once the caches have synced, and until then why not.
func (a *InformerAttestor) Ready(ctx context.Context) error { return a.objects.Ready(ctx) }

// Attest implements attestor.Attestor.
func (a *InformerAttestor) Attest(ctx context.Context, c attestor.Credential) (attestor.Identity, error) {
	if !looksLikeJWT(c.BearerToken) {
		return attestor.Identity{}, attestor.ErrNoCredential
	}
	// Before the caches have synced no token can be decided: say so at
	// once, without waiting for the cluster's keys, which a starting CA may
	// not have fetched yet either.
	if err := a.objects.Ready(ctx); err != nil {
		a.cfg.Logger.Debug("ServiceAccount token not checked: informer caches not synced")
		return attestor.Identity{}, fmt.Errorf("%w: %w", attestor.ErrUnavailable, err)
	}
	p, err := a.offline.verify(ctx, c.BearerToken)
	if err != nil {
		return attestor.Identity{}, err
	}
	reason, why, err := a.catchUp(ctx, &p)
	if err != nil {
		return attestor.Identity{}, err
	}
	if reason != "" {
		a.cfg.Metrics.Refused(reason)
		attrs := []any{"serviceaccount", p.ns + "/" + p.sa, "reason", reason, "why", why}
		if pod := p.claims.K8s.Pod; pod != nil {
			attrs = append(attrs, "pod", pod.Name, "pod_uid", pod.UID)
		}
		a.cfg.Logger.Info("ServiceAccount token refused: a bound object is gone", attrs...)
		return attestor.Identity{}, fmt.Errorf("%w: ServiceAccount token has been invalidated (the ServiceAccount or pod it is bound to no longer exists)", attestor.ErrUnauthenticated)
	}
	return a.cfg.identity(KindInformer, p.ns, p.sa, p.details())
}

// A token issued less than CatchUpAge ago that the caches would refuse for
// a missing or different object waits up to CatchUpWait for them to catch
// up (InformerAttestor). A watch event arrives within milliseconds of the
// change; the wait covers an API server or a watch slowed down.
const (
	CatchUpAge  = 10 * time.Second
	CatchUpWait = time.Second
)

// catchUp is bound, waiting as InformerAttestor describes when the caches
// may be behind a young token. Each change to the caches decides it again.
// It fails only with ctx's error, when the request ends while it waits.
func (a *InformerAttestor) catchUp(ctx context.Context, p *projected) (reason, why string, err error) {
	if p.issued.IsZero() || a.cfg.Clock.Now().Sub(p.issued) > CatchUpAge {
		reason, why, _ = a.bound(p)
		return reason, why, nil
	}
	_, waited, err := a.objects.await(ctx, a.cfg.Clock, CatchUpWait, func() bool {
		var behind bool
		reason, why, behind = a.bound(p)
		return reason == "" || !behind
	})
	switch {
	case err != nil:
		return "", "", err
	case reason != "" && waited:
		why += fmt.Sprintf(" (still, after waiting %s for the caches)", CatchUpWait)
	}
	return reason, why, nil
}

// Refusal reasons of the binding checks, as counted in Metrics.Refused.
const (
	refusedServiceAccount = "serviceaccount-gone"
	refusedPod            = "pod-gone"
	refusedNode           = "pod-node"
	refusedBinding        = "unsupported-binding"
)

// bound checks the objects token p is bound to against the caches and
// returns, when one fails, the reason (for metrics) and why (for the log),
// and whether the caches may be behind the token (an object missing, or
// under another UID or node, which a watch event on its way would mend).
func (a *InformerAttestor) bound(p *projected) (reason, why string, behind bool) {
	k := &p.claims.K8s
	sa := a.objects.serviceAccount(p.ns, p.sa)
	switch {
	case sa == nil:
		return refusedServiceAccount, "no such ServiceAccount", true
	case string(sa.UID) != k.ServiceAccount.UID:
		return refusedServiceAccount, fmt.Sprintf("ServiceAccount UID is %s, the token's %q (deleted and created again)", sa.UID, k.ServiceAccount.UID), true
	case sa.DeletionTimestamp != nil:
		return refusedServiceAccount, "ServiceAccount being deleted", false
	case k.Secret != nil:
		return refusedBinding, "token bound to a Secret, which this mode does not watch", false
	case k.Pod == nil && k.Node != nil:
		return refusedBinding, "token bound to a Node, which this mode does not watch", false
	case k.Pod == nil:
		return "", "", false
	}
	pod := a.objects.pod(p.ns, k.Pod.Name)
	switch {
	case pod == nil:
		return refusedPod, "no such pod", true
	case string(pod.UID) != k.Pod.UID:
		return refusedPod, fmt.Sprintf("pod UID is %s, the token's %q (deleted and created again)", pod.UID, k.Pod.UID), true
	case pod.DeletionTimestamp != nil:
		return refusedPod, "pod terminating", false
	case finished(pod):
		return refusedPod, fmt.Sprintf("pod finished (%s)", pod.Status.Phase), false
	case k.Node != nil && pod.Spec.NodeName != k.Node.Name:
		// A pod is bound to a node once; the cache may not have the
		// binding yet.
		return refusedNode, fmt.Sprintf("pod runs on node %q, the token names %q", pod.Spec.NodeName, k.Node.Name), pod.Spec.NodeName == ""
	}
	return "", "", false
}

var _ attestor.Attestor = (*InformerAttestor)(nil)
