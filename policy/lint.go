package policy

import (
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"

	"google.golang.org/protobuf/proto"
	secv1beta1 "istio.io/api/security/v1beta1"
)

// Finding is one lint warning about a loaded policy. Its JSON form is part
// of the output of `meshca audit lint`.
type Finding struct {
	Severity Severity `json:"severity"`
	Policy   string   `json:"policy"` // namespace/name
	Rule     int      `json:"rule"`   // index in spec.rules, -1 when not about a rule
	Message  string   `json:"message"`
}

// WorkloadInfo is a known workload: its namespace and pod labels.
type WorkloadInfo struct {
	Namespace string            `json:"namespace"`
	Labels    map[string]string `json:"labels"`
}

// LintOptions say what the linter may assume about the world outside the
// policies.
type LintOptions struct {
	// ServedTrustDomains are the CA's trust domain and its aliases. Empty
	// skips the trust domain check.
	ServedTrustDomains []string
	// Workloads are the known workloads. Nil skips the check for selectors
	// that match no workload.
	Workloads []WorkloadInfo
}

// Lint reports policies that are valid but probably do not do what their
// author meant, sorted by policy, rule and message:
//
//   - a rule using peer identity (principals, namespaces, service accounts,
//     trust domains, or the source.principal, source.namespace,
//     source.serviceAccount and source.trustDomain conditions) on a
//     workload whose effective mTLS mode (MTLSMode at port 0, with the
//     selector labels of the policy) is not STRICT, since plaintext callers
//     have no identity. A DENY rule that uses only the not-forms is not
//     reported: it denies plaintext callers, which errs toward denying and
//     is Istio's idiom for rejecting plaintext;
//   - principals (and notPrincipals, and source.principal condition values)
//     whose trust domain is fixed by the pattern and is not served, when
//     o.ServedTrustDomains is set. "cluster.local" counts as served, since
//     Istio (and Authorize) treat it as the local trust domain;
//   - an ALLOW rule that never takes effect because a DENY policy applying
//     to all of its workloads (same namespace or the root namespace, with a
//     selector that is a subset of the ALLOW policy's) has an empty rule;
//     and a rule that duplicates an earlier rule of the same policy;
//   - an ALLOW policy without rules (it denies every request to its
//     workloads), rules that can never match because a field's values are
//     all excluded by its not-form, and ALLOW policies none of whose rules
//     can match;
//   - when o.Workloads is not nil, a selector matching no known workload
//     (in the policy's namespace; in any namespace for an
//     AuthorizationPolicy in the root namespace);
//   - PeerAuthentication parts istiod ignores: a selector policy in the root
//     namespace, portLevelMtls on a policy without a selector.
//
// Policies with targetRef(s) attach to gateways and waypoints; only the
// checks that do not depend on sidecars (trust domains, duplicate and
// unsatisfiable rules, empty ALLOW policies) apply to them. Dry-run
// policies are linted as if enforced, except that they shadow nothing and
// an empty dry-run ALLOW policy denies nothing.
func (s *Set) Lint(o LintOptions) []Finding {
	l := &linter{s: s, o: o}
	for _, p := range s.AuthorizationPolicies {
		l.policy(p)
	}
	for _, p := range s.PeerAuthentications {
		l.peerAuthentication(p)
	}
	sort.Slice(l.out, func(i, j int) bool {
		a, b := l.out[i], l.out[j]
		if a.Policy != b.Policy {
			return a.Policy < b.Policy
		}
		if a.Rule != b.Rule {
			return a.Rule < b.Rule
		}
		return a.Message < b.Message
	})
	out := l.out[:0]
	for i, f := range l.out {
		if i == 0 || f != l.out[i-1] {
			out = append(out, f)
		}
	}
	return out
}

type linter struct {
	s   *Set
	o   LintOptions
	out []Finding
}

func (l *linter) add(policy string, rule int, msg string) {
	l.out = append(l.out, Finding{Severity: SeverityWarning, Policy: policy, Rule: rule, Message: msg})
}

func (l *linter) policy(p *AuthorizationPolicy) {
	key, c := p.Key(), &p.c
	rules := p.Spec.GetRules()

	// 4. ALLOW policies that can never match.
	if c.action == ActionAllow && !c.dryRun {
		if len(rules) == 0 {
			l.add(key, -1, "allows nothing: denies every request to its workloads")
		}
	}
	unsat := 0
	for i := range c.rules {
		if why := unsatisfiable(&c.rules[i]); why != "" {
			unsat++
			l.add(key, i, "never matches: "+why)
		}
	}
	if c.action == ActionAllow && !c.dryRun && len(rules) > 0 && unsat == len(rules) {
		l.add(key, -1, "allows nothing: no rule can match, so it denies every request to its workloads")
	}

	// 3b. Duplicate rules.
	for i := range rules {
		for k := 0; k < i; k++ {
			if proto.Equal(rules[i], rules[k]) {
				l.add(key, i, fmt.Sprintf("duplicate of rule %d", k))
				break
			}
		}
	}

	// 2. Trust domains.
	if len(l.o.ServedTrustDomains) > 0 {
		for i, r := range rules {
			for j, f := range r.GetFrom() {
				l.trustDomains(key, i, fmt.Sprintf("from[%d].source.principals", j), f.GetSource().GetPrincipals())
				l.trustDomains(key, i, fmt.Sprintf("from[%d].source.notPrincipals", j), f.GetSource().GetNotPrincipals())
			}
			for j, w := range r.GetWhen() {
				if w.GetKey() == "source.principal" {
					l.trustDomains(key, i, fmt.Sprintf("when[%d].values", j), w.GetValues())
					l.trustDomains(key, i, fmt.Sprintf("when[%d].notValues", j), w.GetNotValues())
				}
			}
		}
	}

	if c.targeted {
		return // the remaining checks concern sidecars
	}

	// 1. Peer identity without STRICT mTLS.
	mode, _ := l.s.MTLSMode(p.Namespace, c.selector, 0)
	if mode != MTLSStrict {
		scope := p.Namespace
		if len(c.selector) > 0 {
			scope += " " + labelString(c.selector)
		}
		for i, r := range rules {
			if fields, why := identityWarning(r, c.action); why != "" {
				l.add(key, i, fmt.Sprintf("rule %d uses %s but mTLS for %s is %s: plaintext callers have no principal or namespace, so %s", i, fields, scope, mode, why))
			}
		}
	}

	// 3a. ALLOW rules shadowed by a DENY policy with an empty rule.
	if c.action == ActionAllow && len(rules) > 0 {
		if d, k := l.denyAll(p); d != nil {
			for i := range rules {
				l.add(key, i, fmt.Sprintf("never takes effect: DENY policy %s rule %d matches every request", d.Key(), k))
			}
		}
	}

	// 5. Selectors matching no known workload.
	if l.o.Workloads != nil && len(c.selector) > 0 {
		root := p.Namespace == l.s.opts.RootNamespace
		if !l.anyWorkload(p.Namespace, root, c.selector) {
			where := "in namespace " + p.Namespace
			if root {
				where = "in any namespace"
			}
			l.add(key, -1, fmt.Sprintf("selector %s matches no known workload %s", labelString(c.selector), where))
		}
	}
}

// peerAuthentication reports the parts of p that istiod ignores, and a
// selector matching no known workload.
func (l *linter) peerAuthentication(p *PeerAuthentication) {
	sel := p.Spec.GetSelector().GetMatchLabels()
	switch {
	case len(sel) > 0 && p.Namespace == l.s.opts.RootNamespace:
		// pilot/pkg/security/authn/policy_applier.go, ComposePeerAuthentication.
		l.add(p.Key(), -1, fmt.Sprintf("PeerAuthentication with a selector in the root namespace %s is ignored: it applies to no workload", p.Namespace))
		return
	case len(sel) == 0 && len(p.Spec.GetPortLevelMtls()) > 0:
		// pkg/config/validation: "mesh/namespace peer authentication cannot
		// have port level mTLS"; the CRD schema says "portLevelMtls requires selector".
		l.add(p.Key(), -1, "PeerAuthentication portLevelMtls without a selector is ignored, and Istio's validation refuses it")
	}
	if l.o.Workloads != nil && len(sel) > 0 && !l.anyWorkload(p.Namespace, false, sel) {
		l.add(p.Key(), -1, fmt.Sprintf("PeerAuthentication selector %s matches no known workload in namespace %s", labelString(sel), p.Namespace))
	}
}

func (l *linter) anyWorkload(ns string, anyNS bool, sel map[string]string) bool {
	for _, w := range l.o.Workloads {
		if (anyNS || w.Namespace == ns) && selectorMatches(sel, w.Labels) {
			return true
		}
	}
	return false
}

// denyAll returns the first enforced DENY policy (and its rule index) with
// an empty rule that applies to every workload p applies to.
func (l *linter) denyAll(p *AuthorizationPolicy) (*AuthorizationPolicy, int) {
	for _, d := range l.s.AuthorizationPolicies {
		if d.c.action != ActionDeny || d.c.dryRun || d.c.targeted {
			continue
		}
		if d.Namespace != p.Namespace && d.Namespace != l.s.opts.RootNamespace {
			continue
		}
		if !selectorMatches(d.c.selector, p.c.selector) {
			continue // d's selector must be a subset of p's
		}
		for k := range d.c.rules {
			if r := &d.c.rules[k]; len(r.from)+len(r.to)+len(r.when) == 0 {
				return d, k
			}
		}
	}
	return nil, -1
}

// identityWarning returns the identity fields rule r uses and what that
// means for plaintext callers; why is "" when r uses none, or when the
// consequence needs no warning (a DENY rule denying plaintext callers).
func identityWarning(r *secv1beta1.Rule, action Action) (fields, why string) {
	var used []string
	seen := map[string]bool{}
	use := func(name string, n int) bool {
		if n == 0 {
			return false
		}
		if !seen[name] {
			seen[name] = true
			used = append(used, name)
		}
		return true
	}
	allPositive, neg, whenPositive := len(r.GetFrom()) > 0, false, false
	for _, f := range r.GetFrom() {
		s := f.GetSource()
		pos := false
		pos = use("principals", len(s.GetPrincipals())) || pos
		pos = use("namespaces", len(s.GetNamespaces())) || pos
		pos = use("serviceAccounts", len(s.GetServiceAccounts())) || pos
		pos = use("trustDomains", len(s.GetTrustDomains())) || pos
		neg = use("notPrincipals", len(s.GetNotPrincipals())) || neg
		neg = use("notNamespaces", len(s.GetNotNamespaces())) || neg
		neg = use("notServiceAccounts", len(s.GetNotServiceAccounts())) || neg
		neg = use("notTrustDomains", len(s.GetNotTrustDomains())) || neg
		allPositive = allPositive && pos
	}
	for _, w := range r.GetWhen() {
		if k := w.GetKey(); k == "source.principal" || k == "source.namespace" || k == "source.serviceAccount" || k == "source.trustDomain" {
			whenPositive = use(k, len(w.GetValues())) || whenPositive
			neg = use(k+" notValues", len(w.GetNotValues())) || neg
		}
	}
	if len(used) == 0 {
		return "", ""
	}
	switch {
	case allPositive || whenPositive:
		switch action {
		case ActionAllow:
			why = "this rule never allows them"
		case ActionDeny:
			why = "this rule never denies them"
		default:
			why = "this rule never matches them"
		}
	case neg:
		switch action {
		case ActionAllow:
			why = "they satisfy its not-forms: this rule can allow them whoever they are"
		case ActionDeny:
			return "", ""
		default:
			why = "they satisfy its not-forms: this rule can match them whoever they are"
		}
	default:
		why = "the sources using them never match plaintext callers"
	}
	return strings.Join(used, ", "), why
}

// trustDomains reports principal patterns whose trust domain is fixed and
// not served.
func (l *linter) trustDomains(policy string, rule int, field string, principals []string) {
	for _, p := range principals {
		if strings.HasPrefix(p, "spiffe://") {
			// Istio compares policy principals without the scheme: this
			// value can never match a peer.
			l.add(policy, rule, fmt.Sprintf("rule %d %s %q starts with spiffe://: Istio principals omit the scheme, so it never matches", rule, field, p))
			continue
		}
		td, ok := patternTrustDomain(p)
		if !ok || td == "cluster.local" {
			continue
		}
		served := false
		for _, s := range l.o.ServedTrustDomains {
			if s == td {
				served = true
				break
			}
		}
		if !served {
			l.add(policy, rule, fmt.Sprintf("rule %d %s %q is in trust domain %q, which the CA does not serve (serves %s)",
				rule, field, p, td, strings.Join(l.o.ServedTrustDomains, ", ")))
		}
	}
}

// patternTrustDomain returns the trust domain a principal pattern fixes:
// "td/ns/x/sa/y", "spiffe://td/...", or a prefix pattern "td/ns/*". "*",
// suffix patterns and prefixes ending inside the trust domain fix none.
func patternTrustDomain(p string) (string, bool) {
	p = strings.TrimPrefix(p, "spiffe://")
	if strings.HasPrefix(p, "*") {
		return "", false
	}
	p = strings.TrimSuffix(p, "*")
	td, _, ok := strings.Cut(p, "/")
	if !ok || td == "" || strings.Contains(td, "*") {
		return "", false
	}
	return td, true
}

// unsatisfiable explains why rule r can never match, or returns "": some
// condition, every source or every operation has a field whose values are
// all excluded by its not-form.
func unsatisfiable(r *rule) string {
	for j, w := range r.when {
		if why := excludedCond(&w); why != "" {
			return fmt.Sprintf("when[%d] %s", j, why)
		}
	}
	if len(r.from) > 0 {
		var whys []string
		for j := range r.from {
			why := excludedSource(&r.from[j])
			if why == "" {
				whys = nil
				break
			}
			whys = append(whys, fmt.Sprintf("from[%d].source %s", j, why))
		}
		if whys != nil {
			return strings.Join(whys, "; ")
		}
	}
	if len(r.to) > 0 {
		var whys []string
		for j := range r.to {
			why := excludedOperation(&r.to[j])
			if why == "" {
				whys = nil
				break
			}
			whys = append(whys, fmt.Sprintf("to[%d].operation %s", j, why))
		}
		if whys != nil {
			return strings.Join(whys, "; ")
		}
	}
	return ""
}

func excludedSource(m *sourceMatch) string {
	switch {
	case excluded(m.principals, m.notPrincipals):
		return "principals are all excluded by notPrincipals"
	case excluded(m.requestPrincipals, m.notRequestPrincipals):
		return "requestPrincipals are all excluded by notRequestPrincipals"
	case excluded(m.namespaces, m.notNamespaces):
		return "namespaces are all excluded by notNamespaces"
	case excludedAccounts(m.serviceAccounts, m.notServiceAccounts):
		return "serviceAccounts are all excluded by notServiceAccounts"
	case excluded(m.trustDomains, m.notTrustDomains):
		return "trustDomains are all excluded by notTrustDomains"
	case excludedCIDRs(m.ipBlocks, m.notIPBlocks):
		return "ipBlocks are all excluded by notIpBlocks"
	case excludedCIDRs(m.remoteIPBlocks, m.notRemoteIPBlocks):
		return "remoteIpBlocks are all excluded by notRemoteIpBlocks"
	}
	return ""
}

func excludedOperation(m *operationMatch) string {
	switch {
	case excluded(m.hosts, m.notHosts):
		return "hosts are all excluded by notHosts"
	case excludedExact(m.ports, m.notPorts):
		return "ports are all excluded by notPorts"
	case excluded(m.methods, m.notMethods):
		return "methods are all excluded by notMethods"
	case excludedPaths(m.paths, m.notPaths):
		return "paths are all excluded by notPaths"
	}
	return ""
}

func excludedCond(c *condition) string {
	var ex bool
	switch c.kind {
	case condSourceIP, condRemoteIP, condDestinationIP:
		ex = excludedCIDRs(c.cidrs, c.notCIDRs)
	case condDestinationPort:
		ex = excludedExact(c.values, c.notValues)
	case condSourceServiceAccount:
		ex = excludedAccounts(c.accounts, c.notAccounts)
	case condFilterMetadata:
		ex = excludedMetadata(c.values, c.notValues)
	default:
		ex = excluded(c.values, c.notValues)
	}
	if ex {
		return "values are all excluded by notValues"
	}
	return ""
}

// allCovered reports whether values is non-empty and every value is covered
// by some not-value: a rule that can then never match.
func allCovered[T any](values, notValues []T, covers func(not, v T) bool) bool {
	if len(values) == 0 {
		return false
	}
	for _, v := range values {
		if !slices.ContainsFunc(notValues, func(n T) bool { return covers(n, v) }) {
			return false
		}
	}
	return true
}

// excluded: every value is excluded by a not-value, the same pattern or "*"
// (which matches every non-empty string, and every value but the exact ""
// matches only non-empty ones). Both sides go through the same matcher, so
// this is sound.
func excluded(values, notValues []string) bool {
	return allCovered(values, notValues, func(n, v string) bool { return n == v || (n == "*" && v != "") })
}

// excludedAccounts: every service account is a not-service-account.
func excludedAccounts(values, notValues []serviceAccount) bool {
	return allCovered(values, notValues, func(n, v serviceAccount) bool { return n.name == v.name })
}

// excludedMetadata: every filter metadata value is a not-value, or "*"
// covers it among string values, or "[*]" among list values. A string
// pattern never covers a list pattern, nor the other way round.
func excludedMetadata(values, notValues []string) bool {
	isList := func(v string) bool { return strings.HasPrefix(v, "[") && strings.HasSuffix(v, "]") }
	return allCovered(values, notValues, func(n, v string) bool {
		switch {
		case n == v:
			return true
		case n == "*":
			return !isList(v)
		case isList(n) && strings.Trim(n, "[]") == "*":
			return isList(v) && strings.Trim(v, "[]") != ""
		}
		return false
	})
}

// excludedExact: every value equals a not-value (ports).
func excludedExact(values, notValues []string) bool {
	return allCovered(values, notValues, func(n, v string) bool { return n == v })
}

// excludedPaths: every path is a not-path, or "*" covers it.
func excludedPaths(paths, notPaths []pathMatcher) bool {
	return allCovered(paths, notPaths, func(n, p pathMatcher) bool {
		return n.pattern == p.pattern || (n.template == nil && n.pattern == "*" && p.template == nil && p.pattern != "")
	})
}

// excludedCIDRs: every block lies inside some not-block.
func excludedCIDRs(blocks, notBlocks []netip.Prefix) bool {
	return allCovered(blocks, notBlocks, func(n, b netip.Prefix) bool {
		return n.Addr().Is4() == b.Addr().Is4() && n.Bits() <= b.Bits() && n.Contains(b.Addr())
	})
}

// labelString renders labels as "k=v,k2=v2", keys sorted.
func labelString(m map[string]string) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for i, k := range keys {
		keys[i] = k + "=" + m[k]
	}
	return strings.Join(keys, ",")
}
