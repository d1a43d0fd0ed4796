package policy

import (
	"fmt"
	"net/netip"
	"regexp"
	"strconv"
	"strings"

	secv1beta1 "istio.io/api/security/v1beta1"
)

// compiled is an AuthorizationPolicy prepared for evaluation: CIDRs parsed,
// condition keys resolved, path templates turned into regexps.
type compiled struct {
	key      string // namespace/name, for decisions: built once, not per request
	action   Action
	provider string
	dryRun   bool
	targeted bool // targetRef(s) set: ignored by sidecars
	selector map[string]string
	rules    []rule
}

type rule struct {
	from []sourceMatch
	to   []operationMatch
	when []condition
	// usesHTTP is set when the rule references an attribute only HTTP
	// carries; on TCP such a rule is dropped by ALLOW.
	usesHTTP bool
}

type sourceMatch struct {
	principals, notPrincipals               []string
	requestPrincipals, notRequestPrincipals []string
	namespaces, notNamespaces               []string
	serviceAccounts, notServiceAccounts     []serviceAccount
	trustDomains, notTrustDomains           []string
	ipBlocks, notIPBlocks                   []netip.Prefix
	remoteIPBlocks, notRemoteIPBlocks       []netip.Prefix
}

type operationMatch struct {
	hosts, notHosts     []string
	ports, notPorts     []string
	methods, notMethods []string
	paths, notPaths     []pathMatcher
}

// serviceAccount is a service account a policy names, "NS/SA" after the
// policy's namespace is filled in, with the pattern Istio's
// srcServiceAccountGenerator matches peer identities with:
// spiffe://.+/ns/NS/(.+/|)sa/SA(/.+)? (whole identity, RE2).
type serviceAccount struct {
	name string
	re   *regexp.Regexp // on the identity without "spiffe://"
}

type pathMatcher struct {
	pattern  string
	template *regexp.Regexp // set for {*} / {**} templates
}

type condKind int

const (
	condHeader condKind = iota
	condSourceIP
	condRemoteIP
	condSourceNamespace
	condSourcePrincipal
	condRequestPrincipal
	condAudiences
	condPresenter
	condClaims
	condDestinationIP
	condDestinationPort
	condSNI
	condSourceServiceAccount
	condSourceTrustDomain
	condFilterMetadata
)

var condKeys = map[string]condKind{
	"source.ip":              condSourceIP,
	"remote.ip":              condRemoteIP,
	"source.namespace":       condSourceNamespace,
	"source.principal":       condSourcePrincipal,
	"source.serviceAccount":  condSourceServiceAccount,
	"source.trustDomain":     condSourceTrustDomain,
	"request.auth.principal": condRequestPrincipal,
	"request.auth.audiences": condAudiences,
	"request.auth.presenter": condPresenter,
	"destination.ip":         condDestinationIP,
	"destination.port":       condDestinationPort,
	"connection.sni":         condSNI,
}

// httpOnly reports whether the condition needs attributes that only HTTP
// requests carry.
func (k condKind) httpOnly() bool {
	switch k {
	case condHeader, condRequestPrincipal, condAudiences, condPresenter, condClaims:
		return true
	}
	return false
}

type condition struct {
	kind condKind
	// arg is the header name (lower-cased), the claim path, or the filter
	// and metadata key of an experimental.envoy.filters condition.
	arg                   []string
	values, notValues     []string // principals and trust domains rewritten for the trust bundle
	cidrs, notCIDRs       []netip.Prefix
	accounts, notAccounts []serviceAccount // source.serviceAccount
}

// envoyFilterPrefix starts the keys of conditions on Envoy filter metadata,
// such as experimental.envoy.filters.network.mysql_proxy[db.table].
const envoyFilterPrefix = "experimental.envoy.filters."

// compileAuthorizationPolicy validates ap and prepares it for evaluation;
// principals and trust domains are rewritten for tb as Istio's
// Model.MigrateTrustDomain does.
func compileAuthorizationPolicy(ap *secv1beta1.AuthorizationPolicy, meta Meta, tb trustBundle) (compiled, []fieldError) {
	var errs []fieldError
	bad := func(path, format string, args ...any) {
		errs = append(errs, fieldError{path, fmt.Sprintf(format, args...)})
	}
	c := compiled{
		key:      meta.Key(),
		action:   Action(ap.GetAction().String()),
		dryRun:   isTrue(meta.Annotations["istio.io/dry-run"]),
		targeted: ap.GetTargetRef() != nil || len(ap.GetTargetRefs()) > 0,
		selector: ap.GetSelector().GetMatchLabels(),
	}
	if ap.GetSelector() != nil && c.targeted {
		bad("spec.selector", "only one of selector, targetRef or targetRefs can be set")
	}
	if ap.GetAction() == secv1beta1.AuthorizationPolicy_CUSTOM {
		if ap.GetProvider() == nil {
			bad("spec.provider", "required when action is CUSTOM")
		} else if ap.GetProvider().GetName() == "" {
			bad("spec.provider.name", "required when action is CUSTOM")
		}
		c.provider = ap.GetProvider().GetName()
	} else if ap.GetProvider() != nil {
		bad("spec.provider", "must only be set when action is CUSTOM, not %s", c.action)
	}
	for i, r := range ap.GetRules() {
		rp := fmt.Sprintf("spec.rules[%d]", i)
		var cr rule
		if r == nil {
			c.rules = append(c.rules, cr)
			continue
		}
		for j, f := range r.GetFrom() {
			fp := fmt.Sprintf("%s.from[%d].source", rp, j)
			s := f.GetSource()
			if s == nil || isEmptySource(s) {
				bad(fp, "must not be empty")
				continue
			}
			cs := sourceMatch{
				principals: tb.principals(s.GetPrincipals()), notPrincipals: tb.principals(s.GetNotPrincipals()),
				requestPrincipals: s.GetRequestPrincipals(), notRequestPrincipals: s.GetNotRequestPrincipals(),
				namespaces: s.GetNamespaces(), notNamespaces: s.GetNotNamespaces(),
				trustDomains: tb.trustDomains(s.GetTrustDomains()), notTrustDomains: tb.trustDomains(s.GetNotTrustDomains()),
			}
			checkWildcards(s.GetTrustDomains(), fp+".trustDomains", true, bad)
			checkWildcards(s.GetNotTrustDomains(), fp+".notTrustDomains", true, bad)
			if len(cs.requestPrincipals)+len(cs.notRequestPrincipals) > 0 {
				cr.usesHTTP = true
			}
			if len(s.GetServiceAccounts())+len(s.GetNotServiceAccounts()) > 0 &&
				len(s.GetPrincipals())+len(s.GetNotPrincipals())+len(s.GetNamespaces())+len(s.GetNotNamespaces()) > 0 {
				bad(fp+".serviceAccounts", "cannot be set with principals or namespaces")
			}
			cs.serviceAccounts = serviceAccounts(s.GetServiceAccounts(), meta.Namespace, fp+".serviceAccounts", bad)
			cs.notServiceAccounts = serviceAccounts(s.GetNotServiceAccounts(), meta.Namespace, fp+".notServiceAccounts", bad)
			cs.ipBlocks = cidrs(s.GetIpBlocks(), fp+".ipBlocks", bad)
			cs.notIPBlocks = cidrs(s.GetNotIpBlocks(), fp+".notIpBlocks", bad)
			cs.remoteIPBlocks = cidrs(s.GetRemoteIpBlocks(), fp+".remoteIpBlocks", bad)
			cs.notRemoteIPBlocks = cidrs(s.GetNotRemoteIpBlocks(), fp+".notRemoteIpBlocks", bad)
			cr.from = append(cr.from, cs)
		}
		for j, t := range r.GetTo() {
			tp := fmt.Sprintf("%s.to[%d].operation", rp, j)
			o := t.GetOperation()
			if o == nil || isEmptyOperation(o) {
				bad(tp, "must not be empty")
				continue
			}
			co := operationMatch{
				hosts: lower(o.GetHosts()), notHosts: lower(o.GetNotHosts()),
				ports: o.GetPorts(), notPorts: o.GetNotPorts(),
				methods: o.GetMethods(), notMethods: o.GetNotMethods(),
			}
			if len(co.hosts)+len(co.notHosts)+len(co.methods)+len(co.notMethods)+len(o.GetPaths())+len(o.GetNotPaths()) > 0 {
				cr.usesHTTP = true
			}
			checkPorts(co.ports, tp+".ports", bad)
			checkPorts(co.notPorts, tp+".notPorts", bad)
			co.paths = paths(o.GetPaths(), tp+".paths", bad)
			co.notPaths = paths(o.GetNotPaths(), tp+".notPaths", bad)
			cr.to = append(cr.to, co)
		}
		for j, w := range r.GetWhen() {
			wp := fmt.Sprintf("%s.when[%d]", rp, j)
			cc, ok := compileCondition(w, wp, meta.Namespace, tb, bad)
			if !ok {
				continue
			}
			if cc.kind.httpOnly() {
				cr.usesHTTP = true
			}
			cr.when = append(cr.when, cc)
		}
		c.rules = append(c.rules, cr)
	}
	return c, errs
}

func compileCondition(w *secv1beta1.Condition, wp, policyNS string, tb trustBundle, bad func(string, string, ...any)) (condition, bool) {
	key := w.GetKey()
	var cc condition
	switch {
	case strings.HasPrefix(key, envoyFilterPrefix):
		// Istio's validateMapKey, then envoyFilterGenerator's split:
		// "experimental.envoy.filters.a.b[c]" is filter
		// "envoy.filters.a.b", metadata key "c" (everything after the first
		// "[" but the last "]", taken literally).
		open := strings.Index(key, "[")
		if !strings.HasSuffix(key, "]") || open < 0 || open >= len(key)-2 {
			bad(wp+".key", "invalid filter metadata key %q (want experimental.envoy.filters.FILTER[KEY])", key)
			return cc, false
		}
		filter, mdKey, _ := strings.Cut(strings.TrimSuffix(strings.TrimPrefix(key, "experimental."), "]"), "[")
		cc.kind, cc.arg = condFilterMetadata, []string{filter, mdKey}
	case strings.HasPrefix(key, "request.headers["):
		name, ok := bracketArgs(strings.TrimPrefix(key, "request.headers"))
		if !ok || len(name) != 1 {
			bad(wp+".key", "invalid header key %q (want request.headers[NAME])", key)
			return cc, false
		}
		cc.kind, cc.arg = condHeader, []string{strings.ToLower(name[0])}
	case strings.HasPrefix(key, "request.auth.claims["):
		path, ok := bracketArgs(strings.TrimPrefix(key, "request.auth.claims"))
		if !ok {
			bad(wp+".key", "invalid claim key %q (want request.auth.claims[NAME][NESTED]...)", key)
			return cc, false
		}
		cc.kind, cc.arg = condClaims, path
	default:
		k, ok := condKeys[key]
		if !ok {
			bad(wp+".key", "unknown condition key %q", key)
			return cc, false
		}
		cc.kind = k
	}
	if len(w.GetValues())+len(w.GetNotValues()) == 0 {
		bad(wp, "at least one of values or notValues must be set")
		return cc, false
	}
	cc.values, cc.notValues = w.GetValues(), w.GetNotValues()
	switch cc.kind {
	case condSourceIP, condRemoteIP, condDestinationIP:
		cc.cidrs = cidrs(cc.values, wp+".values", bad)
		cc.notCIDRs = cidrs(cc.notValues, wp+".notValues", bad)
	case condDestinationPort:
		checkPorts(cc.values, wp+".values", bad)
		checkPorts(cc.notValues, wp+".notValues", bad)
	case condSourcePrincipal:
		cc.values, cc.notValues = tb.principals(cc.values), tb.principals(cc.notValues)
	case condSourceTrustDomain:
		checkWildcards(cc.values, wp+".values", false, bad)
		checkWildcards(cc.notValues, wp+".notValues", false, bad)
		cc.values, cc.notValues = tb.trustDomains(cc.values), tb.trustDomains(cc.notValues)
	case condSourceServiceAccount:
		cc.accounts = serviceAccounts(cc.values, policyNS, wp+".values", bad)
		cc.notAccounts = serviceAccounts(cc.notValues, policyNS, wp+".notValues", bad)
	}
	return cc, true
}

// checkWildcards is Istio's CheckWildcardValues (and, for the source's
// trustDomains, CheckTrustDomainValues): at most one "*", only at the start
// or the end; no "/" in a trust domain.
func checkWildcards(in []string, path string, trustDomain bool, bad func(string, string, ...any)) {
	for i, s := range in {
		p := fmt.Sprintf("%s[%d]", path, i)
		switch n := strings.Count(s, "*"); {
		case n > 1:
			bad(p, "invalid value %q: at most one '*' is allowed", s)
		case n == 1 && !strings.HasPrefix(s, "*") && !strings.HasSuffix(s, "*"):
			bad(p, "invalid value %q: '*' is only allowed at the start or the end", s)
		case trustDomain && strings.Contains(s, "/"):
			bad(p, "invalid trust domain %q: must not contain '/'", s)
		}
	}
}

// bracketArgs parses "[a][b]..." into its non-empty parts.
func bracketArgs(s string) ([]string, bool) {
	var out []string
	for s != "" {
		if s[0] != '[' {
			return nil, false
		}
		end := strings.IndexByte(s, ']')
		if end <= 1 {
			return nil, false
		}
		out = append(out, s[1:end])
		s = s[end+1:]
	}
	return out, len(out) > 0
}

func isEmptySource(s *secv1beta1.Source) bool {
	return len(s.GetPrincipals())+len(s.GetNotPrincipals())+len(s.GetRequestPrincipals())+
		len(s.GetNotRequestPrincipals())+len(s.GetNamespaces())+len(s.GetNotNamespaces())+
		len(s.GetServiceAccounts())+len(s.GetNotServiceAccounts())+len(s.GetIpBlocks())+
		len(s.GetNotIpBlocks())+len(s.GetRemoteIpBlocks())+len(s.GetNotRemoteIpBlocks())+
		len(s.GetTrustDomains())+len(s.GetNotTrustDomains()) == 0
}

func isEmptyOperation(o *secv1beta1.Operation) bool {
	return len(o.GetHosts())+len(o.GetNotHosts())+len(o.GetPorts())+len(o.GetNotPorts())+
		len(o.GetMethods())+len(o.GetNotMethods())+len(o.GetPaths())+len(o.GetNotPaths()) == 0
}

func lower(in []string) []string {
	if in == nil {
		return nil
	}
	out := make([]string, len(in))
	for i, s := range in {
		out[i] = strings.ToLower(s)
	}
	return out
}

// cidrs parses IP blocks: a CIDR or a single address.
func cidrs(in []string, path string, bad func(string, string, ...any)) []netip.Prefix {
	var out []netip.Prefix
	for i, s := range in {
		if p, err := netip.ParsePrefix(s); err == nil {
			out = append(out, p.Masked())
			continue
		}
		if a, err := netip.ParseAddr(s); err == nil {
			out = append(out, netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()))
			continue
		}
		bad(fmt.Sprintf("%s[%d]", path, i), "invalid IP address or CIDR %q", s)
	}
	return out
}

func checkPorts(in []string, path string, bad func(string, string, ...any)) {
	for i, s := range in {
		if n, err := strconv.Atoi(s); err != nil || n < 0 || n > 65535 {
			bad(fmt.Sprintf("%s[%d]", path, i), "invalid port %q", s)
		}
	}
}

// maxServiceAccounts and maxServiceAccountLen are the limits of Istio's
// CheckServiceAccount (pkg/config/security).
const (
	maxServiceAccounts   = 16
	maxServiceAccountLen = 320
)

// serviceAccounts validates service account values as Istio's
// CheckServiceAccount does and compiles each into the identity pattern of
// its srcServiceAccountGenerator; a bare NAME is in the policy's namespace.
func serviceAccounts(in []string, policyNS, path string, bad func(string, string, ...any)) []serviceAccount {
	if len(in) > maxServiceAccounts {
		bad(path, "may not have more than %d values", maxServiceAccounts)
		return nil
	}
	var out []serviceAccount
	for i, s := range in {
		ns, sa, qualified := strings.Cut(s, "/")
		if !qualified {
			ns, sa = policyNS, s
		}
		if strings.Contains(s, "*") || ns == "" || sa == "" || strings.Contains(sa, "/") || len(s) > maxServiceAccountLen {
			bad(fmt.Sprintf("%s[%d]", path, i), "invalid service account %q (want NAMESPACE/NAME or NAME, no wildcards, at most %d characters)", s, maxServiceAccountLen)
			continue
		}
		re := regexp.MustCompile("^.+/ns/" + regexp.QuoteMeta(ns) + "/(?:.+/|)sa/" + regexp.QuoteMeta(sa) + "(?:/.+)?$")
		out = append(out, serviceAccount{name: ns + "/" + sa, re: re})
	}
	return out
}

// paths validates path values: "*" may only lead or trail (prefix, suffix,
// presence match), unless the path is an Envoy URI template using {*}/{**}.
func paths(in []string, path string, bad func(string, string, ...any)) []pathMatcher {
	var out []pathMatcher
	for i, s := range in {
		p := fmt.Sprintf("%s[%d]", path, i)
		if strings.Contains(s, "{") || strings.Contains(s, "}") {
			re, err := compileTemplate(s)
			if err != nil {
				bad(p, "invalid path template %q: %v", s, err)
				continue
			}
			out = append(out, pathMatcher{pattern: s, template: re})
			continue
		}
		if len(s) > 2 && strings.Contains(s[1:len(s)-1], "*") {
			bad(p, "invalid path %q: '*' is only allowed as a prefix or suffix", s)
			continue
		}
		if strings.HasPrefix(s, "*") && strings.HasSuffix(s, "*") && s != "*" {
			bad(p, "invalid path %q: '*' is only allowed as a prefix or suffix, not both", s)
			continue
		}
		out = append(out, pathMatcher{pattern: s})
	}
	return out
}

// compileTemplate turns an Envoy URI template into a regexp: {*} matches one
// path segment, {**} the rest of the path and must be the last operator.
func compileTemplate(s string) (*regexp.Regexp, error) {
	var b strings.Builder
	b.WriteString("^")
	sawDouble := false
	for i, seg := range strings.Split(s, "/") {
		if i > 0 {
			b.WriteString("/")
		}
		switch {
		case seg == "{*}":
			if sawDouble {
				return nil, fmt.Errorf("{**} must be the last operator")
			}
			b.WriteString("[^/]+")
		case seg == "{**}":
			if sawDouble {
				return nil, fmt.Errorf("{**} must be the last operator")
			}
			sawDouble = true
			b.WriteString(".*")
		case strings.ContainsAny(seg, "*{}"):
			return nil, fmt.Errorf("segment %q mixes an operator with other characters", seg)
		default:
			b.WriteString(regexp.QuoteMeta(seg))
		}
	}
	b.WriteString("$")
	return regexp.Compile(b.String())
}

// isTrue reads a boolean annotation as Istio does (strconv.ParseBool).
func isTrue(v string) bool {
	b, err := strconv.ParseBool(v)
	return err == nil && b
}
