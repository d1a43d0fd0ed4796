package policy

import (
	"strings"
	"testing"
)

// Sources the path normalization cases follow.
const (
	srcListener = "istio/istio pilot/pkg/networking/core/listener_builder.go (meshConfig.pathNormalization to normalize_path, merge_slashes, path_with_escaped_slashes_action)"
	srcEnvoy    = "envoyproxy/envoy source/common/http/path_utility.cc and Chromium url_canon_path.cc (CanonicalizePath)"
	docPathNorm = "istio.io/latest/docs/reference/config/istio.mesh.v1alpha1/#MeshConfig-ProxyPathNormalization"
	docBestPath = "istio.io/latest/docs/ops/best-practices/security/#understand-path-normalization-in-authorization-policy"
)

// TestNormalizePath follows Envoy's path normalization as Istio configures
// it per meshConfig.pathNormalization mode.
func TestNormalizePath(t *testing.T) {
	const (
		none, base, merge, decode = PathNone, PathBase, PathMergeSlashes, PathDecodeAndMergeSlashes
	)
	cases := []struct {
		name string
		mode PathNormalization
		in   string
		want string
		ok   bool
	}{
		{"none leaves dot segments", none, "/public/../admin", "/public/../admin", true},
		{"base removes dot-dot", base, "/public/../admin", "/admin", true},
		{"base removes dot", base, "/a/./b/.", "/a/b/", true},
		{"base dot-dot at the end", base, "/a/b/..", "/a/", true},
		{"base never above the root", base, "/../../admin", "/admin", true},
		{"base encoded dots", base, "/public/%2e%2E/admin", "/admin", true},
		{"base mixed encoded dot", base, "/public/.%2e/admin", "/admin", true},
		{"base dots inside names kept", base, "/a..b/.c/..d", "/a..b/.c/..d", true},
		{"base backslash is a slash", base, `/public\..\admin`, "/admin", true},
		{"base decodes unreserved", base, "/%61dmin/%7e%2D%5f", "/admin/~-_", true},
		{"base keeps reserved escapes as written", base, "/a%2fb/%2Fc/%3f%25", "/a%2fb/%2Fc/%3f%25", true},
		{"base keeps escaped backslash", base, "/a%5Cb", "/a%5Cb", true},
		{"base escapes what must be escaped", base, "/a b/\"x\"/{y}|^`<>", "/a%20b/%22x%22/%7By%7D%7C%5E%60%3C%3E", true},
		{"base escapes non-ASCII bytes", base, "/caf\xc3\xa9", "/caf%C3%A9", true},
		{"base keeps sub-delims", base, "/a!$&'()*+,;=:@[]", "/a!$&'()*+,;=:@[]", true},
		{"base keeps a bad percent", base, "/a%zz/%4", "/a%zz/%4", true},
		{"base guards nested escapes", base, "/%%30%30", "/%2500", true},
		{"base does not merge slashes", base, "//admin//x", "//admin//x", true},
		{"base refuses an escaped NUL", base, "/a%00b", "/a%00b", false},
		{"base refuses a NUL", base, "/a\x00b", "/a%00b", false},
		{"base leaves non-origin forms", base, "*", "*", true},
		{"merge slashes", merge, "//admin///x/", "/admin/x/", true},
		{"merge after dot segments", merge, "/a/.//../b", "/a/b", true},
		{"merge keeps escaped slashes", merge, "/admin%2F..%2Fx", "/admin%2F..%2Fx", true},
		{"merge of only slashes", merge, "///", "//", true},
		{"decode escaped slashes then dot segments", decode, "/public%2F..%2Fadmin", "/admin", true},
		{"decode lower-case and backslash escapes", decode, "/public%2f..%5cadmin", "/admin", true},
		{"decode then merge", decode, "/a%2F%2Fb", "/a/b", true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := normalizePath(tc.in, tc.mode)
			if got != tc.want || ok != tc.ok {
				t.Errorf("normalizePath(%q, %s) = %q, %v; want %q, %v (%s; %s)", tc.in, tc.mode, got, ok, tc.want, tc.ok, srcEnvoy, srcListener)
			}
		})
	}
}

// TestPathNormalizationAuthorize is the normalization seen through
// Authorize: paths match after the sidecar normalizes them, so a DENY on
// /admin is not bypassed with dot segments (docBestPath).
func TestPathNormalizationAuthorize(t *testing.T) {
	const A, D = Allow, Deny
	denyAdmin := denyIf("{to: [{operation: {paths: ['/admin*']}}]}")
	runAuthz(t, []authzCase{
		{name: "BASE by default: dot-dot cannot bypass a deny", source: docPathNorm + ": BASE is the default", policies: denyAdmin, req: with(path("/public/../admin")), want: D, by: "foo/deny"},
		{name: "NONE: evaluated literally", source: docPathNorm + ": NONE", opts: Options{PathNormalization: PathNone}, policies: denyAdmin, req: with(path("/public/../admin")), want: A},
		{name: "DEFAULT is BASE", source: docPathNorm + ": DEFAULT", opts: Options{PathNormalization: "DEFAULT"}, policies: denyAdmin, req: with(path("/public/%2e%2e/admin")), want: D, by: "foo/deny"},
		{name: "BASE: merged slashes not merged", source: docBestPath + ": //admin needs MERGE_SLASHES", policies: denyIf("{to: [{operation: {paths: ['/admin']}}]}"), req: with(path("//admin")), want: A},
		{name: "MERGE_SLASHES", source: docPathNorm + ": MERGE_SLASHES", opts: Options{PathNormalization: PathMergeSlashes}, policies: denyIf("{to: [{operation: {paths: ['/admin']}}]}"), req: with(path("//admin")), want: D, by: "foo/deny"},
		{name: "MERGE_SLASHES: escaped slash kept", source: docPathNorm + ": MERGE_SLASHES does not decode", opts: Options{PathNormalization: PathMergeSlashes}, policies: denyAdmin, req: with(path("/public%2F..%2Fadmin")), want: A},
		{name: "DECODE_AND_MERGE_SLASHES", source: docPathNorm + ": DECODE_AND_MERGE_SLASHES", opts: Options{PathNormalization: PathDecodeAndMergeSlashes}, policies: denyAdmin, req: with(path("/public%2F..%2Fadmin")), want: D, by: "foo/deny"},
		{name: "allow matches the normalized path", source: docPathNorm + ": BASE", policies: allowIf("{to: [{operation: {paths: ['/api/{*}']}}]}"), req: with(path("/api/./%76%31")), want: A, by: "foo/allow"},
		{name: "query kept out of normalization", source: srcEnvoy + ": only the path before ? is normalized", policies: denyAdmin, req: with(path("/x/../admin?next=/../y")), want: D, by: "foo/deny"},
		{name: "NUL refused before authorization", source: srcEnvoy + ": a failed canonicalization is a 400", req: with(path("/a%00")), want: D},
		{name: "TCP has no path to refuse", source: docTCP + ": HTTP-only fields", req: with(tcp, path("/a%00")), want: A},
	})
}

func TestPathNormalizationOption(t *testing.T) {
	if _, err := (Options{PathNormalization: "merge"}).Parse("x.yaml", nil); err == nil || !strings.Contains(err.Error(), "unknown path normalization") {
		t.Errorf("unknown mode: %v", err)
	}
	s, err := (Options{PathNormalization: "merge_slashes"}).Parse("x.yaml", nil)
	if err != nil || s.Options().PathNormalization != PathMergeSlashes {
		t.Fatalf("lower-case mode: %v", err)
	}
	if s, _ := Parse("x.yaml", nil); s.Options().PathNormalization != PathBase {
		t.Errorf("default = %q, want BASE", s.Options().PathNormalization)
	}
	set, _ := Parse("x.yaml", []byte(denyIf("{to: [{operation: {paths: ['/admin']}}]}")))
	if d := set.Authorize(with(path("/x/../admin"))); !strings.Contains(d.Reason, `path "/x/../admin" matched as "/admin" (BASE path normalization)`) {
		t.Errorf("reason %q does not say how the path was normalized", d.Reason)
	}
}

// FuzzNormalizePath checks, for every mode, that normalization never
// panics, that what it accepts is a fixed point (normalizing again changes
// nothing, as Envoy's output is what the filters see and a second proxy
// would see), and that BASE output keeps the leading slash and holds no
// dot segment, raw backslash, space or non-ASCII byte.
func FuzzNormalizePath(f *testing.F) {
	for _, s := range []string{"/public/../admin", "/%2e%2E/", `/a\b\..\c`, "/%%30%30", "//a//b/", "/a%2F..%2Fb", "/caf\xc3\xa9 x", "/a%00", "/.%2e/..", "/%%%2e%2e/", "/%2", "/%%2F2F"} {
		f.Add(s)
	}
	modes := []PathNormalization{PathNone, PathBase, PathMergeSlashes, PathDecodeAndMergeSlashes}
	f.Fuzz(func(t *testing.T, in string) {
		for _, m := range modes {
			out, ok := normalizePath(in, m)
			if !ok {
				continue
			}
			if again, ok2 := normalizePath(out, m); !ok2 || again != out {
				t.Fatalf("%s: normalizePath(%q) = %q, normalized again %q (%v)", m, in, out, again, ok2)
			}
			if m == PathNone || !strings.HasPrefix(in, "/") {
				continue
			}
			if !strings.HasPrefix(out, "/") || strings.ContainsAny(out, "\\ ") ||
				strings.Contains(out+"/", "/./") || strings.Contains(out+"/", "/../") {
				t.Fatalf("%s: normalizePath(%q) = %q", m, in, out)
			}
			for i := 0; i < len(out); i++ {
				if out[i] < 0x21 || out[i] >= 0x7f {
					t.Fatalf("%s: normalizePath(%q) = %q has byte %#x", m, in, out, out[i])
				}
			}
		}
	})
}
