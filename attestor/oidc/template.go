package oidc

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"text/template"
	"text/template/parse"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// idTemplate is a parsed spiffe_id template. It knows which of its text is
// fixed, written by the administrator, and which comes from claims: a claim
// value may fill a path segment (or part of one) but never add one, unless
// the claim is listed in path_claims; and only fixed text may give an ID the
// Kubernetes shape /ns/<ns>/sa/<sa>.
type idTemplate struct {
	td    spiffeid.TrustDomain
	parts []part
}

// part is fixed text, or a reference to a claim.
type part struct {
	text string   // the fixed text, when keys is nil
	keys []string // the claim's keys, outermost first
	name string   // keys joined with ".": how errors and path_claims name it
	path bool     // listed in path_claims: its value may hold "/"
}

// parseIDTemplate parses text. Only fixed text, {{td}}, {{.claim}} (also
// nested: {{.a.b}}) and {{index . "claim" ...}} are allowed: anything that
// computes (functions, pipelines, conditions) could hide where a value
// lands, and the checks need to know that.
func parseIDTemplate(td spiffeid.TrustDomain, text string, pathClaims []string) (*idTemplate, error) {
	tmpl, err := template.New("spiffe_id").Funcs(template.FuncMap{"td": td.Name}).Parse(text)
	if err != nil {
		return nil, err
	}
	t := &idTemplate{td: td}
	if tmpl.Tree == nil { // empty text
		return nil, errors.New("empty")
	}
	for _, n := range tmpl.Tree.Root.Nodes {
		p, err := parsePart(td, n)
		if err != nil {
			return nil, err
		}
		p.path = p.keys != nil && slices.Contains(pathClaims, p.name)
		t.parts = append(t.parts, p)
	}
	for _, name := range pathClaims {
		if !slices.ContainsFunc(t.parts, func(p part) bool { return p.keys != nil && p.name == name }) {
			return nil, fmt.Errorf("path_claims names %q, which the template does not use", name)
		}
	}
	// Render with a placeholder for every claim: the fixed text must make a
	// valid ID in the trust domain whatever the claims say.
	probe := map[string]any{}
	for _, p := range t.parts {
		m := probe
		for _, k := range p.keys[:max(len(p.keys)-1, 0)] {
			next, ok := m[k].(map[string]any)
			if !ok {
				next = map[string]any{}
				m[k] = next
			}
			m = next
		}
		if len(p.keys) > 0 {
			m[p.keys[len(p.keys)-1]] = "x"
		}
	}
	if _, err := t.execute(probe); err != nil {
		return nil, fmt.Errorf("with every claim \"x\": %w", err)
	}
	return t, nil
}

func parsePart(td spiffeid.TrustDomain, n parse.Node) (part, error) {
	unsupported := fmt.Errorf("%s: only fixed text, {{td}}, {{.claim}} and {{index . \"claim\"}} are allowed", n)
	switch n := n.(type) {
	case *parse.TextNode:
		return part{text: string(n.Text)}, nil
	case *parse.ActionNode:
		if len(n.Pipe.Decl) > 0 || len(n.Pipe.Cmds) != 1 {
			return part{}, unsupported
		}
		args := n.Pipe.Cmds[0].Args
		switch a := args[0].(type) {
		case *parse.IdentifierNode:
			if a.Ident == "td" && len(args) == 1 {
				return part{text: td.Name()}, nil
			}
			if a.Ident == "index" && len(args) >= 3 {
				if _, ok := args[1].(*parse.DotNode); !ok {
					return part{}, unsupported
				}
				var keys []string
				for _, arg := range args[2:] {
					s, ok := arg.(*parse.StringNode)
					if !ok {
						return part{}, unsupported
					}
					keys = append(keys, s.Text)
				}
				return claimPart(keys), nil
			}
		case *parse.FieldNode:
			if len(args) == 1 {
				return claimPart(a.Ident), nil
			}
		}
	}
	return part{}, unsupported
}

func claimPart(keys []string) part {
	return part{keys: keys, name: strings.Join(keys, ".")}
}

// execute renders the ID from claims, refusing a claim value that is not
// one valid SPIFFE path segment (or, for a path claim, a path of them), and
// an ID whose path has the Kubernetes shape /ns/<x>/sa/<y> (anywhere in it,
// in any case) unless the template's fixed text wrote both "ns" and "sa".
func (t *idTemplate) execute(claims map[string]any) (spiffeid.ID, error) {
	var sb strings.Builder
	var fixed []bool // fixed[i]: byte i of the ID is fixed text
	for _, p := range t.parts {
		s := p.text
		if p.keys != nil {
			v, err := p.value(claims)
			if err != nil {
				return spiffeid.ID{}, err
			}
			s = v
		}
		sb.WriteString(s)
		for range len(s) {
			fixed = append(fixed, p.keys == nil)
		}
	}
	rendered := sb.String()
	id, err := spiffeid.FromString(rendered)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("claims make no valid SPIFFE ID (%q): %v", rendered, err)
	}
	if id.TrustDomain() != t.td {
		return spiffeid.ID{}, fmt.Errorf("claims map to %s, outside trust domain %s", id, t.td.Name())
	}
	if id.String() != rendered { // FromString does not normalize; be sure
		return spiffeid.ID{}, fmt.Errorf("claims make no canonical SPIFFE ID (%q)", rendered)
	}
	type segment struct {
		text  string
		fixed bool
	}
	var segs []segment
	start := len(rendered) - len(id.Path()) // at the path's leading "/"
	for i := start; i < len(rendered); {
		j := strings.IndexByte(rendered[i+1:], '/')
		end := len(rendered)
		if j >= 0 {
			end = i + 1 + j
		}
		segs = append(segs, segment{text: rendered[i+1 : end], fixed: !slices.Contains(fixed[i+1:end], false)})
		i = end
	}
	for i := 0; i+3 < len(segs); i++ {
		ns, sa := segs[i], segs[i+2]
		if strings.EqualFold(ns.text, "ns") && strings.EqualFold(sa.text, "sa") && !(ns.fixed && sa.fixed) {
			return spiffeid.ID{}, fmt.Errorf("claims make %s, which has the Kubernetes shape /ns/<ns>/sa/<sa> (reserved for ServiceAccounts) where the template's fixed text does not write it", id)
		}
	}
	return id, nil
}

// value returns the claim's value, checked to stay in its segment.
func (p part) value(claims map[string]any) (string, error) {
	var v any = claims
	for _, k := range p.keys {
		m, ok := v.(map[string]any)
		if !ok {
			return "", fmt.Errorf("lacks a claim the SPIFFE ID needs: %q", p.name)
		}
		if v, ok = m[k]; !ok {
			return "", fmt.Errorf("lacks a claim the SPIFFE ID needs: %q", p.name)
		}
	}
	s, ok := v.(string)
	switch {
	case !ok:
		return "", fmt.Errorf("claim %q is not a string", p.name)
	case s == "":
		return "", fmt.Errorf("claim %q is empty", p.name)
	case p.path:
		for seg := range strings.SplitSeq(s, "/") {
			if err := spiffeid.ValidatePathSegment(seg); err != nil {
				return "", fmt.Errorf("claim %q is not a SPIFFE path (%q): %v", p.name, clip(s), err)
			}
		}
	case strings.Contains(s, "/"):
		return "", fmt.Errorf("claim %q holds a \"/\" (%q), which would add path segments; list it in path_claims if it is a path by nature", p.name, clip(s))
	default:
		if err := spiffeid.ValidatePathSegment(s); err != nil {
			return "", fmt.Errorf("claim %q is not a SPIFFE path segment (%q): %v", p.name, clip(s), err)
		}
	}
	return s, nil
}

// clip shortens a claim value for an error message.
func clip(s string) string {
	const n = 64
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
