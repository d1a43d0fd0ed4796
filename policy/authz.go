package policy

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// Request describes a request (or TCP connection) to a workload, as the
// workload's sidecar would see it. Its JSON form is the input contract of
// `meshca audit authz`.
type Request struct {
	// Protocol is "HTTP" (the default when empty) or "TCP". On TCP the
	// HTTP-only attributes (hosts, methods, paths, request principals,
	// request.headers and request.auth.* conditions) do not exist.
	Protocol    string      `json:"protocol"`
	Workload    Workload    `json:"workload"`
	Source      Source      `json:"source"`
	Request     HTTPRequest `json:"request"`
	Destination Destination `json:"destination"`
	Connection  Connection  `json:"connection"`
	// CustomVerdicts says what each CUSTOM provider would answer, Allow
	// or Deny, keyed by provider name.
	CustomVerdicts map[string]Verdict `json:"custom_verdicts"`
	// FilterMetadata is the dynamic metadata Envoy's filters set for the
	// request or connection, by filter name and then key, which
	// experimental.envoy.filters.FILTER[KEY] conditions match: for the
	// MySQL proxy {"envoy.filters.network.mysql_proxy": {"db.table":
	// ["update"]}}. A condition value "v" matches a string value, "[v]" a
	// list with a string element matching v; other values match neither.
	FilterMetadata map[string]map[string]any `json:"filter_metadata"`
}

// Workload identifies the destination workload.
type Workload struct {
	Namespace string            `json:"namespace"`
	Labels    map[string]string `json:"labels"`
}

// Source is the peer. Principal is its mTLS identity, with or without the
// "spiffe://" prefix; empty means plaintext, and then the peer has no
// namespace either (Istio derives source.namespace from the certificate).
// Namespace is used only when Principal is set but has no "/ns/" segment.
type Source struct {
	Principal string `json:"principal"`
	Namespace string `json:"namespace"`
	IP        string `json:"ip"`
	// RemoteIP is the original client address (X-Forwarded-For or proxy
	// protocol); it defaults to IP.
	RemoteIP string `json:"remote_ip"`
}

// HTTPRequest holds the HTTP attributes, including the authenticated JWT
// (RequestAuthentication) as principal "iss/sub", claims, audiences and
// presenter (azp). Claims may nest; list-valued claims match when any
// string element matches.
type HTTPRequest struct {
	Principal string            `json:"principal"`
	Claims    map[string]any    `json:"claims"`
	Audiences []string          `json:"audiences"`
	Presenter string            `json:"presenter"`
	Method    string            `json:"method"`
	Path      string            `json:"path"`
	Host      string            `json:"host"`
	Headers   map[string]string `json:"headers"`
}

// Destination is the address the request was sent to.
type Destination struct {
	IP   string `json:"ip"`
	Port uint32 `json:"port"`
}

// Connection holds TLS connection attributes.
type Connection struct {
	SNI string `json:"sni"`
}

// Decision is the outcome of Authorize and why. Its JSON form is the
// output contract of `meshca audit authz`.
type Decision struct {
	Decision Verdict `json:"decision"`
	// Action of the deciding policy (ActionCustom, ActionDeny or
	// ActionAllow); ActionAllow too when ALLOW policies apply but none
	// matched; empty when no policy decided.
	Action Action `json:"action"`
	Policy string `json:"policy"` // namespace/name of the deciding policy, or ""
	Rule   int    `json:"rule"`   // index of the deciding rule in spec.rules, -1 when none
	Reason string `json:"reason"`
}

// attrs are the request attributes, normalised once per Authorize call.
type attrs struct {
	tcp          bool
	principal    string // without "spiffe://"
	namespace    string
	srcIP, remIP netip.Addr
	dstIP        netip.Addr
	port         string
	sni          string
	reqPrincipal string
	presenter    string
	audiences    []string
	claims       map[string]any
	method, path string // path as normalized for the sidecar
	rawPath      string // path without query and fragment, as sent
	pathRefused  bool   // Envoy answers 400 before any filter
	host         string // lower-cased
	headers      map[string]string
	metadata     map[string]map[string]any
}

func newAttrs(r *Request, norm PathNormalization) *attrs {
	a := &attrs{
		tcp:          strings.EqualFold(r.Protocol, "TCP"),
		principal:    strings.TrimPrefix(r.Source.Principal, "spiffe://"),
		sni:          r.Connection.SNI,
		reqPrincipal: r.Request.Principal,
		presenter:    r.Request.Presenter,
		audiences:    r.Request.Audiences,
		claims:       r.Request.Claims,
		method:       r.Request.Method,
		rawPath:      urlPath(r.Request.Path),
		host:         strings.ToLower(r.Request.Host),
		headers:      r.Request.Headers,
		metadata:     r.FilterMetadata,
	}
	a.path = a.rawPath
	if !a.tcp { // on TCP there is no path, and no HTTP connection manager
		var ok bool
		a.path, ok = normalizePath(a.rawPath, norm)
		a.pathRefused = !ok
	}
	if a.principal != "" {
		a.namespace = namespaceOf(a.principal)
		if a.namespace == "" {
			a.namespace = r.Source.Namespace
		}
	}
	a.srcIP = parseAddr(r.Source.IP)
	a.remIP = parseAddr(r.Source.RemoteIP)
	if !a.remIP.IsValid() {
		a.remIP = a.srcIP
	}
	a.dstIP = parseAddr(r.Destination.IP)
	if r.Destination.Port != 0 {
		a.port = strconv.FormatUint(uint64(r.Destination.Port), 10)
	}
	return a
}

func (a *attrs) header(name string) string {
	if v, ok := a.headers[name]; ok {
		return v
	}
	for k, v := range a.headers {
		if strings.EqualFold(k, name) {
			return v
		}
	}
	return ""
}

func parseAddr(s string) netip.Addr {
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}
	}
	return a.Unmap()
}

// namespaceOf extracts NS from an identity "TD/ns/NS/sa/SA".
func namespaceOf(principal string) string {
	_, rest, ok := strings.Cut(principal, "/ns/")
	if !ok {
		return ""
	}
	ns, _, _ := strings.Cut(rest, "/")
	return ns
}

// Authorize returns the decision a workload's sidecar would make for req,
// following Istio's evaluation order: CUSTOM, then DENY, then ALLOW. AUDIT
// policies and dry-run policies never change the decision (they are noted in
// the reason when they match); policies with targetRef(s) do not apply to
// sidecars and are ignored.
//
// When a CUSTOM policy matches and req.CustomVerdicts has no answer for its
// provider, the result is DENY with action CUSTOM: the request is allowed
// only if the provider allows it, which this package cannot know.
func (s *Set) Authorize(req Request) Decision {
	a := newAttrs(&req, s.opts.PathNormalization)
	if a.pathRefused {
		return Decision{Deny, "", "", -1, fmt.Sprintf("path %q is refused by the sidecar (400 Bad Request) before authorization: "+
			"%s path normalization fails on a NUL byte", a.rawPath, s.opts.PathNormalization)}
	}
	var buf [32]int
	idx := s.applicable(req.Workload.Namespace, req.Workload.Labels, buf[:0])

	var notes []string
	if a.path != a.rawPath {
		notes = append(notes, fmt.Sprintf("path %q matched as %q (%s path normalization)", a.rawPath, a.path, s.opts.PathNormalization))
	}
	note := func(p *AuthorizationPolicy, r int, what string) {
		notes = append(notes, fmt.Sprintf("%s policy %s rule %d %s", p.c.action, p.c.key, r, what))
	}
	finish := func(d Decision) Decision {
		if len(notes) > 0 {
			d.Reason += "; " + strings.Join(notes, "; ")
		}
		return d
	}

	// CUSTOM: the extension is asked only if a CUSTOM policy matches.
	var pending *Decision
	for _, i := range idx {
		p := s.AuthorizationPolicies[i]
		if p.c.action != ActionCustom {
			continue
		}
		r := s.firstMatch(p, a)
		if r < 0 {
			continue
		}
		if p.c.dryRun {
			note(p, r, fmt.Sprintf("would send the request to provider %q (dry-run)", p.c.provider))
			continue
		}
		verdict, ok := req.CustomVerdicts[p.c.provider]
		switch {
		case ok && strings.EqualFold(string(verdict), string(Deny)):
			return finish(Decision{Deny, ActionCustom, p.c.key, r,
				fmt.Sprintf("CUSTOM policy %s rule %d matched and provider %q denied", p.c.key, r, p.c.provider)})
		case ok && strings.EqualFold(string(verdict), string(Allow)):
			note(p, r, fmt.Sprintf("matched and provider %q allowed", p.c.provider))
		default:
			pending = &Decision{Deny, ActionCustom, p.c.key, r,
				fmt.Sprintf("CUSTOM policy %s rule %d matched: provider %q decides (no custom_verdicts entry for it)", p.c.key, r, p.c.provider)}
		}
		break // at most one provider applies to a workload
	}

	// DENY: any enforced match denies.
	for _, i := range idx {
		p := s.AuthorizationPolicies[i]
		if p.c.action != ActionDeny {
			continue
		}
		r := s.firstMatch(p, a)
		if r < 0 {
			continue
		}
		if p.c.dryRun {
			note(p, r, "would deny (dry-run)")
			continue
		}
		return finish(Decision{Deny, ActionDeny, p.c.key, r, "DENY policy " + p.c.key + " rule " + strconv.Itoa(r) + " matched"})
	}

	// ALLOW, noting AUDIT matches on the way.
	var applicableBuf [16]*AuthorizationPolicy
	applicable := applicableBuf[:0] // ALLOW policies that apply; keys only if none matched
	var allowed *Decision
	for _, i := range idx {
		p := s.AuthorizationPolicies[i]
		switch p.c.action {
		case ActionAudit:
			if r := s.firstMatch(p, a); r >= 0 {
				note(p, r, "matched (audit only)")
			}
			continue
		case ActionAllow:
		default:
			continue
		}
		r := s.firstMatch(p, a)
		if p.c.dryRun {
			if r >= 0 {
				note(p, r, "would allow (dry-run)")
			} else {
				note(p, -1, "would not allow (dry-run)")
			}
			continue
		}
		applicable = append(applicable, p)
		if r >= 0 && allowed == nil {
			allowed = &Decision{Allow, ActionAllow, p.c.key, r, "ALLOW policy " + p.c.key + " rule " + strconv.Itoa(r) + " matched"}
		}
	}
	var d Decision
	switch {
	case allowed != nil:
		d = *allowed
	case len(applicable) == 0:
		d = Decision{Allow, "", "", -1, "no ALLOW policy applies to the workload"}
	default:
		keys := make([]string, len(applicable))
		for i, p := range applicable {
			keys[i] = p.c.key
		}
		d = Decision{Deny, ActionAllow, "", -1, "no ALLOW policy matched (applicable: " + listKeys(keys) + ")"}
	}
	if pending != nil && d.Decision == Allow {
		pending.Reason += "; native policies allow (" + d.Reason + ")"
		d = *pending
	}
	return finish(d)
}

func listKeys(keys []string) string {
	const shown = 5
	if len(keys) <= shown {
		return strings.Join(keys, ", ")
	}
	return fmt.Sprintf("%s and %d more", strings.Join(keys[:shown], ", "), len(keys)-shown)
}

// urlPath is the path as Envoy matches it (url_path): without the query
// string or fragment.
func urlPath(p string) string {
	if i := strings.IndexAny(p, "?#"); i >= 0 {
		return p[:i]
	}
	return p
}

// firstMatch returns the index of the first rule of p matching a, or -1.
func (s *Set) firstMatch(p *AuthorizationPolicy, a *attrs) int {
	// On TCP an ALLOW rule using HTTP-only attributes is dropped
	// altogether (so it matches less); DENY, CUSTOM (built as a deny) and
	// AUDIT rules ignore those attributes (so they match more). Either way
	// the mesh errs toward denying.
	ignoreHTTP := a.tcp && p.c.action != ActionAllow
	for i := range p.c.rules {
		r := &p.c.rules[i]
		if a.tcp && r.usesHTTP && !ignoreHTTP {
			continue
		}
		if s.ruleMatches(r, a, ignoreHTTP) {
			return i
		}
	}
	return -1
}

// ruleMatches: any from, any to, and every when. An empty rule matches all.
func (s *Set) ruleMatches(r *rule, a *attrs, ignoreHTTP bool) bool {
	if len(r.from) > 0 {
		ok := false
		for i := range r.from {
			if s.sourceMatches(&r.from[i], a, ignoreHTTP) {
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
	if len(r.to) > 0 {
		ok := false
		for i := range r.to {
			if operationMatches(&r.to[i], a, ignoreHTTP) {
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
	for i := range r.when {
		c := &r.when[i]
		if ignoreHTTP && c.kind.httpOnly() {
			continue
		}
		if !s.conditionMatches(c, a) {
			return false
		}
	}
	return true
}

func (s *Set) sourceMatches(m *sourceMatch, a *attrs, ignoreHTTP bool) bool {
	return field(m.principals, m.notPrincipals, a.principalMatches) &&
		field(m.namespaces, m.notNamespaces, func(p string) bool { return a.principal != "" && matchString(p, a.namespace) }) &&
		field(m.serviceAccounts, m.notServiceAccounts, a.serviceAccountMatches) &&
		field(m.trustDomains, m.notTrustDomains, a.trustDomainMatches) &&
		(ignoreHTTP || field(m.requestPrincipals, m.notRequestPrincipals, func(p string) bool { return matchString(p, a.reqPrincipal) })) &&
		cidrField(m.ipBlocks, m.notIPBlocks, a.srcIP) &&
		cidrField(m.remoteIPBlocks, m.notRemoteIPBlocks, a.remIP)
}

func operationMatches(m *operationMatch, a *attrs, ignoreHTTP bool) bool {
	portMatch := func(p string) bool { return p == a.port }
	if !field(m.ports, m.notPorts, portMatch) {
		return false
	}
	if ignoreHTTP {
		return true
	}
	return field(m.hosts, m.notHosts, func(p string) bool { return matchString(p, a.host) }) &&
		field(m.methods, m.notMethods, func(p string) bool { return matchString(p, a.method) }) &&
		pathField(m.paths, m.notPaths, a.path)
}

func (s *Set) conditionMatches(c *condition, a *attrs) bool {
	switch c.kind {
	case condSourceIP:
		return cidrField(c.cidrs, c.notCIDRs, a.srcIP)
	case condRemoteIP:
		return cidrField(c.cidrs, c.notCIDRs, a.remIP)
	case condDestinationIP:
		return cidrField(c.cidrs, c.notCIDRs, a.dstIP)
	case condDestinationPort:
		return field(c.values, c.notValues, func(p string) bool { return p == a.port })
	case condSourcePrincipal:
		return field(c.values, c.notValues, a.principalMatches)
	case condSourceTrustDomain:
		return field(c.values, c.notValues, a.trustDomainMatches)
	case condSourceServiceAccount:
		return field(c.accounts, c.notAccounts, a.serviceAccountMatches)
	case condFilterMetadata:
		v, ok := a.metadata[c.arg[0]][c.arg[1]]
		return field(c.values, c.notValues, func(p string) bool { return ok && metadataMatches(p, v) })
	}
	var vals []string
	switch c.kind {
	case condHeader:
		vals = []string{a.header(c.arg[0])}
	case condSourceNamespace:
		vals = []string{a.namespace}
	case condRequestPrincipal:
		vals = []string{a.reqPrincipal}
	case condPresenter:
		vals = []string{a.presenter}
	case condSNI:
		vals = []string{a.sni}
	case condAudiences:
		vals = a.audiences
	case condClaims:
		vals = claimValues(a.claims, c.arg)
	}
	anyVal := func(p string) bool {
		for _, v := range vals {
			if matchString(p, v) {
				return true
			}
		}
		return false
	}
	return field(c.values, c.notValues, anyVal)
}

// claimValues resolves a nested claim path to its string values: a string
// claim yields itself, a list claim its string elements.
func claimValues(claims map[string]any, path []string) []string {
	var cur any = claims
	for _, k := range path {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil
		}
		cur = m[k]
	}
	switch v := cur.(type) {
	case string:
		return []string{v}
	case []string:
		return v
	case []any:
		var out []string
		for _, e := range v {
			if s, ok := e.(string); ok {
				out = append(out, s)
			}
		}
		return out
	}
	return nil
}

// metadataMatches is one value of an experimental.envoy.filters condition
// against a metadata value, as Istio's envoyFilterGenerator builds the
// matcher: "[v]" (Istio trims every leading "[" and trailing "]") matches a
// list one of whose string elements matches v; any other value matches a
// string. Either way the string match is Istio's (exact, "*" for non-empty,
// prefix*, *suffix).
func metadataMatches(pattern string, v any) bool {
	if strings.HasPrefix(pattern, "[") && strings.HasSuffix(pattern, "]") {
		l, _ := v.([]any)
		inner := strings.Trim(pattern, "[]")
		return slices.ContainsFunc(l, func(e any) bool {
			s, ok := e.(string)
			return ok && matchString(inner, s)
		})
	}
	s, ok := v.(string)
	return ok && matchString(pattern, s)
}

// field implements one rule field and its not-form: some value must match
// (when values are given) and no not-value may match.
func field[T any](values, notValues []T, match func(T) bool) bool {
	if len(values) > 0 {
		ok := false
		for _, v := range values {
			if match(v) {
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
	for _, v := range notValues {
		if match(v) {
			return false
		}
	}
	return true
}

func cidrField(blocks, notBlocks []netip.Prefix, ip netip.Addr) bool {
	in := func(ps []netip.Prefix) bool {
		if !ip.IsValid() {
			return false
		}
		for _, p := range ps {
			if p.Contains(ip) {
				return true
			}
		}
		return false
	}
	if len(blocks) > 0 && !in(blocks) {
		return false
	}
	return !in(notBlocks)
}

func pathField(paths, notPaths []pathMatcher, path string) bool {
	in := func(ps []pathMatcher) bool {
		for _, p := range ps {
			if p.template != nil {
				if p.template.MatchString(path) {
					return true
				}
			} else if matchString(p.pattern, path) {
				return true
			}
		}
		return false
	}
	if len(paths) > 0 && !in(paths) {
		return false
	}
	return !in(notPaths)
}

// matchString is Istio's string match: "*" matches any non-empty value,
// "abc*" is a prefix match, "*abc" a suffix match, anything else exact.
func matchString(pattern, v string) bool {
	switch {
	case pattern == "*":
		return v != ""
	case strings.HasPrefix(pattern, "*"):
		return strings.HasSuffix(v, pattern[1:])
	case strings.HasSuffix(pattern, "*"):
		return strings.HasPrefix(v, pattern[:len(pattern)-1])
	}
	return v == pattern
}

// principalMatches matches a policy principal (already rewritten for the
// trust bundle) against the peer identity ("TD/ns/NS/sa/SA", no
// "spiffe://") with Istio's string match. A plaintext peer (no identity)
// matches no principal, not even "*".
func (a *attrs) principalMatches(pattern string) bool {
	return a.principal != "" && matchString(pattern, a.principal)
}

// serviceAccountMatches matches the peer identity against a service
// account's pattern; a plaintext peer matches none.
func (a *attrs) serviceAccountMatches(sa serviceAccount) bool {
	return a.principal != "" && sa.re.MatchString(a.principal)
}

// trustDomainMatches matches the peer identity against a trust domain value.
func (a *attrs) trustDomainMatches(pattern string) bool {
	return trustDomainMatches(pattern, a.principal)
}
