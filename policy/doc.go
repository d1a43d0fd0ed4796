// Package policy will evaluate Istio PeerAuthentication and
// AuthorizationPolicy with Istio's exact semantics and explain each decision.
//
// Not built yet (issue "Policy"); it holds no code so that nothing can
// depend on a stub. It must import no other meshca package.
package policy
