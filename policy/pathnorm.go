package policy

import (
	"fmt"
	"strings"
)

// PathNormalization is Istio's meshConfig.pathNormalization.normalization:
// how the sidecar's HTTP connection manager rewrites a request path before
// any filter (authorization included) sees it. Istio sets Envoy's
// normalize_path, merge_slashes and path_with_escaped_slashes_action from it
// (pilot/pkg/networking/core/listener_builder.go).
type PathNormalization string

// Path normalizations, as meshConfig spells them.
const (
	// PathNone leaves the path as sent.
	PathNone PathNormalization = "NONE"
	// PathBase is RFC 3986 normalization as Envoy does it (normalize_path):
	// dot segments removed, backslashes turned into slashes, percent-encoded
	// unreserved characters and dots decoded, characters that must be
	// escaped escaped. Istio's default.
	PathBase PathNormalization = "BASE"
	// PathMergeSlashes is PathBase, then runs of slashes merged.
	PathMergeSlashes PathNormalization = "MERGE_SLASHES"
	// PathDecodeAndMergeSlashes first decodes %2F and %5C (either case)
	// into "/" and "\", then does what PathMergeSlashes does.
	PathDecodeAndMergeSlashes PathNormalization = "DECODE_AND_MERGE_SLASHES"
)

// parsePathNormalization reads a mode; "" and Istio's "DEFAULT" are BASE.
func parsePathNormalization(s string) (PathNormalization, error) {
	switch m := PathNormalization(strings.ToUpper(s)); m {
	case "", "DEFAULT":
		return PathBase, nil
	case PathNone, PathBase, PathMergeSlashes, PathDecodeAndMergeSlashes:
		return m, nil
	}
	return "", fmt.Errorf("policy: unknown path normalization %q (want NONE, BASE, MERGE_SLASHES or DECODE_AND_MERGE_SLASHES)", s)
}

// normalizePath returns the path (no query, no fragment) as the sidecar's
// authorization filter sees it under mode, following Envoy's
// ConnectionManagerUtility::maybeNormalizePath: unescape slashes (only for
// DECODE_AND_MERGE_SLASHES), then RFC 3986 normalization, then merge
// slashes. ok is false when Envoy rejects the request (400) instead:
// normalization fails on an escaped or raw NUL byte. Paths that are not in
// origin form (not starting with "/", such as "*") are left alone.
func normalizePath(path string, mode PathNormalization) (out string, ok bool) {
	if mode == PathNone || !strings.HasPrefix(path, "/") {
		return path, true
	}
	if mode == PathDecodeAndMergeSlashes {
		path = unescapeSlashes(path)
	}
	path, ok = canonicalPath(path)
	if !ok {
		return path, false
	}
	if mode == PathMergeSlashes || mode == PathDecodeAndMergeSlashes {
		path = mergeSlashes(path)
	}
	return path, true
}

// unescapeSlashes decodes %2F, %2f, %5C and %5c, one pass each in that
// order as Envoy's PathUtil::unescapeSlashes does.
func unescapeSlashes(p string) string {
	if !strings.Contains(p, "%") {
		return p
	}
	for _, r := range [][2]string{{"%2F", "/"}, {"%2f", "/"}, {"%5C", `\`}, {"%5c", `\`}} {
		p = strings.ReplaceAll(p, r[0], r[1])
	}
	return p
}

// mergeSlashes collapses runs of "/" into one, keeping a leading and a
// trailing slash (Envoy's PathUtil::mergeSlashes; like it, "//" and "///"
// become "//", a leading and a trailing slash around nothing).
func mergeSlashes(p string) string {
	if !strings.Contains(p, "//") {
		return p
	}
	var b strings.Builder
	b.Grow(len(p))
	if strings.HasPrefix(p, "/") {
		b.WriteByte('/')
	}
	first := true
	for _, seg := range strings.Split(p, "/") {
		if seg == "" {
			continue
		}
		if !first {
			b.WriteByte('/')
		}
		first = false
		b.WriteString(seg)
	}
	if strings.HasSuffix(p, "/") {
		b.WriteByte('/')
	}
	return b.String()
}

// What the RFC 3986 canonicalizer Envoy uses (Chromium's url library,
// CanonicalizePath) does with each byte of a path.
const (
	pathPass     = iota // copied as is, escaped or not
	pathUnescape        // unreserved: copied; decoded when percent-encoded
	pathEscape          // must be percent-encoded in the output
	pathSpecial         // '.', '\\' and '%': handled on their own
	pathInvalid         // NUL: escaped, and the path is refused
)

// pathClass classifies one byte as Chromium's kPathCharLookup does.
func pathClass(c byte) int {
	switch {
	case c == 0:
		return pathInvalid
	case c < 0x20 || c >= 0x7f:
		return pathEscape
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return pathUnescape
	}
	switch c {
	case '-', '_', '~':
		return pathUnescape
	case '.', '\\', '%':
		return pathSpecial
	case ' ', '"', '#', '<', '>', '?', '^', '`', '{', '|', '}':
		return pathEscape
	}
	return pathPass // ! $ & ' ( ) * + , / : ; = @ [ ]
}

const upperHex = "0123456789ABCDEF"

func unhex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// decodeEscape reads "%XY" at s[i:], returning the byte it encodes.
func decodeEscape(s string, i int) (byte, bool) {
	if i+3 > len(s) || s[i] != '%' {
		return 0, false
	}
	hi, ok1 := unhex(s[i+1])
	lo, ok2 := unhex(s[i+2])
	return hi<<4 | lo, ok1 && ok2
}

// dotLen returns the length of a dot at s[i:]: 1 for ".", 3 for "%2e" or
// "%2E", 0 for none.
func dotLen(s string, i int) int {
	switch {
	case s[i] == '.':
		return 1
	case i+3 <= len(s) && s[i] == '%' && s[i+1] == '2' && (s[i+2] == 'e' || s[i+2] == 'E'):
		return 3
	}
	return 0
}

func isURLSlash(c byte) bool { return c == '/' || c == '\\' }

// dotKind says what a dot at the start of a segment is; consumed is how
// many bytes after the dot belong to it (a second dot, a slash).
func dotKind(s string, afterDot int) (kind int, consumed int) {
	const (
		notDir = iota
		current
		parent
	)
	if afterDot == len(s) {
		return current, 0
	}
	if isURLSlash(s[afterDot]) {
		return current, 1
	}
	if n := dotLen(s, afterDot); n > 0 {
		after := afterDot + n
		if after == len(s) {
			return parent, n
		}
		if isURLSlash(s[after]) {
			return parent, n + 1
		}
	}
	return notDir, 0
}

// canonicalPath is RFC 3986 path normalization with the behaviour of the
// canonicalizer Envoy's normalize_path runs (Chromium's CanonicalizePath):
// "." and ".." segments (also written %2e) are resolved, never above the
// root; "\" becomes "/"; percent-encoded unreserved characters are decoded
// and other valid escapes kept as written; bytes that must be escaped are
// percent-encoded (upper-case hex); a "%" that starts no valid escape is
// kept, guarding against nested escapes that would decode into a new one.
// ok is false for a NUL byte, raw or escaped.
func canonicalPath(s string) (string, bool) {
	if plainPath(s) {
		return s, true // the common case: nothing to rewrite, nothing to allocate
	}
	out := make([]byte, 0, len(s)+8)
	ok := true
	if s == "" || !isURLSlash(s[0]) {
		out = append(out, '/')
	}
	lastBadPercent := -1 // index in out of a '%' that started no valid escape
	for i := 0; i < len(s); i++ {
		c := s[i]
		class := pathClass(c)
		if class != pathSpecial && class != pathEscape && class != pathInvalid {
			out = append(out, c)
			continue
		}
		if n := dotLen(s, i); n > 0 {
			if len(out) > 0 && out[len(out)-1] == '/' {
				kind, consumed := dotKind(s, i+n)
				switch kind {
				case 0: // part of a name
					out = append(out, '.')
					i += n - 1
				case 1: // "."
					i += n + consumed - 1
				case 2: // ".."
					out = upToPreviousSlash(out)
					i += n + consumed - 1
				}
			} else {
				out = append(out, '.')
				i += n - 1
			}
			continue
		}
		switch {
		case c == '\\':
			out = append(out, '/')
		case c == '%':
			v, valid := decodeEscape(s, i)
			if !valid {
				lastBadPercent = len(out)
				out = append(out, '%')
				continue
			}
			i += 2
			switch pathClass(v) {
			case pathUnescape:
				out = append(out, v)
				if lastBadPercent >= 0 && lastBadPercent >= len(out)-3 {
					out = guardNestedEscape(s, i+1, lastBadPercent, out)
				}
			case pathInvalid:
				out = append(out, '%', s[i-1], s[i])
				ok = false
			default:
				out = append(out, '%', s[i-1], s[i])
			}
		case class == pathInvalid:
			out = append(out, '%', upperHex[c>>4], upperHex[c&0xf])
			ok = false
		default: // pathEscape
			out = append(out, '%', upperHex[c>>4], upperHex[c&0xf])
		}
	}
	return string(out), ok
}

// plainPath reports whether canonicalPath would return s unchanged because
// it starts with "/" and holds only bytes copied as they are.
func plainPath(s string) bool {
	if s == "" || s[0] != '/' {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := pathClass(s[i]); c != pathPass && c != pathUnescape {
			return false
		}
	}
	return true
}

// upToPreviousSlash drops the last segment of out, which ends in "/",
// keeping that segment's leading slash; at the root it does nothing.
func upToPreviousSlash(out []byte) []byte {
	i := len(out) - 1
	if i == 0 {
		return out
	}
	i--
	for out[i] != '/' && i > 0 {
		i--
	}
	return out[:i+1]
}

// guardNestedEscape runs after a decoded character landed within two bytes
// of an earlier '%' that began no valid escape (out ends "%c" or "%cc").
// If that '%' now begins a valid escape ("%%30%30" would become "%00"), it
// is written as "%25" so that the output cannot decode into something the
// input did not say; next is the index of the next unread input byte.
func guardNestedEscape(s string, next, pct int, out []byte) []byte {
	n := len(out)
	last := out[n-1]
	appendNext := pct == n-2
	if appendNext {
		if next == len(s) || s[next] >= 0x80 {
			return out
		}
		out = append(out, s[next])
	}
	if _, valid := decodeEscape(string(out[pct:]), 0); valid {
		if !appendNext {
			out = append(out, out[pct+1])
		}
		out[pct+1], out[pct+2] = '2', '5'
		return append(out, last)
	}
	if appendNext {
		out = out[:n]
	}
	return out
}
