package policy

import (
	"fmt"
	"sort"

	secv1beta1 "istio.io/api/security/v1beta1"
)

// Set is a loaded, validated collection of policies, indexed for
// evaluation. A Set is immutable after loading and safe for concurrent use.
type Set struct {
	PeerAuthentications   []*PeerAuthentication
	AuthorizationPolicies []*AuthorizationPolicy // sorted by namespace, then name

	opts  Options
	authz map[string]*nsIndex
}

// Options returns the options the Set was loaded with, defaults filled in.
func (s *Set) Options() Options { return s.opts }

type labelKV struct{ k, v string }

// nsIndex holds the sidecar-applicable AuthorizationPolicies of one
// namespace: those without a selector, and those with one, filed under a
// single label of their selector so that only policies sharing at least
// that label with the workload are ever looked at.
type nsIndex struct {
	all     []int
	byLabel map[labelKV][]int
}

func (s *Set) index() {
	sort.SliceStable(s.AuthorizationPolicies, func(i, j int) bool {
		a, b := s.AuthorizationPolicies[i], s.AuthorizationPolicies[j]
		if a.Namespace != b.Namespace {
			return a.Namespace < b.Namespace
		}
		return a.Name < b.Name
	})
	s.authz = make(map[string]*nsIndex)
	for i, p := range s.AuthorizationPolicies {
		if p.c.targeted {
			continue // targetRef(s) attach to gateways and waypoints, never to sidecars
		}
		ix := s.authz[p.Namespace]
		if ix == nil {
			ix = &nsIndex{byLabel: make(map[labelKV][]int)}
			s.authz[p.Namespace] = ix
		}
		if len(p.c.selector) == 0 {
			ix.all = append(ix.all, i)
			continue
		}
		first := ""
		for k := range p.c.selector {
			if first == "" || k < first {
				first = k
			}
		}
		kv := labelKV{first, p.c.selector[first]}
		ix.byLabel[kv] = append(ix.byLabel[kv], i)
	}
}

// checkDuplicates reports objects of one kind sharing namespace and name,
// which a cluster could never hold.
func checkDuplicates(b *builder) {
	seen := map[string]Meta{}
	dup := func(kind string, m Meta) {
		key := kind + " " + m.Key()
		if prev, ok := seen[key]; ok {
			b.errs = append(b.errs, &Error{File: m.File, Document: m.Document, Path: "metadata.name",
				Msg: fmt.Sprintf("duplicate %s %s (first in %s document %d)", kind, m.Key(), prev.File, prev.Document)})
			return
		}
		seen[key] = m
	}
	for _, p := range b.set.PeerAuthentications {
		dup("PeerAuthentication", p.Meta)
	}
	for _, p := range b.set.AuthorizationPolicies {
		dup("AuthorizationPolicy", p.Meta)
	}
}

// applicable appends to buf the indexes of the AuthorizationPolicies that
// apply to a workload: those in its namespace whose selector matches, and
// those in the root namespace whose selector matches (mesh-wide), in
// namespace/name order.
func (s *Set) applicable(namespace string, labels map[string]string, buf []int) []int {
	add := func(ix *nsIndex) {
		if ix == nil {
			return
		}
		buf = append(buf, ix.all...)
		for k, v := range labels {
			for _, i := range ix.byLabel[labelKV{k, v}] {
				if selectorMatches(s.AuthorizationPolicies[i].c.selector, labels) {
					buf = append(buf, i)
				}
			}
		}
	}
	add(s.authz[namespace])
	if namespace != s.opts.RootNamespace {
		add(s.authz[s.opts.RootNamespace])
	}
	sort.Ints(buf)
	return buf
}

func selectorMatches(sel, labels map[string]string) bool {
	for k, v := range sel {
		if lv, ok := labels[k]; !ok || lv != v {
			return false
		}
	}
	return true
}

// MTLSMode returns the effective PeerAuthentication mode (MTLSStrict,
// MTLSPermissive or MTLSDisable) for a workload's port, and the "namespace/name" of
// the policy that set it ("" for the PERMISSIVE default).
//
// Precedence follows Istio (ComposePeerAuthentication in
// pilot/pkg/security/authn/policy_applier.go): a policy with a selector
// matching the workload in its namespace, over a namespace-wide policy (no
// selector), over a mesh-wide policy (no selector, in the root namespace).
// A policy with a selector in the root namespace is ignored, for workloads
// in the root namespace too. A mode of UNSET inherits from the next level
// up. portLevelMtls applies only on selector policies (elsewhere it is
// ignored); pass port 0 to ask about the workload as a whole. Among several
// policies at one level the oldest wins (creationTimestamp, then name); a
// missing creationTimestamp counts as oldest.
func (s *Set) MTLSMode(namespace string, labels map[string]string, port uint32) (mode MTLSMode, policy string) {
	var workload, ns, mesh *PeerAuthentication
	root := s.opts.RootNamespace
	for _, p := range s.PeerAuthentications {
		sel := p.Spec.GetSelector().GetMatchLabels()
		switch {
		case len(sel) == 0 && p.Namespace == root:
			mesh = older(mesh, p)
		case len(sel) == 0 && p.Namespace == namespace:
			ns = older(ns, p)
		case len(sel) > 0 && p.Namespace == namespace && p.Namespace != root && selectorMatches(sel, labels):
			workload = older(workload, p)
		}
	}
	if workload != nil {
		if m := workload.Spec.GetPortLevelMtls()[port]; port != 0 && m.GetMode() != secv1beta1.PeerAuthentication_MutualTLS_UNSET {
			return MTLSMode(m.GetMode().String()), workload.Key()
		}
		if m := workload.Spec.GetMtls().GetMode(); m != secv1beta1.PeerAuthentication_MutualTLS_UNSET {
			return MTLSMode(m.String()), workload.Key()
		}
	}
	for _, p := range []*PeerAuthentication{ns, mesh} {
		if m := p.GetSpec().GetMtls().GetMode(); p != nil && m != secv1beta1.PeerAuthentication_MutualTLS_UNSET {
			return MTLSMode(m.String()), p.Key()
		}
	}
	return MTLSPermissive, ""
}

// GetSpec returns p's spec, nil for a nil p.
func (p *PeerAuthentication) GetSpec() *secv1beta1.PeerAuthentication {
	if p == nil {
		return nil
	}
	return p.Spec
}

func older(cur, p *PeerAuthentication) *PeerAuthentication {
	if cur == nil {
		return p
	}
	if !p.CreationTimestamp.Equal(cur.CreationTimestamp) {
		if p.CreationTimestamp.Before(cur.CreationTimestamp) {
			return p
		}
		return cur
	}
	if p.Name < cur.Name {
		return p
	}
	return cur
}
