package envoy_test

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"
	"sigs.k8s.io/yaml"

	// The typed_config types the bootstrap names: protojson resolves them
	// in the global registry, where these imports put them.
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
)

// parse reads an Envoy bootstrap in YAML as Envoy does: unknown fields
// and unknown typed_config types are errors.
func parse(t *testing.T, name string, y []byte) *bootstrapv3.Bootstrap {
	t.Helper()
	j, err := yaml.YAMLToJSON(y)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	var b bootstrapv3.Bootstrap
	if err := protojson.Unmarshal(j, &b); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return &b
}

// validate runs protoc-gen-validate's rules on m and, since they stop at
// a google.protobuf.Any, on every message packed in one, recursively, and
// returns what they refuse.
func validate(m proto.Message) []error {
	var errs []error
	if v, ok := m.(interface{ ValidateAll() error }); ok {
		if err := v.ValidateAll(); err != nil {
			errs = append(errs, fmt.Errorf("%T: %w", m, err))
		}
	}
	var walk func(protoreflect.Message)
	walk = func(msg protoreflect.Message) {
		if a, ok := msg.Interface().(*anypb.Any); ok {
			inner, err := a.UnmarshalNew()
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", a.GetTypeUrl(), err))
				return
			}
			errs = append(errs, validate(inner)...)
			return
		}
		msg.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
			switch {
			case fd.IsList() && fd.Message() != nil:
				for i := 0; i < v.List().Len(); i++ {
					walk(v.List().Get(i).Message())
				}
			case fd.IsMap() && fd.MapValue().Message() != nil:
				v.Map().Range(func(_ protoreflect.MapKey, mv protoreflect.Value) bool {
					walk(mv.Message())
					return true
				})
			case fd.Message() != nil && !fd.IsList() && !fd.IsMap():
				walk(v.Message())
			}
			return true
		})
	}
	walk(m.ProtoReflect())
	return errs
}

// tlsContexts returns the CommonTlsContext of every listener's and
// cluster's TLS transport socket.
func tlsContexts(t *testing.T, b *bootstrapv3.Bootstrap) map[string]*tlsv3.CommonTlsContext {
	t.Helper()
	out := map[string]*tlsv3.CommonTlsContext{}
	unpack := func(where string, ts *corev3.TransportSocket) {
		if ts == nil {
			return
		}
		m, err := ts.GetTypedConfig().UnmarshalNew()
		if err != nil {
			t.Fatalf("%s: %v", where, err)
		}
		switch c := m.(type) {
		case *tlsv3.DownstreamTlsContext:
			if !c.GetRequireClientCertificate().GetValue() {
				t.Errorf("%s: a listener that does not require the peer's certificate", where)
			}
			out[where] = c.GetCommonTlsContext()
		case *tlsv3.UpstreamTlsContext:
			out[where] = c.GetCommonTlsContext()
		}
	}
	for _, l := range b.GetStaticResources().GetListeners() {
		for _, fc := range l.GetFilterChains() {
			unpack("listener "+l.GetName(), fc.GetTransportSocket())
		}
	}
	for _, c := range b.GetStaticResources().GetClusters() {
		unpack("cluster "+c.GetName(), c.GetTransportSocket())
	}
	return out
}

// checkBootstrap validates the bootstrap and checks what meshca's agent
// needs of it: every TLS context takes `default` and `ROOTCA` over SDS
// from the cluster meshca_sds, which reaches the agent's socket sds, and
// matches its peer by SPIFFE ID.
func checkBootstrap(t *testing.T, b *bootstrapv3.Bootstrap, sds string) {
	t.Helper()
	for _, err := range validate(b) {
		t.Error(err)
	}
	var pipe string
	for _, c := range b.GetStaticResources().GetClusters() {
		if c.GetName() != "meshca_sds" {
			continue
		}
		for _, e := range c.GetLoadAssignment().GetEndpoints() {
			for _, lb := range e.GetLbEndpoints() {
				pipe = lb.GetEndpoint().GetAddress().GetPipe().GetPath()
			}
		}
		if _, ok := c.GetTypedExtensionProtocolOptions()["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]; !ok {
			t.Error("cluster meshca_sds: no HTTP/2 (gRPC) protocol options")
		}
	}
	if pipe != sds {
		t.Errorf("cluster meshca_sds reaches %q, want the agent's socket %q", pipe, sds)
	}
	ctxs := tlsContexts(t, b)
	if len(ctxs) < 2 {
		t.Fatalf("%d TLS contexts, want the inbound listener's and the upstream cluster's", len(ctxs))
	}
	for where, c := range ctxs {
		certs := c.GetTlsCertificateSdsSecretConfigs()
		if len(certs) != 1 || certs[0].GetName() != "default" || !viaMeshcaSDS(certs[0].GetSdsConfig()) {
			t.Errorf("%s: the certificate is not SDS secret `default` from meshca_sds: %v", where, certs)
		}
		cv := c.GetCombinedValidationContext()
		if cv.GetValidationContextSdsSecretConfig().GetName() != "ROOTCA" || !viaMeshcaSDS(cv.GetValidationContextSdsSecretConfig().GetSdsConfig()) {
			t.Errorf("%s: the trust bundle is not SDS secret `ROOTCA` from meshca_sds", where)
		}
		sans := cv.GetDefaultValidationContext().GetMatchTypedSubjectAltNames()
		if len(sans) == 0 {
			t.Errorf("%s: no SPIFFE ID match (match_typed_subject_alt_names)", where)
		}
		for _, san := range sans {
			m := san.GetMatcher()
			id := m.GetExact() + m.GetPrefix()
			if san.GetSanType() != tlsv3.SubjectAltNameMatcher_URI || !strings.HasPrefix(id, "spiffe://") {
				t.Errorf("%s: SAN matcher %v is not a URI SAN matching a SPIFFE ID", where, san)
			}
		}
		if v := c.GetTlsParams().GetTlsMinimumProtocolVersion(); v < tlsv3.TlsParameters_TLSv1_2 {
			t.Errorf("%s: minimum TLS version %v, want TLS 1.2 or later", where, v)
		}
	}
}

func viaMeshcaSDS(c *corev3.ConfigSource) bool {
	gs := c.GetApiConfigSource().GetGrpcServices()
	return len(gs) == 1 && gs[0].GetEnvoyGrpc().GetClusterName() == "meshca_sds"
}

// The socket the agent examples serve SDS on (their --sds-socket).
const agentSocket = "/var/run/meshca/agent/sds.sock"

// TestBootstrap parses envoy.yaml into go-control-plane's bootstrap v3
// type, validates it (protoc-gen-validate, typed configs included) and
// checks its SDS and SPIFFE ID matching.
func TestBootstrap(t *testing.T) {
	y, err := os.ReadFile("envoy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	checkBootstrap(t, parse(t, "envoy.yaml", y), agentSocket)
}

// TestBootstrapRefusesMistakes shows the parse and the validation catch
// what Envoy would refuse.
func TestBootstrapRefusesMistakes(t *testing.T) {
	y, err := os.ReadFile("envoy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ name, old, new string }{
		{"misspelled field", "require_client_certificate:", "require_client_certificat:"},
		{"unknown typed config", "router.v3.Router", "router.v3.Routr"},
		{"invalid value", "connect_timeout: 1s", "connect_timeout: -1s"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bad := strings.Replace(string(y), tc.old, tc.new, 1)
			j, err := yaml.YAMLToJSON([]byte(bad))
			if err != nil {
				t.Fatal(err)
			}
			var b bootstrapv3.Bootstrap
			if err := protojson.Unmarshal(j, &b); err != nil {
				return // refused by the parse
			}
			if len(validate(&b)) == 0 {
				t.Errorf("%s: accepted", tc.name)
			}
		})
	}
}

var sdsFlag = regexp.MustCompile(`--sds-socket=(\S+)`)

// TestExamplesUseBootstrap checks the Envoy bootstrap the agent examples
// ship in their ConfigMap: it is envoy.yaml verbatim, and the agents of
// deploy/examples serve SDS where its cluster meshca_sds connects.
func TestExamplesUseBootstrap(t *testing.T) {
	want, err := os.ReadFile("envoy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var cm struct {
		Kind string            `json:"kind"`
		Data map[string]string `json:"data"`
	}
	demo, err := os.ReadFile(filepath.Join("..", "examples", "00-demo.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, doc := range strings.Split(string(demo), "\n---\n") {
		if err := yaml.Unmarshal([]byte(doc), &cm); err != nil {
			t.Fatal(err)
		}
		if cm.Kind == "ConfigMap" {
			found = true
			if got := cm.Data["envoy.yaml"]; got != string(want) {
				t.Errorf("the ConfigMap envoy-bootstrap of examples/00-demo.yaml differs from envoy/envoy.yaml")
			}
		}
	}
	if !found {
		t.Fatal("no ConfigMap in examples/00-demo.yaml")
	}
	for _, f := range []string{"sidecar.yaml", "daemonset.yaml"} {
		b, err := os.ReadFile(filepath.Join("..", "examples", f))
		if err != nil {
			t.Fatal(err)
		}
		m := sdsFlag.FindSubmatch(b)
		if m == nil || string(m[1]) != agentSocket {
			t.Errorf("examples/%s: the agent's --sds-socket is %q, want %s", f, m, agentSocket)
		}
	}
}
