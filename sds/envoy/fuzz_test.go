package envoy

import (
	"context"
	"io"
	"slices"
	"strings"
	"testing"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretservice "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/meshca/meshca/internal/testca"
)

// fuzzNames splits a fuzzed list of resource names ("" is none), as valid
// UTF-8: gRPC clients cannot send anything else in a string field.
func fuzzNames(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(strings.ToValidUTF8(s, "?"), ",")
}

// grants is what a client that asked for names may be sent: those names,
// or any served secret once it asked for all (no names on a SotW or first
// delta request, or "*").
type grants struct {
	all   bool
	names map[string]bool
}

func (g *grants) add(names []string, emptyIsAll bool) {
	if (len(names) == 0 && emptyIsAll) || slices.Contains(names, "*") {
		g.all = true
	}
	for _, n := range names {
		g.names[n] = true
	}
}

// FuzzDiscoveryRequest sends DiscoveryRequests built from fuzzed fields
// (type URL, version, nonce, names, node, a NACK) to a running server, as
// a FetchSecrets call, a SotW stream of two requests and a delta stream,
// and checks that it never panics or hangs, refuses only with
// InvalidArgument, and never serves a secret the client did not name (or
// ask all of) nor anything but the published secrets, unaltered.
//
// Each input goes to two servers: one with Config.SPIFFEValidator, one
// without.
func FuzzDiscoveryRequest(f *testing.F) {
	type server struct {
		c         secretservice.SecretDiscoveryServiceClient
		published map[string]*tlsv3.Secret
	}
	var servers []server
	for _, cfg := range []Config{{}, {SPIFFEValidator: true}} {
		h := newHarnessWith(f, cfg)
		published, err := secrets(h.svid, cfg.SPIFFEValidator)
		if err != nil {
			f.Fatal(err)
		}
		servers = append(servers, server{h.client(), published})
	}
	td := testca.WorkloadID.TrustDomain().IDString()
	id := testca.WorkloadID.String()

	f.Add(resource.SecretType, "", "", DefaultName+","+RootCAName, "sidecar~1", false, "", "")
	f.Add("", "", "", id+","+td, "", false, DefaultName, "")
	f.Add(resource.SecretType, "1", "n", "", "n", true, "ROOTCA,unknown", "*")
	f.Add(resource.SecretType, "none", "", "*", "", false, "", "default")
	f.Add(resource.SecretType, "", "", AllName+","+RootCAName, "", false, td, "")
	f.Add(resource.ClusterType, "", "", DefaultName, "node", false, "", "")
	f.Add(resource.SecretType, "", "", "unknown,"+strings.Repeat(",", MaxResourceNames), "", false, "", "")
	f.Add("type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret ", "", "", "default ", "", false, "Default", "default")

	f.Fuzz(func(t *testing.T, typeURL, version, nonce, names, nodeID string, nack bool, names2, unsubscribe string) {
		valid := func(s string) string { return strings.ToValidUTF8(s, "?") }
		typeURL, version, nonce, nodeID = valid(typeURL), valid(version), valid(nonce), valid(nodeID)
		req := &discovery.DiscoveryRequest{TypeUrl: typeURL, VersionInfo: version, ResponseNonce: nonce, ResourceNames: fuzzNames(names)}
		if nodeID != "" {
			req.Node = &core.Node{Id: nodeID}
		}
		if nack {
			req.ErrorDetail = &rpcstatus.Status{Code: int32(codes.InvalidArgument), Message: "fuzz"}
		}
		for _, srv := range servers {
			fuzzOne(t, srv.c, srv.published, req, names2, unsubscribe)
		}
	})
}

// fuzzOne sends req to c as a FetchSecrets call, a SotW stream of req and
// a request naming names2, and a delta stream of the same that then
// unsubscribes from unsubscribe; it checks what comes back against
// published.
func fuzzOne(t *testing.T, c secretservice.SecretDiscoveryServiceClient, published map[string]*tlsv3.Secret, req *discovery.DiscoveryRequest, names2, unsubscribe string) {
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()

	// FetchSecrets: empty names mean all.
	resp, err := c.FetchSecrets(ctx, req)
	refusal(t, "fetch", err)
	if err == nil {
		g := &grants{names: map[string]bool{}}
		g.add(req.ResourceNames, true)
		checkServed(t, published, "fetch", g, resp.GetTypeUrl(), resp.GetResources())
	}

	// A SotW stream: the request, then one naming names2, then the
	// client half-closes and reads until the server ends the stream.
	g := &grants{names: map[string]bool{}}
	st, err := c.StreamSecrets(ctx)
	if err != nil {
		t.Fatal(err)
	}
	g.add(req.ResourceNames, true)
	req2 := proto.Clone(req).(*discovery.DiscoveryRequest)
	req2.ResourceNames = fuzzNames(names2)
	g.add(req2.ResourceNames, true)
	for _, r := range []*discovery.DiscoveryRequest{req, req2} {
		if st.Send(r) != nil {
			break // the server ended the stream; Recv says why
		}
	}
	st.CloseSend()
	for {
		resp, err := st.Recv()
		if err != nil {
			if ctx.Err() != nil {
				t.Fatalf("stream: not ended %v after the client half-closed", waitFor)
			}
			refusal(t, "stream", err)
			break
		}
		checkServed(t, published, "stream", g, resp.GetTypeUrl(), resp.GetResources())
	}

	// A delta stream: subscribe to names (none: wildcard), then to
	// names2 and away from unsubscribe.
	gd := &grants{names: map[string]bool{}}
	ds, err := c.DeltaSecrets(ctx)
	if err != nil {
		t.Fatal(err)
	}
	d1 := &discovery.DeltaDiscoveryRequest{TypeUrl: req.TypeUrl, Node: req.Node, ResponseNonce: req.ResponseNonce, ErrorDetail: req.ErrorDetail, ResourceNamesSubscribe: req.ResourceNames}
	d2 := &discovery.DeltaDiscoveryRequest{TypeUrl: req.TypeUrl, ResourceNamesSubscribe: req2.ResourceNames, ResourceNamesUnsubscribe: fuzzNames(unsubscribe)}
	gd.add(d1.ResourceNamesSubscribe, true)
	gd.add(d2.ResourceNamesSubscribe, false)
	for _, r := range []*discovery.DeltaDiscoveryRequest{d1, d2} {
		if ds.Send(r) != nil {
			break
		}
	}
	ds.CloseSend()
	for {
		resp, err := ds.Recv()
		if err != nil {
			if ctx.Err() != nil {
				t.Fatalf("delta stream: not ended %v after the client half-closed", waitFor)
			}
			refusal(t, "delta stream", err)
			break
		}
		var res []*anypb.Any
		for _, r := range resp.GetResources() {
			if !gd.all && !gd.names[r.GetName()] {
				t.Fatalf("delta stream: served %q, which was not subscribed to (%v)", r.GetName(), gd.names)
			}
			res = append(res, r.GetResource())
		}
		checkServed(t, published, "delta stream", gd, resp.GetTypeUrl(), res)
	}
}

// checkServed fails t unless res, of typeURL, holds only published
// secrets, unaltered, that g grants.
func checkServed(t *testing.T, published map[string]*tlsv3.Secret, what string, g *grants, typeURL string, res []*anypb.Any) {
	t.Helper()
	if typeURL != resource.SecretType {
		t.Fatalf("%s: response of type %q", what, typeURL)
	}
	for _, a := range res {
		var sec tlsv3.Secret
		if err := a.UnmarshalTo(&sec); err != nil {
			t.Fatalf("%s: resource is not a Secret: %v", what, err)
		}
		want, ok := published[sec.GetName()]
		if !ok || !proto.Equal(want, &sec) {
			t.Fatalf("%s: served secret %q that is not the published one", what, sec.GetName())
		}
		if !g.all && !g.names[sec.GetName()] {
			t.Fatalf("%s: served %q, which was not asked for (asked %v)", what, sec.GetName(), g.names)
		}
	}
}

// refusal fails t unless err is a clean end or InvalidArgument.
func refusal(t *testing.T, what string, err error) {
	t.Helper()
	if err != nil && err != io.EOF && status.Code(err) != codes.InvalidArgument {
		t.Fatalf("%s: ended with %v, want OK or InvalidArgument", what, err)
	}
}
