// Package policy evaluates Istio PeerAuthentication and AuthorizationPolicy
// with Istio's sidecar semantics and explains each decision.
//
// Load (or Options.Load, to set the root namespace, the trust domain and
// its aliases, and the path normalization) reads multi-document YAML files
// and directories of
// security.istio.io/v1 and v1beta1 objects into the istio.io/api types.
// Decoding is strict: unknown fields, wrong types and invalid values are
// errors naming the file, the 0-based document index and the field path,
// for example
//
//	policy: p.yaml: document 2: spec.rules[0].from[0].source.ipBlocks[1]: invalid IP address or CIDR "10.0.0.0/33"
//
// Set.MTLSMode answers "which mTLS mode does this workload port enforce"
// (workload selector over namespace-wide over mesh-wide, UNSET inherits,
// oldest wins; selector policies in the root namespace and portLevelMtls
// without a selector are ignored, as istiod ignores them). Set.Authorize
// answers "may this request reach this workload, and why": CUSTOM, then
// DENY, then ALLOW; AUDIT and dry-run policies never change the outcome;
// policies with targetRef(s) attach to gateways and waypoints and are
// ignored. Policies are indexed by namespace and by one selector label, so
// a decision touches only the policies that can apply to the workload.
//
// What Istio does to policies and requests before matching, this package
// does too: principals and trust domains are rewritten for the mesh trust
// domain and its aliases when policies are loaded (Istio's
// pilot/pkg/security/trustdomain), and request paths are normalized as the
// sidecar's Envoy does under meshConfig.pathNormalization (BASE by
// default: dot segments removed) before paths are matched. Conditions on
// Envoy filter metadata (experimental.envoy.filters.*) read
// Request.FilterMetadata.
//
// Deliberate choices where Istio leaves room:
//   - A CUSTOM policy that matches when Request.CustomVerdicts has no
//     answer for its provider yields DENY with action CUSTOM and a reason
//     saying the provider decides: the request is allowed only if the
//     provider allows it.
//   - On TCP, DENY rules ignore HTTP-only attributes; ALLOW, AUDIT and
//     CUSTOM rules using them are dropped.
//   - A missing creationTimestamp counts as oldest.
//
// The package imports no other meshca package.
package policy
