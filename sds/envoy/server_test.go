package envoy

import (
	"context"
	"crypto"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretservice "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/meshca/meshca/internal/testca"
	"github.com/meshca/meshca/sds"
)

func TestNewRequiresSource(t *testing.T) {
	if _, err := New(Config{}); err == nil || !strings.Contains(err.Error(), "Source is required") {
		t.Errorf("New(Config{}) error = %v", err)
	}
}

func TestFirstResponse(t *testing.T) {
	h := newHarness(t)
	c := h.client()
	tests := []struct {
		name  string
		check func(testing.TB, *tlsv3.Secret, *sds.SVID)
	}{
		{DefaultName, checkCert},
		{RootCAName, checkRoots},
		{"spiffe://example.org/ns/foo/sa/bar", checkCert},
		{"spiffe://example.org", checkRoots},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := openStream(t, c)
			s.request(tt.name)
			resp := s.next()
			if resp.GetVersionInfo() == "" || resp.GetNonce() == "" {
				t.Errorf("version %q nonce %q: both must be set", resp.GetVersionInfo(), resp.GetNonce())
			}
			got := decode(t, resp)
			if len(got) != 1 || got[tt.name] == nil {
				t.Fatalf("response holds %v, want only %q", keys(got), tt.name)
			}
			tt.check(t, got[tt.name], h.svid)
		})
	}
}

func TestACKSendsNothing(t *testing.T) {
	h := newHarness(t)
	s := openStream(t, h.client())
	s.request(DefaultName)
	s.ack(s.next())
	s.none()
	if n := h.metrics.nacks.Load(); n != 0 {
		t.Errorf("%d NACKs counted for an ACK", n)
	}
}

func TestNACK(t *testing.T) {
	h := newHarness(t)
	s := openStream(t, h.client())
	s.request(DefaultName)

	// Envoy rejects the first response: no version accepted yet.
	first := s.next()
	s.nack(first)
	s.none() // not the same version again
	if n := h.metrics.nacks.Load(); n != 1 {
		t.Fatalf("NACKs counted = %d, want 1", n)
	}

	// The next change is sent, with a new version.
	h.rotate()
	second := s.next()
	if second.GetVersionInfo() == first.GetVersionInfo() {
		t.Fatalf("version %q resent after a NACK", second.GetVersionInfo())
	}
	checkCert(t, decode(t, second)[DefaultName], h.svid)
	s.ack(second)

	// A rejected update: Envoy sends the version it still holds.
	h.rotate()
	third := s.next()
	s.nack(third)
	s.none()
	if n := h.metrics.nacks.Load(); n != 2 {
		t.Fatalf("NACKs counted = %d, want 2", n)
	}
	h.rotate()
	if v := s.next().GetVersionInfo(); v == third.GetVersionInfo() || v == second.GetVersionInfo() {
		t.Errorf("version %q after a NACK is not new", v)
	}
}

func TestTwoResourcesOneStream(t *testing.T) {
	h := newHarness(t)
	s := openStream(t, h.client())
	s.request(DefaultName, RootCAName)
	resp := s.next()
	got := decode(t, resp)
	if len(got) != 2 {
		t.Fatalf("first response holds %v, want default and ROOTCA", keys(got))
	}
	checkCert(t, got[DefaultName], h.svid)
	checkRoots(t, got[RootCAName], h.svid)
	s.ack(resp)
	s.none()

	// A leaf rotation under the same roots: one response, the leaf only.
	h.rotate()
	resp = s.next()
	if got := decode(t, resp); len(got) != 1 || got[DefaultName] == nil {
		t.Fatalf("rotation response holds %v, want default only", keys(got))
	}
	s.ack(resp)
	s.none()

	// New roots too: one response with both.
	h.ca = testca.New(t)
	h.rotate()
	resp = s.next()
	got = decode(t, resp)
	if len(got) != 2 {
		t.Fatalf("root rotation response holds %v, want both", keys(got))
	}
	checkCert(t, got[DefaultName], h.svid)
	checkRoots(t, got[RootCAName], h.svid)
	s.ack(resp)
	s.none()
}

func TestWildcard(t *testing.T) {
	h := newHarness(t)
	s := openStream(t, h.client())
	s.request() // no names: every secret
	got := decode(t, s.next())
	want := []string{RootCAName, DefaultName, "spiffe://example.org", "spiffe://example.org/ns/foo/sa/bar"}
	if fmt.Sprint(keys(got)) != fmt.Sprint(want) {
		t.Errorf("wildcard response holds %v, want %v", keys(got), want)
	}
}

func TestUnknownNames(t *testing.T) {
	h := newHarness(t)
	s := openStream(t, h.client())
	s.request("spiffe://other.org/ns/x/sa/y", "nope")
	s.none()
	h.rotate()
	s.none()
	// The same stream can still ask for a name that exists.
	s.request(DefaultName, "nope")
	got := decode(t, s.next())
	if len(got) != 1 {
		t.Fatalf("response holds %v, want default", keys(got))
	}
	checkCert(t, got[DefaultName], h.svid)
}

// TestManyStreamsAndRotation: 100 streams get the secret; one rotation
// pushes exactly one new version to each, and nothing to a stream that
// asked only for a name that is not served.
func TestManyStreamsAndRotation(t *testing.T) {
	h := newHarness(t)
	const n = 100
	conns := []secretservice.SecretDiscoveryServiceClient{h.client(), h.client(), h.client(), h.client()}
	streams := make([]*envoyStream, n)
	var wg sync.WaitGroup
	versions := make([]string, n)
	for i := range streams {
		streams[i] = openStream(t, conns[i%len(conns)])
	}
	for i, s := range streams {
		wg.Go(func() {
			s.request(DefaultName)
			resp := s.next()
			checkCert(t, decode(t, resp)[DefaultName], h.svid)
			versions[i] = resp.GetVersionInfo()
			s.ack(resp)
		})
	}
	wg.Wait()
	other := openStream(t, h.client())
	other.request("unknown")

	waitStreams(t, h, n+1)
	svid := h.rotate()
	for i, s := range streams {
		wg.Go(func() {
			resp := s.next()
			if resp.GetVersionInfo() == versions[i] {
				t.Errorf("stream %d: version unchanged", i)
			}
			checkCert(t, decode(t, resp)[DefaultName], svid)
			s.ack(resp)
		})
	}
	wg.Wait()
	time.Sleep(silence)
	for i, s := range append(streams, other) {
		select {
		case resp := <-s.recv:
			t.Errorf("stream %d: a second response after one rotation (version %q)", i, resp.GetVersionInfo())
		default:
		}
	}
	if got := h.metrics.lastPush.Load(); got != n+1 {
		t.Errorf("Push(streams) = %d, want %d", got, n+1)
	}
}

// waitStreams waits until the server counts n open streams.
func waitStreams(t testing.TB, h *harness, n int64) {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	for h.srv.streams.Load() != n {
		if time.Now().After(deadline) {
			t.Fatalf("server has %d streams open, want %d", h.srv.streams.Load(), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestReconnect(t *testing.T) {
	h := newHarness(t)
	c := h.client()
	s := openStream(t, c)
	s.request(DefaultName)
	first := s.next()
	s.ack(first)
	s.cancel()
	if err := s.ended(); status.Code(err) != codes.Canceled {
		t.Fatalf("closed stream ended with %v", err)
	}
	waitStreams(t, h, 0)

	// Envoy reconnects and says which version it holds; a new stream is
	// answered in full.
	s2 := openStream(t, c)
	s2.accepted = first.GetVersionInfo()
	s2.request(DefaultName)
	resp := s2.next()
	checkCert(t, decode(t, resp)[DefaultName], h.svid)
	s2.ack(resp)
	h.rotate()
	checkCert(t, decode(t, s2.next())[DefaultName], h.svid)
}

// TestBadRequests: each bad stream ends on its own; a good stream open
// beside it still gets the next rotation.
func TestBadRequests(t *testing.T) {
	names := func(n int) []string {
		out := make([]string, n)
		for i := range out {
			out[i] = fmt.Sprintf("spiffe://example.org/ns/n%d/sa/s", i)
		}
		return out
	}
	tests := []struct {
		name string
		send func(*envoyStream)
		code codes.Code
		msg  string
	}{
		{
			name: "10000 resource names",
			send: func(s *envoyStream) { s.request(names(10000)...) },
			code: codes.InvalidArgument,
			msg:  "request names 10000 resources; at most 100 are allowed",
		},
		{
			name: "101 resource names",
			send: func(s *envoyStream) { s.request(names(101)...) },
			code: codes.InvalidArgument,
			msg:  "at most 100",
		},
		{
			name: "too many names after a good request",
			send: func(s *envoyStream) {
				s.request(DefaultName)
				s.ack(s.next())
				s.request(names(500)...)
			},
			code: codes.InvalidArgument,
			msg:  "at most 100",
		},
		{
			name: "unknown type_url",
			send: func(s *envoyStream) {
				s.send(&discovery.DiscoveryRequest{TypeUrl: resource.ClusterType, ResourceNames: []string{DefaultName}})
			},
			code: codes.InvalidArgument,
			msg:  "is not served here",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t)
			good := openStream(t, h.client())
			good.request(DefaultName)
			good.ack(good.next())

			bad := openStream(t, h.client())
			tt.send(bad)
			err := bad.ended()
			if status.Code(err) != tt.code || !strings.Contains(status.Convert(err).Message(), tt.msg) {
				t.Errorf("bad stream ended with %v, want %v containing %q", err, tt.code, tt.msg)
			}

			h.rotate()
			checkCert(t, decode(t, good.next())[DefaultName], h.svid)
		})
	}
}

func TestExactly100NamesAccepted(t *testing.T) {
	h := newHarness(t)
	s := openStream(t, h.client())
	names := []string{DefaultName}
	for i := len(names); i < MaxResourceNames; i++ {
		names = append(names, fmt.Sprintf("unknown-%d", i))
	}
	s.request(names...)
	if got := decode(t, s.next()); len(got) != 1 || got[DefaultName] == nil {
		t.Errorf("response holds %v, want default", keys(got))
	}
}

// rawCodec sends bytes as they are, to put a malformed message on the wire.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error)      { return v.([]byte), nil }
func (rawCodec) Unmarshal(data []byte, v any) error { *(v.(*[]byte)) = data; return nil }
func (rawCodec) Name() string                       { return "proto" }

func TestMalformedRequest(t *testing.T) {
	h := newHarness(t)
	good := openStream(t, h.client())
	good.request(DefaultName)
	good.ack(good.next())

	cc := h.dial()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	st, err := cc.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true, ClientStreams: true},
		"/envoy.service.secret.v3.SecretDiscoveryService/StreamSecrets", grpc.ForceCodecV2(nil), grpc.ForceCodec(rawCodec{}))
	if err != nil {
		t.Fatal(err)
	}
	if err := st.SendMsg([]byte{0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x01}); err != nil {
		t.Fatal(err)
	}
	var out []byte
	if err := st.RecvMsg(&out); err == nil {
		t.Fatalf("malformed request answered with %x", out)
	}

	h.rotate()
	checkCert(t, decode(t, good.next())[DefaultName], h.svid)
}

// TestSlowClients: a client that never ACKs, one that never reads and one
// that disconnects while a rotation is pushed do not hold up the others.
func TestSlowClients(t *testing.T) {
	h := newHarness(t)
	good := openStream(t, h.client())
	good.request(DefaultName)
	good.ack(good.next())

	neverACKs := openStream(t, h.client())
	neverACKs.request(DefaultName)
	neverACKs.next()

	// Never reads: no goroutine calls Recv on this stream.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	neverReads, err := h.client().StreamSecrets(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := neverReads.Send(&discovery.DiscoveryRequest{Node: testNode, TypeUrl: resource.SecretType, ResourceNames: []string{DefaultName}}); err != nil {
		t.Fatal(err)
	}

	var leaving []*envoyStream
	for range 10 {
		s := openStream(t, h.client())
		s.request(DefaultName)
		s.ack(s.next())
		leaving = append(leaving, s)
	}

	for round := range 5 {
		for _, s := range leaving[round*2 : round*2+2] {
			go s.cancel() // disconnects while the rotation is pushed
		}
		svid := h.rotate()
		resp := good.next()
		checkCert(t, decode(t, resp)[DefaultName], svid)
		good.ack(resp)
	}
	// The client that never ACKed is sent nothing more until it does.
	neverACKs.none()
}

func TestFetchSecrets(t *testing.T) {
	h := newHarness(t)
	c := h.client()
	ctx := t.Context()

	resp, err := c.FetchSecrets(ctx, &discovery.DiscoveryRequest{Node: testNode, ResourceNames: []string{DefaultName, RootCAName}})
	if err != nil {
		t.Fatal(err)
	}
	got := decode(t, resp)
	checkCert(t, got[DefaultName], h.svid)
	checkRoots(t, got[RootCAName], h.svid)

	// The same version a stream sees.
	s := openStream(t, c)
	s.request(DefaultName)
	if v := s.next().GetVersionInfo(); v != resp.GetVersionInfo() {
		t.Errorf("fetch version %q, stream version %q", resp.GetVersionInfo(), v)
	}

	svid := h.rotate()
	deadline := time.Now().Add(waitFor)
	for {
		resp, err = c.FetchSecrets(ctx, &discovery.DiscoveryRequest{Node: testNode, ResourceNames: []string{DefaultName}})
		if err != nil {
			t.Fatal(err)
		}
		sec := decode(t, resp)[DefaultName]
		if string(sec.GetTlsCertificate().GetCertificateChain().GetInlineBytes()) != string(certsPEM(svid.Certificates)) {
			if time.Now().After(deadline) {
				t.Fatal("FetchSecrets still returns the old SVID")
			}
			time.Sleep(5 * time.Millisecond)
			continue
		}
		checkCert(t, sec, svid)
		break
	}

	resp, err = c.FetchSecrets(ctx, &discovery.DiscoveryRequest{Node: testNode, ResourceNames: []string{"unknown"}})
	if err != nil || len(resp.GetResources()) != 0 {
		t.Errorf("fetch of an unknown name: %d resources, %v; want none, no error", len(resp.GetResources()), err)
	}

	many := make([]string, 1000)
	_, err = c.FetchSecrets(ctx, &discovery.DiscoveryRequest{Node: testNode, ResourceNames: many})
	if status.Code(err) != codes.InvalidArgument {
		t.Errorf("fetch of 1000 names: %v, want InvalidArgument", err)
	}
}

func TestDeltaSecrets(t *testing.T) {
	h := newHarness(t)
	c := h.client()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st, err := c.DeltaSecrets(ctx)
	if err != nil {
		t.Fatal(err)
	}
	send := func(req *discovery.DeltaDiscoveryRequest) {
		t.Helper()
		req.Node = testNode
		if req.ResponseNonce == "" { // ACKs leave the type implicit
			req.TypeUrl = resource.SecretType
		}
		if err := st.Send(req); err != nil {
			t.Fatal(err)
		}
	}
	recv := func() *discovery.DeltaDiscoveryResponse {
		t.Helper()
		resp, err := st.Recv()
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	check := func(resp *discovery.DeltaDiscoveryResponse, svid *sds.SVID) {
		t.Helper()
		if len(resp.GetResources()) != 1 || resp.GetResources()[0].GetName() != DefaultName {
			t.Fatalf("delta response holds %d resources", len(resp.GetResources()))
		}
		dr := &discovery.DiscoveryResponse{TypeUrl: resource.SecretType}
		dr.Resources = append(dr.Resources, resp.GetResources()[0].GetResource())
		checkCert(t, decode(t, dr)[DefaultName], svid)
	}

	send(&discovery.DeltaDiscoveryRequest{ResourceNamesSubscribe: []string{DefaultName, "unknown"}})
	resp := recv()
	check(resp, h.svid)
	send(&discovery.DeltaDiscoveryRequest{ResponseNonce: resp.GetNonce()})

	svid := h.rotate()
	resp = recv()
	check(resp, svid)
	send(&discovery.DeltaDiscoveryRequest{ResponseNonce: resp.GetNonce()})

	// Subscriptions add up on a delta stream; the total is bounded.
	many := make([]string, MaxResourceNames)
	for i := range many {
		many[i] = fmt.Sprint("n", i)
	}
	send(&discovery.DeltaDiscoveryRequest{ResourceNamesSubscribe: many})
	_, err = st.Recv()
	if status.Code(err) != codes.InvalidArgument {
		t.Errorf("delta stream over the bound ended with %v, want InvalidArgument", err)
	}
}

func TestShutdown(t *testing.T) {
	t.Run("Run ends streams, GracefulStop returns", func(t *testing.T) {
		h := newHarness(t)
		s := openStream(t, h.client())
		s.request(DefaultName)
		s.ack(s.next())
		h.stopRun()
		<-h.runDone
		if err := s.ended(); !isEOF(err) {
			t.Errorf("stream ended with %v, want a clean end", err)
		}
		stopped := make(chan struct{})
		go func() { h.g.GracefulStop(); close(stopped) }()
		select {
		case <-stopped:
		case <-time.After(waitFor):
			t.Fatal("GracefulStop did not return")
		}
	})
	t.Run("grpc Stop ends streams", func(t *testing.T) {
		h := newHarness(t)
		s := openStream(t, h.client())
		s.request(DefaultName)
		s.ack(s.next())
		h.g.Stop()
		if err := s.ended(); status.Code(err) != codes.Unavailable {
			t.Errorf("stream ended with %v, want Unavailable", err)
		}
	})
}

// TestUnpublishableSVIDKeepsTheLastGood: a key that cannot be PKCS#8 encoded is
// logged, and the last good secret stays.
func TestUnpublishableSVIDKeepsTheLastGood(t *testing.T) {
	h := newHarness(t)
	s := openStream(t, h.client())
	s.request(DefaultName)
	s.ack(s.next())
	bad := *h.svid
	bad.Version++
	bad.Key = opaqueSigner{bad.Key}
	h.src.Set(&bad)
	s.none()
	h.rotate()
	checkCert(t, decode(t, s.next())[DefaultName], h.svid)
}

// opaqueSigner hides the key type, as a hardware key would.
type opaqueSigner struct{ crypto.Signer }

func keys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// TestNoSVIDYet: a stream opened before the first SVID waits, then gets it.
func TestNoSVIDYet(t *testing.T) {
	src := sds.NewStaticSource(nil)
	srv, err := New(Config{Source: src})
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{t: t, ca: testca.New(t), src: src, srv: srv}
	path := t.TempDir() + "/sds.sock"
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	h.path = path
	g := grpc.NewServer()
	srv.Register(g)
	go g.Serve(l)
	defer g.Stop()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go srv.Run(ctx)

	s := openStream(t, h.client())
	s.request(DefaultName)
	s.none()
	svid := h.ca.Issue(t, 1)
	src.Set(svid)
	checkCert(t, decode(t, s.next())[DefaultName], svid)
}
