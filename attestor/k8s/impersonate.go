package k8s

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/meshca/meshca/attestor"
)

// NodeAuthorizer decides whether a node agent may obtain a certificate for
// another identity, as istiod does for Istio ambient's ztunnel
// (CA_TRUSTED_NODE_ACCOUNTS and its node authorizer): ztunnel proves its
// own ServiceAccount with its pod-bound token and asks, in the request's
// "ImpersonatedIdentity", for the identity of a pod on its node. It is
// granted only when, in order:
//
//   - the caller proved a ServiceAccount with a token checked in the
//     informer mode's caches (the node checks read them), and that
//     ServiceAccount ("ns/sa") is one of the trusted node accounts;
//   - the requested identity is a SPIFFE ID of this trust domain of the
//     Kubernetes shape (/ns/<ns>/sa/<sa>) that the allow and deny lists
//     admit;
//   - the pod the caller's token is bound to is in the cache with the
//     token's UID, runs as the caller's ServiceAccount, is Running and not
//     terminating, and is scheduled to a node N;
//   - at least one pod of the requested ServiceAccount that has not
//     finished (Succeeded or Failed) is scheduled to N. Pending pods count:
//     ztunnel asks for a pod's certificate while the pod starts.
//
// The caches may be a moment behind the caller: ztunnel learns of a pod
// bound to its node, or starts and asks before its own pod is seen
// Running, as the watch events are on their way. A request refused only
// for that (no pod of the requested ServiceAccount on N yet, or the
// caller's pod still Pending) waits for the caches to change, and is
// decided again at each change, for at most CatchUpWait, as the informer
// mode's young tokens do (at most CatchUpMaxWaiting checks wait at once;
// past that it is decided at once).
//
// Every refusal is the same attestor.ErrUnauthenticated, "request
// impersonation authentication failure", as istiod answers: the caller
// learns nothing of which pods run where. The precise reason is logged as
// a warning and counted in Metrics.Impersonation.
type NodeAuthorizer struct {
	cfg     Config
	trusted map[string]bool // "ns/sa"
	objects *Informers      // nil: no caches, every impersonation refused
}

// NodeAuthorizerConfig configures NewNodeAuthorizer.
type NodeAuthorizerConfig struct {
	// Config holds the settings every Kubernetes attestor shares: the
	// trust domain, the allow and deny lists (applied to the requested
	// identity), the logger and the metrics.
	Config
	// TrustedNodeAccounts are the ServiceAccounts, "ns/sa" exactly (no
	// patterns), that may ask for the identities of pods on their node.
	// None: every impersonation is refused.
	TrustedNodeAccounts []string
	// Informers are the informer mode's caches, shared with its attestor.
	// Nil (the tokenreview and jwks modes, or no Kubernetes attestation):
	// every impersonation is refused, with a log saying why.
	Informers *Informers
}

// ErrImpersonationRefused is what every refused impersonation wraps,
// besides attestor.ErrUnauthenticated.
var ErrImpersonationRefused = errors.New("request impersonation authentication failure")

// NewNodeAuthorizer returns the node authorizer. A malformed trusted node
// account is an error; trusted accounts without Informers are not (the
// server starts, and refuses impersonation), but are logged as a warning.
func NewNodeAuthorizer(cfg NodeAuthorizerConfig) (*NodeAuthorizer, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	n := &NodeAuthorizer{cfg: cfg.Config, trusted: map[string]bool{}, objects: cfg.Informers}
	for _, acct := range cfg.TrustedNodeAccounts {
		ns, sa, ok := strings.Cut(acct, "/")
		if !ok || len(validation.IsDNS1123Label(ns)) > 0 || len(validation.IsDNS1123Subdomain(sa)) > 0 {
			return nil, fmt.Errorf("k8s: trusted node account %q is not <namespace>/<serviceaccount>", acct)
		}
		n.trusted[acct] = true
	}
	if len(n.trusted) > 0 && n.objects == nil {
		n.cfg.Logger.Warn("trusted node accounts are set, but impersonation needs the informer mode's pod caches (--k8s-attestation=informer): every impersonation will be refused",
			"trusted_node_accounts", cfg.TrustedNodeAccounts)
	}
	return n, nil
}

// Refusal reasons of Impersonate, as counted in Metrics.Impersonation.
const (
	impersonationOK            = "ok"
	impersonationNotConfigured = "not-configured"
	impersonationNoCache       = "no-pod-cache"
	impersonationUntrusted     = "untrusted"
	impersonationMalformed     = "malformed"
	impersonationDenied        = "denied"
	impersonationNotSynced     = "not-synced"
	impersonationCallerPod     = "caller-pod"
	impersonationNotOnNode     = "not-on-node"
)

// Impersonate returns the identity requested, for caller, when caller may
// hold it (see NodeAuthorizer). The identity's Subject is the caller's,
// and its Details say who impersonated whom, from which pod and node.
func (n *NodeAuthorizer) Impersonate(ctx context.Context, caller attestor.Identity, requested string) (attestor.Identity, error) {
	id, reason, why, err := n.decide(ctx, caller, requested)
	if err != nil {
		// The request ended while the check waited for the caches:
		// neither granted nor refused.
		return attestor.Identity{}, err
	}
	n.cfg.Metrics.Impersonation(reason)
	if reason != impersonationOK {
		n.cfg.Logger.Warn("impersonation refused", "caller", caller.ID.String(), "caller_kind", caller.Kind,
			"caller_pod", caller.Details[DetailPodName], "caller_pod_uid", caller.Details[DetailPodUID],
			"requested", requested, "reason", reason, "why", why)
		return attestor.Identity{}, fmt.Errorf("%w: %w", attestor.ErrUnauthenticated, ErrImpersonationRefused)
	}
	n.cfg.Logger.Debug("impersonation granted", "caller", caller.ID.String(), "requested", requested, "node", id.Details[DetailNode])
	return id, nil
}

// decide runs Impersonate's checks in order and returns, when one fails,
// the reason (for metrics) and why (for the log). It fails only with ctx's
// error, when ctx ends while it waits for the caches.
func (n *NodeAuthorizer) decide(ctx context.Context, caller attestor.Identity, requested string) (id attestor.Identity, reason, why string, err error) {
	switch {
	case len(n.trusted) == 0:
		return id, impersonationNotConfigured, "no trusted node accounts configured (--trusted-node-accounts)", nil
	case n.objects == nil:
		return id, impersonationNoCache, "the node checks need the informer mode's pod caches (--k8s-attestation=informer)", nil
	case caller.Kind != KindInformer:
		return id, impersonationUntrusted, fmt.Sprintf("caller proved its identity with a %q credential, not a ServiceAccount token", caller.Kind), nil
	}
	callerNS, callerSA, ok := parseUsername(caller.Subject)
	if !ok || !n.trusted[callerNS+"/"+callerSA] {
		return id, impersonationUntrusted, "caller's ServiceAccount is not a trusted node account", nil
	}
	target, ns, sa, err := n.parseRequested(requested)
	if err != nil {
		return id, impersonationMalformed, err.Error(), nil
	}
	if err := n.cfg.admit(ns, sa); err != nil {
		return id, impersonationDenied, err.Error(), nil
	}
	if err := n.objects.Ready(ctx); err != nil {
		return id, impersonationNotSynced, err.Error(), nil
	}
	var node string
	_, waited, err := n.objects.await(ctx, n.cfg.Clock, CatchUpWait, func() bool {
		var behind bool
		if node, why, behind = n.callerNode(callerNS, callerSA, caller.Details); why != "" {
			reason = impersonationCallerPod
			return !behind
		}
		if !n.objects.runsOn(node, ns, sa) {
			reason, why = impersonationNotOnNode, fmt.Sprintf("no pod of ServiceAccount %s/%s on node %q", ns, sa, node)
			return false
		}
		reason, why = impersonationOK, ""
		return true
	})
	switch {
	case err != nil:
		return id, "", "", err
	case reason != impersonationOK:
		if waited {
			why += fmt.Sprintf(" (still, after waiting %s for the caches)", CatchUpWait)
		}
		return id, reason, why, nil
	}
	return attestor.Identity{ID: target, Kind: KindImpersonation, Subject: caller.Subject, Details: map[string]string{
		DetailImpersonatedBy: caller.ID.String(),
		DetailNode:           node,
		DetailPodName:        caller.Details[DetailPodName],
		DetailPodUID:         caller.Details[DetailPodUID],
	}}, impersonationOK, "", nil
}

// parseRequested parses the ImpersonatedIdentity a caller sent: a SPIFFE
// ID of this trust domain, /ns/<ns>/sa/<sa>.
func (n *NodeAuthorizer) parseRequested(requested string) (id spiffeid.ID, ns, sa string, err error) {
	id, err = spiffeid.FromString(requested)
	if err != nil {
		return id, "", "", fmt.Errorf("requested identity is not a SPIFFE ID: %w", err)
	}
	if id.TrustDomain() != n.cfg.TrustDomain {
		return id, "", "", fmt.Errorf("requested identity is in trust domain %q, not %q", id.TrustDomain().Name(), n.cfg.TrustDomain.Name())
	}
	ns, sa, ok := ServiceAccountOf(id)
	if !ok {
		return id, "", "", errors.New("requested identity is not of the form /ns/<namespace>/sa/<serviceaccount>")
	}
	return id, ns, sa, nil
}

// callerNode finds, in the cache, the pod the caller's token is bound to
// and returns its node, or why it does not qualify and whether the cache
// may be behind (the pod still Pending: its status update on the way).
func (n *NodeAuthorizer) callerNode(ns, sa string, details map[string]string) (node, why string, behind bool) {
	name, uid := details[DetailPodName], details[DetailPodUID]
	if name == "" || uid == "" {
		return "", "caller's token is not bound to a pod", false
	}
	pod := n.objects.pod(ns, name)
	switch {
	case pod == nil:
		return "", fmt.Sprintf("caller's pod %s/%s not found", ns, name), false
	case string(pod.UID) != uid:
		return "", fmt.Sprintf("caller's pod %s/%s has UID %s, the token's %q", ns, name, pod.UID, uid), false
	case pod.Spec.ServiceAccountName != sa:
		return "", fmt.Sprintf("caller's pod %s/%s runs as ServiceAccount %q, the token's %q", ns, name, pod.Spec.ServiceAccountName, sa), false
	case pod.DeletionTimestamp != nil:
		return "", fmt.Sprintf("caller's pod %s/%s is terminating", ns, name), false
	case pod.Status.Phase != corev1.PodRunning:
		return "", fmt.Sprintf("caller's pod %s/%s is %s, not Running", ns, name, pod.Status.Phase), pod.Status.Phase == corev1.PodPending
	case pod.Spec.NodeName == "":
		return "", fmt.Sprintf("caller's pod %s/%s is on no node", ns, name), false
	}
	return pod.Spec.NodeName, "", false
}
