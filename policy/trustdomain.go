package policy

import (
	"slices"
	"strings"
)

// localClusterDomain is the trust domain Istio reads in a policy principal
// as "the local trust domain, whatever it is called".
const localClusterDomain = "cluster.local"

// trustBundle is the mesh trust domain followed by its aliases: the
// identities Istio treats as one, as pilot/pkg/security/trustdomain.Bundle
// does. Policies are rewritten with it when they are compiled, so matching
// stays a plain string match.
type trustBundle []string

func (o Options) trustBundle() trustBundle {
	return append(trustBundle{o.TrustDomain}, o.TrustDomainAliases...)
}

// principals rewrites policy principals (principals, notPrincipals and the
// source.principal condition) for the trust domain and its aliases, as
// Istio's Bundle.ReplaceTrustDomainAliases does:
//
//   - only a principal of exactly five "/"-separated parts
//     ("TD/ns/NS/sa/SA") whose trust domain part is not "*" is rewritten;
//     "*", "*/ns/foo/sa/bar" and prefixes like "td/ns/foo/*" stay as written;
//   - it is rewritten when its trust domain is "cluster.local" or matches a
//     bundle member (exactly, or either side a "*" prefix or suffix
//     pattern): into one principal per member, that member's name in place
//     of the trust domain, except that a "*suffix" trust domain matching the
//     member stays as written;
//   - any other trust domain stays as written, so a foreign identity never
//     becomes a local one.
//
// Even without aliases this matters: "cluster.local/ns/foo/sa/bar" in a
// mesh whose trust domain is "example.org" means "example.org/ns/foo/sa/bar"
// only.
func (b trustBundle) principals(in []string) []string {
	if len(in) == 0 {
		return in
	}
	out := make([]string, 0, len(in)*len(b))
	for _, p := range in {
		parts := strings.Split(p, "/")
		if len(parts) != 5 || parts[0] == "*" {
			out = append(out, p)
			continue
		}
		td := parts[0]
		if td != localClusterDomain && !b.anyMatch(td) {
			out = append(out, p)
			continue
		}
		start := len(out)
		for _, member := range b {
			np := p
			if !suffixPattern(member, td) {
				np = member + p[len(td):]
			}
			if !slices.Contains(out[start:], np) {
				out = append(out, np)
			}
		}
	}
	return out
}

// trustDomains expands trust domain values (trustDomains, notTrustDomains
// and the source.trustDomain condition) as Istio's
// Bundle.ExpandTrustDomainAliases does: a value equal to a bundle member
// stands for every member. Patterns and "cluster.local" are not special.
func (b trustBundle) trustDomains(in []string) []string {
	if len(in) == 0 {
		return in
	}
	out := make([]string, 0, len(in))
	add := func(v string) {
		if !slices.Contains(out, v) {
			out = append(out, v)
		}
	}
	for _, v := range in {
		if slices.Contains(b, v) {
			for _, m := range b {
				add(m)
			}
			continue
		}
		add(v)
	}
	return out
}

// anyMatch is Istio's trustdomain.stringMatch: td and a member match when
// equal, when the member is "*", or when either is a "*" prefix or suffix
// pattern the other satisfies.
func (b trustBundle) anyMatch(td string) bool {
	for _, m := range b {
		if td == m || m == "*" || prefixPattern(td, m) || prefixPattern(m, td) || suffixPattern(td, m) || suffixPattern(m, td) {
			return true
		}
	}
	return false
}

// prefixPattern reports whether pattern ends in "*" and s starts with the
// rest of it.
func prefixPattern(s, pattern string) bool {
	rest, ok := strings.CutSuffix(pattern, "*")
	return ok && strings.HasPrefix(s, rest)
}

// suffixPattern reports whether pattern starts with "*" and s ends with the
// rest of it.
func suffixPattern(s, pattern string) bool {
	rest, ok := strings.CutPrefix(pattern, "*")
	return ok && strings.HasSuffix(s, rest)
}

// trustDomainMatches is Istio's srcTrustDomainGenerator for a peer
// identity without "spiffe://": "*" matches any identity, a value matches
// the identity's first segment (exactly, or as a "*" prefix or suffix
// pattern), and the identity must have a path after it.
func trustDomainMatches(pattern, principal string) bool {
	if principal == "" {
		return false
	}
	if pattern == "*" {
		return true
	}
	td, _, ok := strings.Cut(principal, "/")
	return ok && matchString(pattern, td)
}
