// Package istiopeer tests meshca against Istio's own CA client — the code
// istio-agent uses to get workload certificates (istio.io/istio
// security/pkg/nodeagent/caclient/providers/citadel) — so "istio-agent can
// use meshca as its CA" is checked against the real peer, not a copy of its
// protocol. It is a separate module so istio.io/istio stays out of meshca's
// go.mod. Run it with `make peertest`.
package istiopeer
