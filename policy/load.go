package policy

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	secv1beta1 "istio.io/api/security/v1beta1"
	"sigs.k8s.io/yaml"
)

// Options configure how a Set interprets its policies. The zero value is
// usable: every empty field takes the default documented on it.
type Options struct {
	// RootNamespace is Istio's meshConfig.rootNamespace: policies there
	// apply mesh-wide. Default "istio-system".
	RootNamespace string
	// TrustDomain is the mesh trust domain. Default "cluster.local".
	TrustDomain string
	// TrustDomainAliases are meshConfig.trustDomainAliases. Policies are
	// rewritten for the trust domain and its aliases as Istio does
	// (pilot/pkg/security/trustdomain): a principal "TD/ns/NS/sa/SA" whose
	// TD is "cluster.local" or one of them (or a "*" pattern matching one)
	// stands for that identity in each of them, and a trust domain value
	// naming one of them stands for all of them.
	TrustDomainAliases []string
	// PathNormalization is meshConfig.pathNormalization: how the sidecar
	// rewrites request paths before authorization. Default PathBase;
	// "DEFAULT" means PathBase too.
	PathNormalization PathNormalization
}

func (o Options) withDefaults() Options {
	if o.RootNamespace == "" {
		o.RootNamespace = "istio-system"
	}
	if o.TrustDomain == "" {
		o.TrustDomain = localClusterDomain
	}
	if m, err := parsePathNormalization(string(o.PathNormalization)); err == nil {
		o.PathNormalization = m
	}
	return o
}

// Meta is the part of a Kubernetes object's metadata that policy semantics
// depend on, plus where the object was read from.
type Meta struct {
	Name              string
	Namespace         string
	CreationTimestamp time.Time
	Annotations       map[string]string
	// File and Document locate the object: Document is the 0-based index of
	// the YAML document within File.
	File     string
	Document int
}

// Key returns "namespace/name", the form decisions use to name a policy.
func (m Meta) Key() string { return m.Namespace + "/" + m.Name }

// PeerAuthentication is a loaded security.istio.io PeerAuthentication.
type PeerAuthentication struct {
	Meta
	Spec *secv1beta1.PeerAuthentication
}

// AuthorizationPolicy is a loaded security.istio.io AuthorizationPolicy.
type AuthorizationPolicy struct {
	Meta
	Spec *secv1beta1.AuthorizationPolicy

	c compiled
}

// Error is a validation or decoding error located in its input.
type Error struct {
	File     string
	Document int    // 0-based document index within File; -1 for file-level errors
	Path     string // field path such as "spec.rules[0].from[0].source.ipBlocks[1]"; may be empty
	Msg      string
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("policy: ")
	b.WriteString(e.File)
	if e.Document >= 0 {
		fmt.Fprintf(&b, ": document %d", e.Document)
	}
	if e.Path != "" {
		b.WriteString(": ")
		b.WriteString(e.Path)
	}
	b.WriteString(": ")
	b.WriteString(e.Msg)
	return b.String()
}

// ErrorList holds every error found while loading, in input order.
type ErrorList []*Error

func (l ErrorList) Error() string {
	msgs := make([]string, len(l))
	for i, e := range l {
		msgs[i] = e.Error()
	}
	return strings.Join(msgs, "\n")
}

// Load reads policies with default Options; see Options.Load.
func Load(paths ...string) (*Set, error) { return Options{}.Load(paths...) }

// Load reads multi-document YAML (or JSON) files, and directories of them
// (recursively, files ending .yaml, .yml or .json), holding security.istio.io
// PeerAuthentication and AuthorizationPolicy objects. Every problem found is
// reported; the error is then an ErrorList and the Set is nil.
func (o Options) Load(paths ...string) (*Set, error) {
	var files []string
	for _, p := range paths {
		fi, err := os.Stat(p)
		if err != nil {
			return nil, fmt.Errorf("policy: %w", err)
		}
		if !fi.IsDir() {
			files = append(files, p)
			continue
		}
		err = filepath.WalkDir(p, func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			switch strings.ToLower(filepath.Ext(path)) {
			case ".yaml", ".yml", ".json":
				if !d.IsDir() {
					files = append(files, path)
				}
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("policy: %w", err)
		}
	}
	b := o.builder()
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("policy: %w", err)
		}
		b.parse(f, data)
	}
	return b.build()
}

// Parse reads policies from data with default Options; name is used in
// error messages. See Options.Parse.
func Parse(name string, data []byte) (*Set, error) { return Options{}.Parse(name, data) }

// Parse reads policies from multi-document YAML data as Load does for one file.
func (o Options) Parse(name string, data []byte) (*Set, error) {
	b := o.builder()
	b.parse(name, data)
	return b.build()
}

type builder struct {
	opts Options
	set  Set
	errs ErrorList
}

func (o Options) builder() *builder { return &builder{opts: o.withDefaults()} }

func (b *builder) build() (*Set, error) {
	if _, err := parsePathNormalization(string(b.opts.PathNormalization)); err != nil {
		return nil, err
	}
	checkDuplicates(b)
	if len(b.errs) > 0 {
		return nil, b.errs
	}
	s := b.set
	s.opts = b.opts
	s.index()
	return &s, nil
}

var docSep = regexp.MustCompile(`(?m)^---[ \t]*(#.*)?\r?$`)

// splitDocs splits a YAML stream into documents at lines that are exactly
// "---" (optionally followed by a comment).
func splitDocs(data []byte) [][]byte {
	locs := docSep.FindAllIndex(data, -1)
	docs := make([][]byte, 0, len(locs)+1)
	start := 0
	for _, l := range locs {
		docs = append(docs, data[start:l[0]])
		start = l[1]
	}
	return append(docs, data[start:])
}

type envelope struct {
	APIVersion string          `json:"apiVersion"`
	Kind       string          `json:"kind"`
	Metadata   json.RawMessage `json:"metadata"`
	Spec       json.RawMessage `json:"spec"`
	Status     json.RawMessage `json:"status"`
}

type objectMeta struct {
	Name              string            `json:"name"`
	Namespace         string            `json:"namespace"`
	CreationTimestamp string            `json:"creationTimestamp"`
	Annotations       map[string]string `json:"annotations"`
}

func (b *builder) parse(file string, data []byte) {
	for i, doc := range splitDocs(data) {
		b.parseDoc(file, i, doc)
	}
}

func (b *builder) parseDoc(file string, idx int, doc []byte) {
	fail := func(path, format string, args ...any) {
		b.errs = append(b.errs, &Error{File: file, Document: idx, Path: path, Msg: fmt.Sprintf(format, args...)})
	}
	js, err := yaml.YAMLToJSON(doc)
	if err != nil {
		fail("", "invalid YAML: %v", err)
		return
	}
	js = bytes.TrimSpace(js)
	if len(js) == 0 || bytes.Equal(js, []byte("null")) {
		return // empty document, e.g. a trailing "---"
	}
	var env envelope
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&env); err != nil {
		fail("", "not a Kubernetes object: %v", err)
		return
	}
	group, version, _ := strings.Cut(env.APIVersion, "/")
	if group != "security.istio.io" || (version != "v1" && version != "v1beta1") {
		fail("apiVersion", "unsupported apiVersion %q (want security.istio.io/v1 or v1beta1)", env.APIVersion)
		return
	}
	var msg proto.Message
	switch env.Kind {
	case "PeerAuthentication":
		msg = &secv1beta1.PeerAuthentication{}
	case "AuthorizationPolicy":
		msg = &secv1beta1.AuthorizationPolicy{}
	default:
		fail("kind", "unknown kind %q (want PeerAuthentication or AuthorizationPolicy)", env.Kind)
		return
	}
	var om objectMeta
	if len(env.Metadata) > 0 {
		if err := json.Unmarshal(env.Metadata, &om); err != nil {
			fail("metadata", "%v", err)
			return
		}
	}
	if om.Name == "" {
		fail("metadata.name", "required")
		return
	}
	if om.Namespace == "" {
		om.Namespace = "default"
	}
	meta := Meta{Name: om.Name, Namespace: om.Namespace, Annotations: om.Annotations, File: file, Document: idx}
	if om.CreationTimestamp != "" {
		t, err := time.Parse(time.RFC3339, om.CreationTimestamp)
		if err != nil {
			fail("metadata.creationTimestamp", "not RFC 3339: %q", om.CreationTimestamp)
			return
		}
		meta.CreationTimestamp = t
	}
	spec := env.Spec
	if len(spec) == 0 || bytes.Equal(spec, []byte("null")) {
		spec = []byte("{}")
	}
	err = (protojson.UnmarshalOptions{DiscardUnknown: false}).Unmarshal(spec, msg)
	// The walk also runs on success: it refuses what protojson takes but
	// the CRD schema does not.
	if path, why := locateDecodeError(msg.ProtoReflect().Descriptor(), spec); path != "" {
		fail(path, "%s", why)
		return
	}
	if err != nil {
		fail("spec", "%s", err.Error())
		return
	}
	var verrs []fieldError
	switch m := msg.(type) {
	case *secv1beta1.PeerAuthentication:
		verrs = validatePeerAuthentication(m)
		if len(verrs) == 0 {
			b.set.PeerAuthentications = append(b.set.PeerAuthentications, &PeerAuthentication{Meta: meta, Spec: m})
		}
	case *secv1beta1.AuthorizationPolicy:
		var c compiled
		c, verrs = compileAuthorizationPolicy(m, meta, b.opts.trustBundle())
		verrs = append(verrs, emptyStrings(m.ProtoReflect(), "spec")...)
		if len(verrs) == 0 {
			b.set.AuthorizationPolicies = append(b.set.AuthorizationPolicies, &AuthorizationPolicy{Meta: meta, Spec: m, c: c})
		}
	}
	for _, e := range verrs {
		fail(e.path, "%s", e.msg)
	}
}

type fieldError struct{ path, msg string }

// validatePeerAuthentication refuses what no Istio version would take.
// portLevelMtls on a policy without a selector is not among it: istiod
// ignores it there (ComposePeerAuthentication reads it from workload
// policies only), so loading takes it and Lint warns.
func validatePeerAuthentication(pa *secv1beta1.PeerAuthentication) []fieldError {
	var errs []fieldError
	if pa.PortLevelMtls != nil && len(pa.PortLevelMtls) == 0 {
		errs = append(errs, fieldError{"spec.portLevelMtls", "must not be empty"})
	}
	ports := make([]uint32, 0, len(pa.GetPortLevelMtls()))
	for p := range pa.GetPortLevelMtls() {
		ports = append(ports, p)
	}
	sort.Slice(ports, func(i, j int) bool { return ports[i] < ports[j] })
	for _, p := range ports {
		if p == 0 || p > 65535 {
			errs = append(errs, fieldError{fmt.Sprintf("spec.portLevelMtls[%d]", p), "port must be in 1-65535"})
		}
		if pa.GetPortLevelMtls()[p] == nil {
			errs = append(errs, fieldError{fmt.Sprintf("spec.portLevelMtls[%d]", p), "mode required"})
		}
	}
	return errs
}

// emptyStrings reports empty strings in the lists of m, as Istio's
// validation does: an empty value would match requests lacking the
// attribute.
func emptyStrings(m protoreflect.Message, path string) []fieldError {
	var errs []fieldError
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		p := path + "." + fd.JSONName()
		switch {
		case fd.IsMap():
		case fd.IsList() && fd.Kind() == protoreflect.StringKind:
			l := v.List()
			for i := 0; i < l.Len(); i++ {
				if l.Get(i).String() == "" {
					errs = append(errs, fieldError{fmt.Sprintf("%s[%d]", p, i), "must not be an empty string"})
				}
			}
		case fd.IsList() && fd.Kind() == protoreflect.MessageKind:
			l := v.List()
			for i := 0; i < l.Len(); i++ {
				errs = append(errs, emptyStrings(l.Get(i).Message(), fmt.Sprintf("%s[%d]", p, i))...)
			}
		case fd.Kind() == protoreflect.MessageKind:
			errs = append(errs, emptyStrings(v.Message(), p)...)
		}
		return true
	})
	return errs
}
